"""`python -m comfybento import PACK.cpack.zip`: real zips in both snapshot formats, and broken ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from comfybento.models.lock import parse_lock
from comfybento.packs.importer import ProjectPaths, endpoint_name, import_pack
from comfybento.packs.nodes import PinnedNode, parse_manifest
from comfybento.packs.reader import PackError, lock_source, read_pack
from tests.cpack_example import servable_example
from tests.cpack_packs import HF_SOURCE, TINY, model, new_snapshot, old_snapshot, write_pack
from tests.helpers import GRAPHS, ROOT

NODE = ("https://github.com/someone/ComfyUI-Extra.git", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
LORA = model("models/loras/style.safetensors", sha256="b" * 64, size=1234)
IMG2IMG = json.loads((GRAPHS / "img2img.json").read_text())


@pytest.fixture
def project(tmp_path: Path) -> ProjectPaths:
    root = tmp_path / "project"
    (root / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / "models.lock", root / "models.lock")
    return ProjectPaths(root / "workflows", root / "models.lock", root / "custom_nodes", root / "inputs")


def _lock(project: ProjectPaths) -> dict[str, dict[str, object]]:
    return {e.path: {"size": e.size, "sha256": e.sha256, "source": e.source} for e in parse_lock(project.models_lock).entries}


def test_a_new_format_pack_writes_workflow_lock_entries_inputs_and_pinned_nodes(tmp_path, project):
    pack = write_pack(tmp_path / "Pixel Art-v2.cpack.zip", servable_example(), new_snapshot([model(), LORA], [NODE]),
                      inputs={"example.png": b"\x89PNG-one", "masks/m.png": b"mask"})
    result = import_pack(pack, project)
    assert result.name == "pixel_art_v2" and result.workflow == project.workflows_dir / "pixel_art_v2.json"
    assert json.loads(result.workflow.read_text()) == servable_example()
    lock = _lock(project)
    assert lock["checkpoints/tiny-sd.safetensors"]["source"] == {"generator": "tiny-sd"}  # same path and sha: kept as it was
    assert lock["loras/style.safetensors"] == {"size": 1234, "sha256": "b" * 64, "source": {
        "hf": "someone/tiny-models", "revision": HF_SOURCE["commit"], "file": "sd/tiny-sd.safetensors"}}
    assert (result.models_added, result.models_kept) == (["loras/style.safetensors"], ["checkpoints/tiny-sd.safetensors"])
    assert parse_manifest(project.custom_nodes_dir / "nodes.lock") == (PinnedNode("ComfyUI-Extra", *NODE),)
    assert (project.inputs_dir / "example.png").read_bytes() == b"\x89PNG-one"
    assert (project.inputs_dir / "masks" / "m.png").read_bytes() == b"mask"
    notes = "\n".join(result.notes)
    assert "ComfyUI-Manager: left out" in notes and "comfy-pack: left out" in notes and "websocket_image_save.py" in notes
    assert "2 Python packages" in notes


def test_an_old_format_pack_is_imported_from_custom_nodes_and_requirements(tmp_path, project):
    pack = write_pack(tmp_path / "legacy.cpack.zip", IMG2IMG, old_snapshot([model()], [NODE]), inputs={"example.png": b"img"}, old=True)
    info = read_pack(pack)
    assert info.snapshot_format == "comfy-pack < 0.4" and info.pips == ("numpy==2.4.6", "pillow==13.0.0")
    result = import_pack(pack, project)
    assert result.name == "legacy" and result.nodes_added == ["ComfyUI-Extra"] and result.inputs_written == ["example.png"]
    assert list(_lock(project)) == ["checkpoints/tiny-sd.safetensors"]


def test_importing_the_same_pack_again_needs_force_and_keeps_everything_alike(tmp_path, project):
    pack = write_pack(tmp_path / "p.cpack.zip", IMG2IMG, new_snapshot([model(), LORA], [NODE]), inputs={"example.png": b"img"})
    import_pack(pack, project)
    lock_text = project.models_lock.read_text()
    with pytest.raises(PackError, match=r"p\.json exists; pass --force"):
        import_pack(pack, project)
    again = import_pack(pack, project, force=True)
    assert again.models_added == [] and again.nodes_kept == ["ComfyUI-Extra"] and again.inputs_kept == ["example.png"]
    assert project.models_lock.read_text() == lock_text
    other = import_pack(pack, project, name="second")
    assert other.workflow.name == "second.json"


def test_conflicts_are_refused_and_nothing_is_written(tmp_path, project):
    other_tiny = model(sha256="c" * 64)
    pack = write_pack(tmp_path / "clash.cpack.zip", IMG2IMG, new_snapshot([other_tiny], []), inputs={"example.png": b"x"})
    with pytest.raises(PackError, match=r"checkpoints/tiny-sd\.safetensors is in models\.lock with sha256 c553.*the pack's has sha256 c{64}"):
        import_pack(pack, project)
    assert not (project.workflows_dir / "clash.json").exists() and not project.inputs_dir.exists()
    first = write_pack(tmp_path / "a.cpack.zip", IMG2IMG, new_snapshot([model()], [NODE]), inputs={"example.png": b"one"})
    import_pack(first, project)
    moved = write_pack(tmp_path / "b.cpack.zip", IMG2IMG, new_snapshot([model()], [(NODE[0], "b" * 40)]))
    with pytest.raises(PackError, match=r"ComfyUI-Extra: nodes.lock pins .* at a{40}, the pack .* at b{40}"):
        import_pack(moved, project)
    other_input = write_pack(tmp_path / "c.cpack.zip", IMG2IMG, new_snapshot([model()], []), inputs={"example.png": b"two"})
    with pytest.raises(PackError, match=r"input/example\.png would replace .*; pass --force"):
        import_pack(other_input, project)
    assert (project.inputs_dir / "example.png").read_bytes() == b"one"
    assert import_pack(other_input, project, force=True).inputs_written == ["example.png"]


@pytest.mark.parametrize(("workflow", "snapshot", "message"), [
    (None, new_snapshot([model()], []), "no workflow_api.json in the pack"),
    (IMG2IMG, None, "no snapshot.json in the pack"),
    ({"last_node_id": 3, "nodes": [], "links": []}, new_snapshot([], []), "workflow_api.json is not in API format: It seems you are"),
    ({"1": {"inputs": {}}}, new_snapshot([], []), "workflow_api.json node 1 needs a class_type"),
    (IMG2IMG, new_snapshot([model(sha256=None)], []), r"models\[0\] \(models/checkpoints/tiny-sd.safetensors\): missing sha256"),
    (IMG2IMG, new_snapshot([model(size=None)], []), "missing size"),
    (IMG2IMG, new_snapshot([model("checkpoints/x.safetensors")], []), "filename must be models/<folder>/<file>"),
    (IMG2IMG, {"python": "3.11", "comfyui": "abc", "models": []}, "neither 'custom_nodes' .* nor 'pips'"),
    (IMG2IMG, {"python": "3.11", "custom_nodes": []}, "has no 'models' list"),
    (IMG2IMG, old_snapshot([], [(NODE[0], "")]), r"custom_nodes\[2\] \(https://github.com/someone/ComfyUI-Extra.git\): no commit"),
    (IMG2IMG, new_snapshot([], [], cnr_custom_nodes={"comfyui-kjnodes": "1.0.5"}), r"\['comfyui-kjnodes@1.0.5'\] come from the Comfy registry"),
    (IMG2IMG, new_snapshot([model("models/loras/l.safetensors", source={}, sha256="d" * 64)], []),
     r"loras/l.safetensors .* has no download source .* --source loras/l.safetensors=https://"),
])
def test_a_broken_pack_is_refused_naming_what_is_missing(tmp_path, project, workflow, snapshot, message):
    pack = write_pack(tmp_path / "broken.cpack.zip", workflow, snapshot)
    with pytest.raises(PackError, match=message):
        import_pack(pack, project)
    assert not (project.workflows_dir / "broken.json").exists()


def test_not_a_zip_and_a_bad_name_are_refused(tmp_path, project):
    bad = tmp_path / "x.cpack.zip"
    bad.write_text("not a zip")
    with pytest.raises(PackError, match="not a readable zip file"):
        import_pack(bad, project)
    pack = write_pack(tmp_path / "ok.cpack.zip", IMG2IMG, new_snapshot([model()], []))
    with pytest.raises(PackError, match="endpoint name 'jobs' is not usable"):
        import_pack(pack, project, name="jobs")


def test_a_model_without_source_takes_the_one_given(tmp_path, project):
    pack = write_pack(tmp_path / "s.cpack.zip", IMG2IMG, new_snapshot([model("models/vae/v.safetensors", source={}, sha256="e" * 64)], []))
    import_pack(pack, project, sources={"vae/v.safetensors": {"url": "https://example.com/v.safetensors"}})
    assert _lock(project)["vae/v.safetensors"]["source"] == {"url": "https://example.com/v.safetensors"}


@pytest.mark.parametrize(("origin", "expected"), [
    (HF_SOURCE, {"hf": "someone/tiny-models", "revision": HF_SOURCE["commit"], "file": "sd/tiny-sd.safetensors"}),
    ({"source": "civitai", "download_url": "https://civitai.com/api/download/models/42", "repo": 7, "commit": 42},
     {"url": "https://civitai.com/api/download/models/42"}),
    ({"source": "huggingface", "repo": "datasets/a/b", "path": "f.bin", "download_url": "https://huggingface.co/datasets/a/b/resolve/x/f.bin"},
     {"url": "https://huggingface.co/datasets/a/b/resolve/x/f.bin"}),
    ({"download_url": "http://insecure.example/f.bin"}, None),
    ({}, None),
])
def test_comfy_pack_sources_map_to_lock_sources(origin, expected):
    assert lock_source(origin) == expected


@pytest.mark.parametrize(("file", "name"), [
    ("simple-pixel-art-generation.cpack.zip", "simple_pixel_art_generation"),
    ("My Flow (2).zip", "my_flow_2"), ("2024 flow.cpack.zip", "pack_2024_flow"), ("---.cpack.zip", "pack"),
])
def test_endpoint_names_from_pack_file_names(file, name):
    assert endpoint_name(Path(file)) == name


def test_the_command_line_imports_and_reports_errors(tmp_path, project):
    pack = write_pack(tmp_path / "cli.cpack.zip", IMG2IMG, new_snapshot([model()], [NODE]), inputs={"example.png": b"img"})
    env = {**os.environ, "COMFYBENTO_WORKFLOWS": str(project.workflows_dir), "COMFYBENTO_MODELS_LOCK": str(project.models_lock),
           "COMFYBENTO_CUSTOM_NODES": str(project.custom_nodes_dir), "COMFYBENTO_INPUTS": str(project.inputs_dir)}
    cmd = [sys.executable, "-m", "comfybento", "import", str(pack)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "POST /cli" in done.stdout and "node         ComfyUI-Extra" in done.stdout and "input        example.png" in done.stdout
    assert tomllib.loads((project.custom_nodes_dir / "nodes.lock").read_text())["nodes"][0]["commit"] == NODE[1]
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "cli.json exists; pass --force" in again.stderr
    bad = subprocess.run([*cmd, "--source", "vae/x=http://a"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected MODEL_PATH=https://URL" in bad.stderr
    assert TINY["sha256"] in project.models_lock.read_text()


def test_an_input_file_the_workflow_names_but_the_pack_lacks_is_reported(tmp_path, project):
    pack = write_pack(tmp_path / "n.cpack.zip", IMG2IMG, new_snapshot([model()], []))
    result = import_pack(pack, project)
    assert "the workflow names input files the pack does not carry: ['example.png']" in result.notes
    assert result.inputs_written == [] and not project.inputs_dir.exists()
