"""Submitted graphs (ComfyUI's /prompt, Comfy API v2) matched to served workflows: same nodes and links, fields may differ."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.models.lock import parse_lock
from comfybento.workflows.catalog import WorkflowSpec, load_workflow
from comfybento.workflows.graph import NodeDef
from comfybento.workflows.matching import GraphMismatch, match_graph

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
    sampler["positive"], sampler["negative"] = sampler["negative"], sampler["positive"]
    with pytest.raises(GraphMismatch, match="input 'positive' is linked differently") as err:
        match_graph(catalog, graph)
    assert "(1 more)" in str(err.value) and err.value.error_code == 422


def test_a_changed_value_that_is_no_field_is_refused(catalog: dict[str, WorkflowSpec]) -> None:
    graph = _graph(catalog)
    _node(graph, "SaveImage")["inputs"]["filename_prefix"] = "elsewhere"
    with pytest.raises(GraphMismatch, match=r"input 'filename_prefix' is 'elsewhere'.*not a request field"):
        match_graph(catalog, graph)


@pytest.mark.parametrize("bad", [[], {}, "graph", {"1": "node"}])
def test_what_is_not_a_graph_is_refused(catalog: dict[str, WorkflowSpec], bad: Any) -> None:
    with pytest.raises(GraphMismatch, match="expected an API-format graph"):
        match_graph(catalog, bad)
