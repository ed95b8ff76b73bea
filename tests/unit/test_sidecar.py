from __future__ import annotations

from pathlib import Path

import pytest

from comfybento.errors import WorkflowError
from comfybento.workflows.graph import load_graph
from comfybento.workflows.params import infer_params
from comfybento.workflows.sidecar import apply_sidecar, load_sidecar

ROOT = Path(__file__).resolve().parents[2]


def test_rename_hide_add_and_override(node_defs, tmp_path):
    sidecar = tmp_path / "txt2img.yaml"
    sidecar.write_text(
        "max_batch_size: 4\nparams:\n"
        "  - {node: '6', input: text, name: positive}\n"
        "  - {node: '3', input: denoise, hide: true}\n"
        "  - {node: '4', input: ckpt_name, name: checkpoint, description: Which checkpoint}\n"
        "  - {node: '3', input: steps, max: 50, default: 12}\n"
    )
    loaded = load_sidecar(sidecar)
    assert loaded.max_batch_size == 4
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    params = {p.name: p for p in apply_sidecar("t", loaded, graph, node_defs, infer_params("t", graph, node_defs))}
    assert "positive" in params and "prompt" not in params and "denoise" not in params
    assert params["checkpoint"].choices == ("tiny-sd.safetensors",) and params["checkpoint"].description == "Which checkpoint"
    assert params["steps"].maximum == 50 and params["steps"].default == 12


def test_bad_sidecar_entries_are_named(node_defs, tmp_path):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    sidecar = tmp_path / "t.yaml"
    sidecar.write_text("params:\n  - {node: '42', input: text}\n")
    with pytest.raises(WorkflowError, match="node 42"):
        apply_sidecar("t", load_sidecar(sidecar), graph, node_defs, [])
    sidecar.write_text("params:\n  - {node: '3', input: model}\n")
    with pytest.raises(WorkflowError, match="is a link"):
        apply_sidecar("t", load_sidecar(sidecar), graph, node_defs, [])
    sidecar.write_text("colour: red\n")
    with pytest.raises(WorkflowError, match="unknown keys"):
        load_sidecar(sidecar)
