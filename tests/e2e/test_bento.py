"""`bentoml build` of the project: works with no model file on disk (checkpoints are fetched at startup)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.conftest import BENTOML
from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_bentoml_build_needs_no_model_files(tmp_path):
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    env = {**os.environ, "COMFYBENTO_MODELS": str(empty_models), "BENTOML_HOME": str(tmp_path / "bentoml-home"),
           "COMFYBENTO_WORK_DIR": str(tmp_path / "work")}
    out = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = next(line for line in out.stdout.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")
    bento_dir = tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/")
    assert (bento_dir / "src" / "service.py").is_file() and (bento_dir / "src" / "models.lock").is_file()
    assert not list(bento_dir.rglob("*.safetensors"))
