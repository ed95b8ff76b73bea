"""The node-definition snapshot is ComfyUI's own /object_info: every node, every key, as ComfyUI's server sends it.

The reference is the /object_info route of a real ComfyUI PromptServer (server.py), built here and called as
aiohttp would call it; the snapshot's entries (comfybento.runtime.registry.object_info, which the front serves)
must equal it key by key, ComfyUI's V1 nodes, its V3 nodes (comfy_api io.ComfyNode) and comfybento's own alike.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.runtime.bootstrap import bootstrap
from comfybento.workflows.node_info import node_defs_from_info, write_snapshot
from tests.helpers import service_env

pytestmark = pytest.mark.engine

KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name", "description",
        "python_module", "category", "output_node"}


@pytest.fixture(scope="module")
def comfyui_answers(tmp_path_factory) -> dict[str, Any]:
    """GET /object_info and GET /extensions answered by ComfyUI's own server (its stand-in put back after)."""
    root = tmp_path_factory.mktemp("object_info")
    bootstrap(Settings.from_env(service_env(root / "workflows", root / "work")))
    import folder_paths
    import server

    from comfybento.runtime.registry import object_info

    object_info()  # describing nodes creates folders (Load3D's input/3d) that a folder listing then shows: both see them
    stand_in, user_dir, loop = server.PromptServer.instance, folder_paths.get_user_directory(), asyncio.new_event_loop()
    try:
        folder_paths.set_user_directory(str(root / "user"))
        real = server.PromptServer(loop)
        handlers = {r.path: r.handler for r in real.routes if getattr(r, "path", None) in ("/object_info", "/extensions")
                    and r.method == "GET"}
        answers = {path.lstrip("/"): json.loads(loop.run_until_complete(handler(None)).body) for path, handler in handlers.items()}
    finally:
        server.PromptServer.instance = stand_in
        folder_paths.set_user_directory(user_dir)
        loop.close()
    return answers


@pytest.fixture(scope="module")
def comfyui_object_info(comfyui_answers) -> dict[str, Any]:
    body: dict[str, Any] = comfyui_answers["object_info"]
    return body


@pytest.fixture(scope="module")
def ours(comfyui_object_info) -> dict[str, Any]:
    from comfybento.runtime.registry import object_info

    return object_info()


def test_every_node_is_sent_as_comfyui_sends_it(comfyui_object_info, ours):
    import server

    from comfybento.runtime.server_stub import PromptServerStandIn

    assert isinstance(server.PromptServer.instance, PromptServerStandIn), "the stand-in must stay the server nodes see"
    assert ours.keys() == comfyui_object_info.keys() and len(ours) > 100
    for name in ours:
        assert ours[name] == comfyui_object_info[name], name


@pytest.mark.parametrize("node", ["KSampler", "LoadImage", "SaveImage", "CheckpointLoaderSimple", "EmptyLatentImage",
                                  "ImageStitch", "ComfyBentoCollectImages"])
def test_named_nodes_key_by_key(comfyui_object_info, ours, node):
    if node not in comfyui_object_info:
        pytest.skip(f"{node} is not registered in this ComfyUI")
    expected, got = comfyui_object_info[node], ours[node]
    assert KEYS <= got.keys()
    for key in expected:
        assert got[key] == expected[key], f"{node}.{key}"
    assert got.keys() == expected.keys()


def test_input_options_and_flags_come_through(ours):
    seed = ours["KSampler"]["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] is True and seed["max"] == 2**64 - 1 and "tooltip" in seed
    assert ours["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    assert ours["KSampler"]["input_order"]["required"][:2] == ["model", "seed"]
    assert ours["EmptyLatentImage"]["output_tooltips"] and ours["KSampler"]["category"] == "sampling"
    assert any(entry.get("deprecated") for entry in ours.values()) and any(entry.get("experimental") for entry in ours.values())
    assert not ours["KSampler"].get("deprecated") and ours["SaveImage"]["output_node"] is True


def test_snapshot_round_trip_types_workflows(tmp_path, ours):
    path = tmp_path / "object_info-x.json"
    write_snapshot(path, ours, "0.3.75", {"my_nodes": "/srv/custom_nodes/my_nodes/js"})
    snapshot = json.loads(path.read_text(encoding="utf-8"))
    nodes = snapshot["nodes"]
    assert snapshot["web_dirs"] == {"my_nodes": "/srv/custom_nodes/my_nodes/js"}
    assert nodes["KSampler"] == ours["KSampler"]
    defs = node_defs_from_info(nodes)
    assert "euler" in defs["KSampler"].inputs["sampler_name"].choices and defs["SaveImage"].output_node


def test_extensions_are_listed_as_comfyui_lists_them(comfyui_answers, monkeypatch):
    """The snapshot's web folders (the custom nodes' WEB_DIRECTORY) and the front's /extensions, against ComfyUI's."""
    from comfybento.front import editor
    from comfybento.runtime.registry import extension_web_dirs

    web_dirs = extension_web_dirs()
    assert "comfybento_web_test" in web_dirs  # tests/custom_nodes/comfybento_web_test: WEB_DIRECTORY = "./js"
    monkeypatch.setattr(editor, "loaded_web_dirs", lambda settings: {name: Path(d) for name, d in web_dirs.items()})
    assert sorted(editor.extension_scripts()) == sorted(comfyui_answers["extensions"])
    assert "/extensions/comfybento_web_test/test_extension.js" in comfyui_answers["extensions"]
