"""Startup problems fail fast with a message a user can act on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import start_server, stop_server
from tests.helpers import GRAPHS, ROOT, service_env

pytestmark = pytest.mark.e2e


def _workflows(tmp_path: Path, files: dict[str, str]) -> Path:
    """The demo workflow plus the given files (name -> content)."""
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    shutil.copy(ROOT / "workflows" / "txt2img.json", workflows / "txt2img.json")
    for name, content in files.items():
        (workflows / name).write_text(content)
    return workflows


def _serve_and_fail(tmp_path: Path, workflows: Path) -> str:
    """Start `bentoml serve` on the folder; it must exit non-zero. Returns its output."""
    log = tmp_path / "serve.log"
    proc, _ = start_server(service_env(workflows, tmp_path / "work"), log)
    try:
        assert proc.wait(timeout=180) != 0
    finally:
        stop_server(proc)
    return log.read_text()


def test_ui_format_workflow_that_cannot_run_is_refused_naming_file_and_node(tmp_path):
    # A UI-format file is converted; this one's KSampler has no inputs, so the converted graph names what is missing.
    out = _serve_and_fail(tmp_path, _workflows(tmp_path, {"ui_format.json": (GRAPHS / "ui_format.json").read_text()}))
    assert "ui_format.json" in out and "node 3 (KSampler): required input 'model' is missing" in out


def test_unknown_node_is_refused_naming_file_node_and_class(tmp_path):
    out = _serve_and_fail(tmp_path, _workflows(tmp_path, {"unknown_node.json": (GRAPHS / "unknown_node.json").read_text()}))
    assert "unknown_node.json" in out and "node 2 (SuperResolutionMagic)" in out


def test_model_missing_from_lock_is_refused(tmp_path):
    graph = (ROOT / "workflows" / "txt2img.json").read_text().replace("tiny-sd.safetensors", "sd_xl_base_1.0.safetensors")
    out = _serve_and_fail(tmp_path, _workflows(tmp_path, {"sdxl.json": graph}))
    assert "node 4 (CheckpointLoaderSimple)" in out and "sd_xl_base_1.0.safetensors" in out and "models.lock" in out
