"""Decide whether a workflow can run many requests as one ComfyUI execution, and build that graph.

Requests in one group share every parameter except the batchable ones the
plan names (`BatchPlan.batchable_params`: prompts, images, seeds): see
`binding.shape_key`. Each node of the graph falls in one of three parts:

  shared       depends on no per-request value (loaders, LoRAs, empty latents,
               schedulers): kept once.
  per request  depends on per-request values only through nodes that are
               themselves per request (text encoders, LoadImage, VAEEncode,
               SetLatentNoiseMask, RandomNoise ...): copied once per request as
               "<node id>#<index>", each copy with that request's values.
  batched      samplers, guiders, ControlNet apply nodes, output nodes and
               everything after a sampler: kept once, running over the batch.

Where a per-request value enters a batched node, a batching node joins the N
copies in request order (conditionings, latents with their noise masks,
images, masks, noise generators); where a shared latent enters one it is
repeated N times. Samplers draw each request's noise from its own seed exactly
as they would alone (ComfyBentoBatchKSampler, ComfyBentoBatchKSamplerAdvanced,
ComfyBentoBatchNoise for SamplerCustomAdvanced). Everything downstream of a
batched node must work image by image, so output batches split back per request.
Pure graph manipulation: no ComfyUI import.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfybento.outputs.media import OUTPUT_IMAGE_CLASSES
from comfybento.workflows.graph import Graph, is_link, links_into, sorted_ids
from comfybento.workflows.params import Param

# Samplers that draw no noise after the first step: a batch gives each item exactly its solo result.
DETERMINISTIC_SAMPLERS = frozenset(
    {
        "euler",
        "heun",
        "heunpp2",
        "dpm_2",
        "lms",
        "dpmpp_2m",
        "ddim",
        "uni_pc",
        "uni_pc_bh2",
        "ipndm",
        "ipndm_v",
        "deis",
        "res_multistep",
        "gradient_estimation",
    }
)

# Node inputs whose request values may differ within a batch (the node is copied per request).
PER_REQUEST_INPUTS: Mapping[str, tuple[str, ...]] = {
    "CLIPTextEncode": ("text",),
    "LoadImage": ("image",),
    "LoadImageMask": ("image",),
    "CPackInputImage": ("image",),
    "RandomNoise": ("noise_seed",),
}

# Samplers that run over the batch: their seed input (if any) and the class that replaces them.
BATCH_SAMPLERS: Mapping[str, tuple[str | None, str]] = {
    "KSampler": ("seed", "ComfyBentoBatchKSampler"),
    "KSamplerAdvanced": ("noise_seed", "ComfyBentoBatchKSamplerAdvanced"),
    "SamplerCustomAdvanced": (None, "SamplerCustomAdvanced"),
}

# Nodes that treat every image (or latent) of a batch independently.
PER_IMAGE_NODES = frozenset(
    {
        "VAEDecode",
        "VAEDecodeTiled",
        "VAEEncode",
        "ImageScale",
        "ImageScaleBy",
        "ImageInvert",
        "ImageSharpen",
        "ImageBlur",
        "LatentUpscale",
        "LatentUpscaleBy",
        "ImageUpscaleWithModel",
        "ImageQuantize",
        *OUTPUT_IMAGE_CLASSES,
    }
)

# Nodes that must run once over the batch (never copied per request).
BATCHED_NODES = frozenset(
    {
        *BATCH_SAMPLERS,
        "CFGGuider",
        "BasicGuider",
        "ControlNetApply",
        "ControlNetApplyAdvanced",
        *OUTPUT_IMAGE_CLASSES,
    }
)

# What a batched node's input carries, by input name, and the node that joins N per-request values of it.
INPUT_TYPES: Mapping[str, str] = {
    "positive": "CONDITIONING",
    "negative": "CONDITIONING",
    "conditioning": "CONDITIONING",
    "latent_image": "LATENT",
    "samples": "LATENT",
    "image": "IMAGE",
    "images": "IMAGE",
    "pixels": "IMAGE",
    "mask": "MASK",
    "noise": "NOISE",
}
JOINERS: Mapping[str, str] = {
    "CONDITIONING": "ComfyBentoBatchConditioning",
    "LATENT": "ComfyBentoBatchLatents",
    "IMAGE": "ComfyBentoBatchImages",
    "MASK": "ComfyBentoBatchMasks",
    "NOISE": "ComfyBentoBatchNoise",
}

SEP = "#"  # per-request copies of a node are named "<node id>#<index>"


@dataclass(frozen=True)
class BatchPlan:
    per_request: frozenset[str]  # nodes copied once per request
    batched: frozenset[str]  # nodes that run once over the whole batch
    samplers: tuple[str, ...]
    sampler_name_nodes: tuple[str, ...]  # nodes whose sampler_name must be deterministic for a batch
    batchable_params: frozenset[str]  # request fields that may differ within a batch
    image_params: tuple[str, ...]  # per-request image fields (their size and mode key the batch)
    text_encoders: tuple[tuple[str, str], ...]  # (field name, encoder node id): prompt lengths key the batch
    batched_outputs: frozenset[str]  # output nodes whose batch splits per request

    def accepts(self, graph: Graph) -> bool:
        """Whether a bound graph may share a batch: every sampler deterministic after its first step."""
        return all(graph[n]["inputs"].get("sampler_name") in DETERMINISTIC_SAMPLERS for n in self.sampler_name_nodes)


def original_node_id(node_id: str) -> str:
    return node_id.split(SEP, 1)[0]


def plan_batching(graph: Graph, params: tuple[Param, ...]) -> tuple[BatchPlan | None, str]:
    """(plan, reason): a plan if the graph can be batched safely, else None and why not (naming the node)."""
    samplers = [n for n in sorted_ids(graph) if graph[n]["class_type"] in BATCH_SAMPLERS]
    if not samplers:
        other = [n for n in sorted_ids(graph) if "Sampler" in graph[n]["class_type"]]
        where = f"; node {other[0]} ({graph[other[0]]['class_type']}) cannot be batched" if other else ""
        return None, f"no KSampler, KSamplerAdvanced or SamplerCustomAdvanced{where}"
    candidates = {p.name: p for p in params if p.input_name in PER_REQUEST_INPUTS.get(graph[p.node_id]["class_type"], ())}
    for sampler in samplers:
        seed_input = BATCH_SAMPLERS[graph[sampler]["class_type"]][0]
        if seed_input is not None and is_link(graph[sampler]["inputs"].get(seed_input)):
            return None, f"the seed of node {sampler} ({graph[sampler]['class_type']}) comes from another node, not a request parameter"
        candidates.update({p.name: p for p in params if p.node_id == sampler and p.input_name == seed_input})
    sources = {p.node_id for p in candidates.values()}
    if not sources:
        return None, "no request parameter may differ within a batch (a prompt, seed or image)"
    parts, problem = _classify(graph, sources)
    if problem:
        return None, problem
    names, problem = _sampler_name_nodes(graph, samplers)
    if problem:
        return None, problem
    problem = _check_joins(graph, parts)
    if problem:
        return None, problem
    per_request = frozenset(n for n, part in parts.items() if part == "P")
    batched = frozenset(n for n, part in parts.items() if part == "B")
    plan = BatchPlan(
        per_request=per_request,
        batched=batched,
        samplers=tuple(samplers),
        sampler_name_nodes=names,
        batchable_params=frozenset(p.name for p in candidates.values() if p.node_id in per_request | batched),
        image_params=tuple(p.name for p in candidates.values() if p.kind == "image" and p.node_id in per_request),
        text_encoders=tuple(
            (p.name, p.node_id)
            for p in candidates.values()
            if graph[p.node_id]["class_type"] == "CLIPTextEncode" and p.node_id in per_request
        ),
        batched_outputs=frozenset(n for n in batched if graph[n]["class_type"] in OUTPUT_IMAGE_CLASSES),
    )
    return plan, "batched"


def _topological(graph: Graph) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}
    for root in sorted_ids(graph):
        stack = [(root, False)]
        while stack:
            node_id, done = stack.pop()
            if done:
                state[node_id] = 2
                order.append(node_id)
                continue
            if state.get(node_id) or node_id not in graph:
                continue
            state[node_id] = 1
            stack.append((node_id, True))
            stack.extend((src, False) for _, src, _ in links_into(graph, node_id) if src in graph and not state.get(src))
    return order


def _classify(graph: Graph, sources: set[str]) -> tuple[dict[str, str], str]:
    """'P' (per request) or 'B' (batched) for every node that depends on a per-request value."""
    parts: dict[str, str] = {}
    for node_id in _topological(graph):
        class_type = graph[node_id]["class_type"]
        fed_by = {parts[src] for _, src, _ in links_into(graph, node_id) if src in parts}
        if node_id not in sources and not fed_by:
            continue  # shared
        if class_type in BATCHED_NODES:
            parts[node_id] = "B"
        elif "B" in fed_by:
            if class_type not in PER_IMAGE_NODES:
                return parts, f"node {node_id} ({class_type}) after a sampler is not known to work image by image"
            parts[node_id] = "B"
        elif "Sampler" in class_type or "Save" in class_type or "Preview" in class_type:
            return parts, f"node {node_id} ({class_type}) depends on per-request values and cannot be batched"
        else:
            parts[node_id] = "P"
    return parts, ""


def _sampler_name_nodes(graph: Graph, samplers: list[str]) -> tuple[tuple[str, ...], str]:
    names = []
    for sampler in samplers:
        if graph[sampler]["class_type"] != "SamplerCustomAdvanced":
            names.append(sampler)
            continue
        link = graph[sampler]["inputs"].get("sampler")
        source = link[0] if is_link(link) and link[0] in graph else None
        if source is None or graph[source]["class_type"] != "KSamplerSelect":
            what = f"node {source} ({graph[source]['class_type']})" if source else "nothing"
            return (), f"the sampler of node {sampler} (SamplerCustomAdvanced) is {what}, not KSamplerSelect"
        names.append(source)
    return tuple(names), ""


def _check_joins(graph: Graph, parts: dict[str, str]) -> str:
    """Every per-request value entering a batched node must be of a kind that can be joined."""
    for node_id, part in parts.items():
        if part != "B":
            continue
        for name, src, _ in links_into(graph, node_id):
            if parts.get(src) == "P" and INPUT_TYPES.get(name) not in JOINERS:
                return f"input '{name}' of node {node_id} ({graph[node_id]['class_type']}) gets a per-request value that cannot be batched"
    return ""


def merge_graph(plan: BatchPlan, bound: list[Graph]) -> Graph:
    """One graph running len(bound) requests: `bound[i]` is request i's graph with its values in place."""
    n = len(bound)
    first = bound[0]
    graph: Graph = {}
    for node_id, node in first.items():
        if node_id not in plan.per_request and node_id not in plan.batched:
            graph[node_id] = copy.deepcopy(node)
    for node_id in plan.per_request:
        for i in range(n):
            node = copy.deepcopy(bound[i][node_id])
            for name, src, slot in links_into(first, node_id):
                if src in plan.per_request:
                    node["inputs"][name] = [f"{src}{SEP}{i}", slot]
            graph[f"{node_id}{SEP}{i}"] = node
    for node_id in plan.batched:
        node = copy.deepcopy(first[node_id])
        for name, src, slot in links_into(first, node_id):
            node["inputs"][name] = _batched_input(plan, graph, name, src, slot, n)
        graph[node_id] = _batch_sampler(node, [b[node_id] for b in bound]) if node_id in plan.samplers else node
    return graph


def _batched_input(plan: BatchPlan, graph: Graph, name: str, src: str, slot: int, n: int) -> list[Any]:
    """The link a batched node gets for one input: joined copies, a repeated shared latent, or as is."""
    kind = INPUT_TYPES.get(name)
    if src in plan.per_request:
        joiner = f"{src}{SEP}{slot}{SEP}join"
        graph[joiner] = {"class_type": JOINERS[str(kind)], "inputs": {f"item_{i}": [f"{src}{SEP}{i}", slot] for i in range(n)}}
        return [joiner, 0]
    if src in plan.batched or kind not in ("LATENT", "NOISE"):
        return [src, slot]
    if kind == "NOISE":  # one shared generator: each request still gets its own noise, as alone
        joiner = f"{src}{SEP}{slot}{SEP}join"
        graph[joiner] = {"class_type": JOINERS["NOISE"], "inputs": {f"item_{i}": [src, slot] for i in range(n)}}
        return [joiner, 0]
    repeat = f"{src}{SEP}{slot}{SEP}repeat"
    graph[repeat] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": [src, slot], "amount": n}}
    return [repeat, 0]


def _batch_sampler(node: dict[str, Any], per_request: list[dict[str, Any]]) -> dict[str, Any]:
    seed_input, batch_class = BATCH_SAMPLERS[node["class_type"]]
    if seed_input is None:
        return node
    inputs = dict(node["inputs"])
    inputs.pop(seed_input)
    inputs["seeds"] = json.dumps([int(r["inputs"][seed_input]) for r in per_request])
    return {"class_type": batch_class, "inputs": inputs, "_meta": node.get("_meta", {})}


def describe(plan: BatchPlan) -> str:
    """A one-line account of a plan for logs."""
    return (
        f"samplers {', '.join(plan.samplers)}; per request: {', '.join(sorted_ids(plan.per_request)) or 'none'}; "
        f"varying: {', '.join(sorted(plan.batchable_params))}"
    )
