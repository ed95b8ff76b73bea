"""Submitted graphs (ComfyUI's /prompt, Comfy API v2) matched to served workflows: same nodes and links, fields may differ."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.models.lock import parse_lock
from comfybento.workflows.catalog import WorkflowSpec, load_workflow
from comfybento.workflows.graph import NodeDef
from comfybento.workflows.matching import SEARCH_STEPS, GraphMismatch, match_graph, node_mappings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def catalog(node_defs: dict[str, NodeDef]) -> dict[str, WorkflowSpec]:
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), Settings.from_env({}))
    return {spec.name: spec}


def _graph(catalog: dict[str, WorkflowSpec]) -> dict[str, Any]:
    return copy.deepcopy(catalog["txt2img"].graph)


def _node(graph: dict[str, Any], class_type: str) -> dict[str, Any]:
    return next(n for n in graph.values() if n["class_type"] == class_type)


def test_the_served_graph_itself_matches_with_its_own_values(catalog: dict[str, WorkflowSpec]) -> None:
    run = match_graph(catalog, _graph(catalog))
    assert run.workflow == "txt2img"
    sampler = _node(catalog["txt2img"].graph, "KSampler")["inputs"]
    assert run.values["seed"] == sampler["seed"] and run.values["steps"] == sampler["steps"]


def test_field_values_that_differ_become_the_request_s_fields(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    _node(graph, "KSampler")["inputs"].update(seed=1234, steps=3, cfg=2.5)
    texts = [n for n in graph.values() if n["class_type"] == "CLIPTextEncode"]
    texts[0]["inputs"]["text"] = "a red fox"
    _node(graph, "EmptyLatentImage")["inputs"]["width"] = 128
    run = match_graph(catalog, json.loads(json.dumps(graph)))  # as it arrives over HTTP
    assert (run.values["seed"], run.values["steps"], run.values["cfg"], run.values["width"]) == (1234, 3, 2.5, 128)
    assert "a red fox" in run.values.values()


def test_a_missing_node_is_named(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    save = next(i for i, n in graph.items() if n["class_type"] == "SaveImage")
    del graph[save]
    with pytest.raises(GraphMismatch, match=f"closest is 'txt2img': node '{save}' \\(SaveImage\\) is missing"):
        match_graph(catalog, graph)


def test_a_relinked_input_is_named(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    sampler = _node(graph, "KSampler")["inputs"]
    sampler["negative"] = list(sampler["positive"])  # one prompt for both: the negative prompt's node is left unread
    with pytest.raises(GraphMismatch, match="input 'negative' is linked differently") as err:
        match_graph(catalog, graph)
    assert err.value.error_code == 422


def test_swapped_prompt_links_are_the_same_graph_with_the_prompts_swapped(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    sampler = _node(graph, "KSampler")["inputs"]
    positive, negative = graph[sampler["positive"][0]]["inputs"]["text"], graph[sampler["negative"][0]]["inputs"]["text"]
    sampler["positive"], sampler["negative"] = sampler["negative"], sampler["positive"]
    run = match_graph(catalog, graph)
    served = catalog["txt2img"]
    fields = served.field_names
    sampler_id = next(i for i, n in served.graph.items() if n["class_type"] == "KSampler")
    pos_id, neg_id = served.graph[sampler_id]["inputs"]["positive"][0], served.graph[sampler_id]["inputs"]["negative"][0]
    # The workflow's positive prompt node is the graph's node the sampler reads as positive: the old negative text.
    assert run.values[fields[(pos_id, "text")]] == negative and run.values[fields[(neg_id, "text")]] == positive


def test_a_changed_value_that_is_no_field_is_refused(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    assert ("4", "ckpt_name") not in catalog["txt2img"].field_names
    _node(graph, "CheckpointLoaderSimple")["inputs"]["ckpt_name"] = "other.safetensors"
    with pytest.raises(GraphMismatch, match=r"input 'ckpt_name' is 'other.safetensors'.*not a request field"):
        match_graph(catalog, graph)


def test_an_output_node_s_filename_prefix_is_cosmetic(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    _node(graph, "SaveImage")["inputs"]["filename_prefix"] = "elsewhere/mine"
    graph = {i: {**n, "_meta": {"title": "renamed"}} for i, n in graph.items()}
    assert match_graph(catalog, graph).workflow == "txt2img"


def _renumbered(graph: dict[str, Any], start: int = 100) -> tuple[dict[str, Any], dict[str, str]]:
    """The same graph under other node ids (in reverse order), as a client building it from scratch might number it."""
    new_ids = {old: str(start + n) for n, old in enumerate(reversed(list(graph)))}
    out = {}
    for old, node in graph.items():
        inputs = {k: [new_ids[v[0]], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        out[new_ids[old]] = {"class_type": node["class_type"], "inputs": inputs}
    return out, new_ids


def test_other_node_ids_match_and_carry_their_values(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    _node(graph, "KSampler")["inputs"].update(seed=77, steps=2)
    _node(graph, "EmptyLatentImage")["inputs"]["width"] = 192
    renumbered, new_ids = _renumbered(graph, start=1)  # ids 1..7, overlapping the workflow's ids 3..9 with other nodes
    assert any(renumbered.get(i, {}).get("class_type") not in (None, n["class_type"]) for i, n in graph.items())
    run = match_graph(catalog, renumbered)
    assert (run.workflow, run.values["seed"], run.values["steps"], run.values["width"]) == ("txt2img", 77, 2, 192)
    assert run.node_ids == {old: new for old, new in new_ids.items() if old != new}  # results go back under the graph's ids


def test_a_graph_under_the_workflow_s_own_ids_renames_nothing(catalog: dict[str, WorkflowSpec]) -> None:
    assert match_graph(catalog, _graph(catalog)).node_ids == {}


def test_a_difference_in_a_renumbered_graph_names_the_graph_s_node(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    _node(graph, "CheckpointLoaderSimple")["inputs"]["ckpt_name"] = "other.safetensors"
    renumbered, new_ids = _renumbered(graph)
    with pytest.raises(GraphMismatch, match=rf"node '{new_ids['4']}' \(CheckpointLoaderSimple\) \(the workflow's '4'\) input 'ckpt_name'"):
        match_graph(catalog, renumbered)


def test_an_extra_node_in_a_renumbered_graph_is_named(catalog: dict[str, WorkflowSpec]) -> None:
    renumbered, new_ids = _renumbered(_graph(catalog))
    renumbered["999"] = {"class_type": "PreviewImage", "inputs": {"images": [new_ids["8"], 0]}}
    with pytest.raises(GraphMismatch, match=r"closest is 'txt2img': node '999' \(PreviewImage\) is not in the workflow$"):
        match_graph(catalog, renumbered)


def test_matching_a_large_symmetric_graph_is_bounded(catalog: dict[str, WorkflowSpec]) -> None:
    """Forty extra sinks of the class of the workflow's sink: each pairing is tried once, and the answer comes fast."""
    graph = _graph(catalog)
    decode = next(i for i, n in graph.items() if n["class_type"] == "VAEDecode")
    for n in range(40):
        graph[str(1000 + n)] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": [decode, 0]}}
    started = time.perf_counter()
    with pytest.raises(GraphMismatch, match="is not in the workflow"):
        match_graph(catalog, graph)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("bad", [[], {}, "graph", {"1": "node"}])
def test_what_is_not_a_graph_is_refused(catalog: dict[str, WorkflowSpec], bad: Any) -> None:
    with pytest.raises(GraphMismatch, match="expected an API-format graph"):
        match_graph(catalog, bad)


def test_a_renumbered_graph_with_another_output_node_still_names_the_real_difference(catalog: dict[str, WorkflowSpec]) -> None:
    renumbered, new_ids = _renumbered(_graph(catalog))
    renumbered[new_ids["9"]] = {"class_type": "PreviewImage", "inputs": {"images": [new_ids["8"], 0]}}
    with pytest.raises(GraphMismatch) as err:
        match_graph(catalog, renumbered)
    message = str(err.value)
    assert f"node '{new_ids['9']}' (PreviewImage) is not in the workflow" in message and "(1 more)" in message  # and SaveImage is missing


def test_the_search_for_a_pairing_stops_at_its_step_budget() -> None:
    """Twelve interchangeable sinks and a graph that cannot match: 12! pairings, cut off after SEARCH_STEPS tries."""
    served = {"1": {"class_type": "VAEDecode", "inputs": {}}}
    served.update({str(10 + n): {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}} for n in range(12)})
    graph = copy.deepcopy(served)
    graph["99"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}  # so no pairing covers the graph
    started = time.perf_counter()
    complete, partial = node_mappings(served, graph)
    assert complete == [] and len(partial) == len(served)
    assert time.perf_counter() - started < 2.0 and SEARCH_STEPS < 12 * 11 * 10 * 9
