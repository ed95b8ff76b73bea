"""The import contract (pyproject.toml [tool.importlinter]): the repository keeps it, and it fails when broken.

Each broken case runs the linter on a copy of the package with one bad import added (inside a function:
those count too), so a contract that silently passes everything cannot go unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package under root, not another copy
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_repository_keeps_its_import_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "comfybento", tmp_path / "comfybento", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "bad_import", "broken", "named"),
    [
        # a lower layer importing a higher one (config -> workflows), inside a function
        ("config.py", "from comfybento.workflows.limits import check_graph_limits", "Layers, high to low",
         "comfybento.config -> comfybento.workflows.limits"),
        # a cycle inside one package: the graph model importing the UI-format conversion above it
        ("workflows/graph.py", "from comfybento.workflows.ui_format import ui_to_api", "No import cycles",
         "comfybento.workflows"),
        # the web tier loading torch
        ("front/keys.py", "import torch", "The front never loads torch", "comfybento.front.keys -> torch"),
        # the web tier reaching the engine's executor, through a module it may import
        ("engine/messages.py", "from comfybento.engine.engine import Engine", "The front never loads torch",
         "comfybento.engine.engine"),
    ],
)
def test_a_bad_import_breaks_the_contract(tmp_path, module, bad_import, broken, named):
    root = _copy(tmp_path)
    path = root / "comfybento" / module
    path.write_text(path.read_text() + f"\n\ndef _bad() -> None:\n    {bad_import}  # noqa\n")
    result = _lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    broken_line = next((line for line in result.stdout.splitlines() if line.startswith(broken)), "")
    assert " BROKEN" in broken_line, result.stdout
    assert named in result.stdout


def test_a_new_top_level_module_must_be_given_a_layer(tmp_path):
    root = _copy(tmp_path)
    (root / "comfybento" / "helpers.py").write_text('"""Somewhere to put things."""\n')
    result = _lint(root)
    assert result.returncode == 1 and "comfybento.helpers" in result.stdout, result.stdout
