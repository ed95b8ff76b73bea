"""The committed TypeScript client (clients/typescript) is what ./scripts/gen-client makes from the project now.

Both build the OpenAPI document offline (`python -m comfybento openapi`, which reads ComfyUI's node
definitions from the cached snapshot, writing it first if needed), so no server is started here.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e

CLIENT = ROOT / "clients" / "typescript"
STALE = "clients/typescript is out of date with the service's OpenAPI document: run ./scripts/gen-client and commit the result"


def _project_defaults_env() -> dict[str, str]:
    """As ./scripts/gen-client builds it: the project's defaults, whatever COMFYBENTO_* this shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYBENTO_") or k == "COMFYBENTO_CACHE_DIR"}
    return {**env, "COMFYBENTO_CPU": "1"}


def _differences(committed: Path, fresh: Path) -> list[str]:
    cmp = filecmp.dircmp(committed, fresh)
    found = [f"{committed.name}/{n}" for n in (*cmp.left_only, *cmp.right_only, *cmp.diff_files, *cmp.funny_files)]
    for name in cmp.common_dirs:
        found += [f"{committed.name}/{d}" for d in _differences(committed / name, fresh / name)]
    return found


def test_the_openapi_document_is_up_to_date(tmp_path):
    out = tmp_path / "openapi.json"
    run = subprocess.run([sys.executable, "-m", "comfybento", "openapi", "--out", str(out)], cwd=ROOT, env=_project_defaults_env(),
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.read_text(encoding="utf-8") == (CLIENT / "openapi.json").read_text(encoding="utf-8"), STALE


def test_the_generated_code_is_up_to_date(tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm, >= 20.19) is not installed: the generator needs it")
    assert (CLIENT / "node_modules" / ".bin" / "openapi-ts").exists(), "run `npm ci` in clients/typescript (./scripts/test does)"
    run = subprocess.run([str(ROOT / "scripts" / "gen-client"), str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert not _differences(CLIENT / "src" / "generated", tmp_path / "generated"), (STALE, _differences(CLIENT / "src" / "generated",
                                                                                                          tmp_path / "generated"))
