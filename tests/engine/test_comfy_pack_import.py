"""Imported comfy-pack packs load through load_catalog and run on the real engine (CPU, tiny checkpoint).

Two packs are imported into a fresh project: comfy-pack's own example graph (its checkpoint replaced by our
tiny one, whose lock entry the import keeps), and an img2img graph whose LoadImage default comes from the
pack's input/ (the project's sidecar hides that input, so the pack's image is what runs).
"""

from __future__ import annotations

import json
import shutil

import pytest

from comfybento.config import Settings
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.outputs.encoding import png_bytes
from comfybento.packs.importer import ProjectPaths, import_pack
from comfybento.workflows.project import load_project
from tests.cpack_example import servable_example
from tests.cpack_packs import model, new_snapshot, old_snapshot, write_pack
from tests.helpers import GRAPHS, ROOT, png_array, sample_image, service_env

pytestmark = pytest.mark.engine

PACK_IMAGE = png_bytes(sample_image(48, 80))  # a size no warm-up or default makes


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpack_import")
    paths = ProjectPaths(root / "workflows", root / "models.lock", root / "custom_nodes", root / "inputs")
    shutil.copy(ROOT / "models.lock", paths.models_lock)
    example = write_pack(root / "pixel-art.cpack.zip", servable_example(), new_snapshot([model()], []))
    img2img = write_pack(root / "img2img-pack.cpack.zip", json.loads((GRAPHS / "img2img.json").read_text()),
                         old_snapshot([model()], []), inputs={"example.png": PACK_IMAGE}, old=True)
    assert import_pack(example, paths).models_kept == ["checkpoints/tiny-sd.safetensors"]
    assert import_pack(img2img, paths).inputs_written == ["example.png"]
    (paths.workflows_dir / "img2img_pack.yaml").write_text('params:\n  - {node: "10", input: image, hide: true}\n')
    env = {**service_env(paths.workflows_dir, root / "work"), "COMFYBENTO_MODELS_LOCK": str(paths.models_lock),
           "COMFYBENTO_INPUTS": str(paths.inputs_dir)}
    settings = Settings.from_env(env)
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()  # warms both up with the graphs' own values: the img2img one reads the pack's example.png
    yield engine
    engine.stop(drain_s=10)


def _run(engine, workflow, **values):
    return engine.run(workflow, [EngineItem(values=values, seed=values.pop("seed", 3))], timeout=300)[0]


def test_the_imported_example_pack_serves_with_the_tiny_checkpoint(engine):
    spec = engine.catalog["pixel_art"]
    assert [m.path for m in spec.models] == ["checkpoints/tiny-sd.safetensors"]
    assert [(p.name, p.kind) for p in spec.params] == [("prompt", "string"), ("height", "int"), ("width", "int"), ("seed", "int")]
    result = _run(engine, "pixel_art", prompt="a rose", width=64, height=96)
    assert result.ok, result.error
    assert [(o.output, o.width, o.height) for o in result.outputs] == [("image_output", 64, 96)]


def test_a_load_image_default_from_the_pack_is_read_when_served(engine):
    assert "image" not in [p.input_name for p in engine.catalog["img2img_pack"].params]
    staged = engine.input_dir / "example.png"
    assert staged.read_bytes() == PACK_IMAGE
    result = _run(engine, "img2img_pack")
    assert result.ok, result.error
    assert png_array(result.outputs[0].data).shape == (80, 48, 3)  # the pack's 48x80 picture went through img2img
    staged.unlink()  # without the pack's file ComfyUI has nothing to load: the input really comes from there
    try:
        missing = _run(engine, "img2img_pack")
        assert not missing.ok and "example.png" in str(missing.error)
    finally:
        staged.write_bytes(PACK_IMAGE)
