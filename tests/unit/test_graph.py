from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfybento.errors import WorkflowError
from comfybento.workflows.graph import check_graph, load_graph
from comfybento.workflows.ui_format import load_workflow_graph

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "tests" / "graphs"


def test_ui_format_file_without_node_defs_says_what_it_needs():
    with pytest.raises(WorkflowError, match="needs the node registry") as err:
        load_graph(GRAPHS / "ui_format.json")
    assert "ui_format.json" in str(err.value) and "Save (API Format)" in str(err.value)


def test_ui_format_file_with_node_defs_is_converted_and_checked(node_defs):
    graph = load_workflow_graph(GRAPHS / "ui_format.json", node_defs)
    assert graph["3"]["class_type"] == "KSampler"
    with pytest.raises(WorkflowError, match=r"node 3 \(KSampler\): required input 'model' is missing"):
        check_graph("ui_format.json", graph, node_defs)


def test_unknown_class_type_names_file_node_and_class(node_defs):
    graph = load_graph(GRAPHS / "unknown_node.json")
    with pytest.raises(WorkflowError) as err:
        check_graph("unknown_node.json", graph, node_defs)
    assert "unknown_node.json" in str(err.value) and "node 2 (SuperResolutionMagic)" in str(err.value)


def test_missing_required_input_and_dangling_link(node_defs, tmp_path):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    del graph["3"]["inputs"]["steps"]
    graph["8"]["inputs"]["vae"] = ["99", 2]
    with pytest.raises(WorkflowError) as err:
        check_graph("g.json", graph, node_defs)
    text = str(err.value)
    assert "node 3 (KSampler): required input 'steps' is missing" in text
    assert "node 8 (VAEDecode): input 'vae' links to node 99, which does not exist" in text


def test_link_to_missing_output_slot(node_defs):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["8"]["inputs"]["vae"] = ["4", 5]
    with pytest.raises(WorkflowError, match="output 5 of node 4"):
        check_graph("g.json", graph, node_defs)


def test_not_json_and_not_a_graph(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_graph(bad)
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(WorkflowError, match="node 1 has no 'class_type'"):
        load_graph(bad)
