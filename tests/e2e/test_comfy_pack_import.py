"""A comfy-pack pack imported, its pinned custom node installed as scripts/setup does, then served over HTTP.

The pack pins a custom node in a local git repository at its first commit (which inverts the image; the
branch head passes it through), and its workflow loads the pack's input/example.png with LoadImage
(hidden by the project's sidecar). The response is the pack's picture inverted: the import, the
installer, the node from the pinned commit and the pack's input file all took part.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from comfybento.outputs.encoding import png_bytes
from comfybento.packs.importer import ProjectPaths, import_pack
from tests.cpack_packs import new_snapshot, node_repo, write_pack
from tests.e2e.conftest import serving
from tests.helpers import ROOT, png_array, sample_image, service_env

pytestmark = pytest.mark.e2e

NODE_CODE = '''class PackedInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"image": ("IMAGE",)}}}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "comfybento-tests"

    def run(self, image):
        return ({result},)


NODE_CLASS_MAPPINGS = {{"PackedInvert": PackedInvert}}
'''
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Load Image"}},
    "2": {"class_type": "PackedInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "packed"}, "_meta": {"title": "result"}},
}
PICTURE = sample_image(40, 24)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cpack_import_serve")
    url, (pinned, _head) = node_repo(root / "remote", "ComfyUI-Packed",
                                     (NODE_CODE.format(result="1.0 - image"), NODE_CODE.format(result="image")))
    pack = write_pack(root / "packed-invert.cpack.zip", WORKFLOW, new_snapshot([], [(url, pinned)]),
                      inputs={"example.png": png_bytes(PICTURE)})
    paths = ProjectPaths(root / "workflows", root / "models.lock", root / "custom_nodes", root / "inputs")
    (root / "models.lock").write_text((ROOT / "models.lock").read_text())
    assert import_pack(pack, paths).nodes_added == ["ComfyUI-Packed"]
    (paths.workflows_dir / "packed_invert.yaml").write_text('params:\n  - {node: "1", input: image, hide: true}\n')
    env = {**service_env(paths.workflows_dir, root / "work"), "COMFYBENTO_CUSTOM_NODES": str(paths.custom_nodes_dir),
           "COMFYBENTO_MODELS_LOCK": str(paths.models_lock), "COMFYBENTO_INPUTS": str(paths.inputs_dir)}
    setup = subprocess.run([sys.executable, "-m", "comfybento", "nodes", "install"], cwd=ROOT, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=120)  # scripts/setup's step
    assert setup.returncode == 0 and setup.stdout.split() == ["installed", "ComfyUI-Packed"], setup.stderr
    with serving(env, root) as base:
        yield base


def test_the_imported_pack_serves_with_its_pinned_node_and_its_input_file(server):
    resp = httpx.post(f"{server}/packed_invert", json={}, timeout=120)
    assert resp.status_code == 200, resp.text
    out = png_array(resp.json()["outputs"][0]["data"])
    expected = 255 - np.asarray(PICTURE).astype(np.int16)
    assert out.shape == expected.shape and np.abs(out - expected).max() <= 1


def test_the_endpoint_takes_no_image_field(server):
    schemas = httpx.get(f"{server}/docs.json").json()["components"]["schemas"]
    props = next(v for k, v in schemas.items() if k.startswith("PackedInvertInput")).get("properties", {})
    assert "image" not in props
