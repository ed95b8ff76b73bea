"""Decide whether a workflow can run many requests as one ComfyUI execution, and build that graph.

Requests in one group share every parameter except the batchable ones
(prompt, negative_prompt, seed): see `binding.shape_key`. The merged graph
keeps the shared part once, gives each request its own text encoders,
batches their conditionings, repeats the latent N times, and replaces the
sampler by ComfyBentoBatchKSampler, which draws each request's noise from its
own seed exactly as KSampler would alone. Everything downstream of the
sampler must work image by image, so the output batch splits back per request.
Pure graph manipulation: no ComfyUI import.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from dataclasses import dataclass

from comfybento.workflows.graph import Graph, consumers, is_link, sorted_ids
from comfybento.workflows.params import OUTPUT_IMAGE_CLASSES, Param, text_source

BATCHABLE_ROLES = frozenset({"prompt", "negative_prompt", "seed"})

# Samplers that draw no noise after the first step: a batch gives each item exactly its solo result.
DETERMINISTIC_SAMPLERS = frozenset({
    "euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ddim", "uni_pc", "uni_pc_bh2",
    "ipndm", "ipndm_v", "deis", "res_multistep", "gradient_estimation",
})

# Nodes that treat every image (or latent) of a batch independently.
PER_IMAGE_NODES = frozenset({
    "VAEDecode", "VAEDecodeTiled", "ImageScale", "ImageScaleBy", "ImageInvert", "ImageSharpen",
    "ImageBlur", "LatentUpscale", "LatentUpscaleBy", "ImageUpscaleWithModel", "ImageQuantize",
    *OUTPUT_IMAGE_CLASSES,
})

SEP = "#"  # per-request copies of a node are named "<node id>#<index>"


@dataclass(frozen=True)
class BatchPlan:
    sampler: str
    positive_encoder: str | None
    negative_encoder: str | None
    batched_outputs: frozenset[str]  # output nodes downstream of the sampler


def original_node_id(node_id: str) -> str:
    return node_id.split(SEP, 1)[0]


def plan_batching(graph: Graph, params: tuple[Param, ...]) -> tuple[BatchPlan | None, str]:
    """(plan, reason): a plan if the graph can be batched safely, else None and why not."""
    samplers = [n for n in sorted_ids(graph) if graph[n]["class_type"] in ("KSampler", "KSamplerAdvanced")]
    if len(samplers) != 1:
        return None, f"{len(samplers)} samplers (exactly one KSampler can be batched)"
    sampler = samplers[0]
    if graph[sampler]["class_type"] != "KSampler":
        return None, f"sampler {sampler} is {graph[sampler]['class_type']}, not KSampler"
    by_role = {p.role: p for p in params if p.role}
    seed = by_role.get("seed")
    if seed is None or seed.node_id != sampler:
        return None, "the sampler's seed is not a request parameter"
    if not is_link(graph[sampler]["inputs"].get("latent_image")):
        return None, "the sampler's latent_image is not a link"
    encoders = {}
    for role, sampler_input in (("prompt", "positive"), ("negative_prompt", "negative")):
        param = by_role.get(role)
        encoder = text_source(graph, sampler, sampler_input)
        if param is not None and (encoder != param.node_id or not _feeds_only(graph, encoder, sampler, sampler_input)):
            return None, f"{role} does not feed the sampler's {sampler_input} input directly"
        encoders[role] = encoder if param is not None else None
    downstream, problem = _downstream(graph, sampler)
    if problem:
        return None, problem
    outputs = frozenset(n for n in downstream if graph[n]["class_type"] in OUTPUT_IMAGE_CLASSES)
    return BatchPlan(sampler, encoders["prompt"], encoders["negative_prompt"], outputs), "batched"


def _feeds_only(graph: Graph, encoder: str | None, sampler: str, sampler_input: str) -> bool:
    if encoder is None:
        return False
    return consumers(graph, encoder) == [(sampler, sampler_input)]


def _downstream(graph: Graph, start: str) -> tuple[set[str], str]:
    seen: set[str] = set()
    queue = deque([start])
    while queue:
        node_id = queue.popleft()
        for consumer, _ in consumers(graph, node_id):
            if consumer in seen:
                continue
            class_type = graph[consumer]["class_type"]
            if class_type not in PER_IMAGE_NODES:
                return seen, f"node {consumer} ({class_type}) after the sampler is not known to work image by image"
            seen.add(consumer)
            queue.append(consumer)
    return seen, ""


def merge_graph(plan: BatchPlan, bound: Graph, texts: list[dict[str, str]], seeds: list[int]) -> Graph:
    """One graph running len(seeds) requests: `bound` is the first request's graph.

    `texts[i]` maps "prompt"/"negative_prompt" to request i's text.
    """
    n = len(seeds)
    graph = copy.deepcopy(bound)
    sampler = graph[plan.sampler]
    inputs = dict(sampler["inputs"])
    for role, encoder, sampler_input in (
        ("prompt", plan.positive_encoder, "positive"),
        ("negative_prompt", plan.negative_encoder, "negative"),
    ):
        if encoder is None:
            continue
        batch_inputs: dict[str, object] = {}
        for i in range(n):
            copy_id = f"{encoder}{SEP}{i}"
            node = copy.deepcopy(bound[encoder])
            node["inputs"]["text"] = texts[i][role]
            graph[copy_id] = node
            batch_inputs[f"cond_{i}"] = [copy_id, 0]
        del graph[encoder]
        batch_id = f"{plan.sampler}{SEP}{sampler_input}"
        graph[batch_id] = {"class_type": "ComfyBentoBatchConditioning", "inputs": batch_inputs}
        inputs[sampler_input] = [batch_id, 0]
    repeat_id = f"{plan.sampler}{SEP}latent"
    graph[repeat_id] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": inputs["latent_image"], "amount": n}}
    inputs["latent_image"] = [repeat_id, 0]
    inputs.pop("seed")
    inputs["seeds"] = json.dumps(seeds)
    graph[plan.sampler] = {"class_type": "ComfyBentoBatchKSampler", "inputs": inputs, "_meta": sampler.get("_meta", {})}
    return graph

