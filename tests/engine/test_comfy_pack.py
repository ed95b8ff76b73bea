"""comfy-pack graphs through the real engine on the CPU: comfy-pack's own example, file uploads, typed Any inputs.

The example is comfy-pack's `examples/simple-pixel-art-generation.cpack.zip` workflow (tests/graphs/README.md),
with our tiny checkpoint in place of its own (tests/cpack_example.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from comfybento.config import Settings
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.limits import Limits
from comfybento.outputs.encoding import png_bytes
from comfybento.workflows.binding import resolve_seed
from comfybento.workflows.project import load_project
from tests.cpack_example import write_example
from tests.helpers import make_workflows_dir, png_array, sample_image, service_env

MAX_FILE_BYTES = Limits().max_upload_bytes

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpack_engine")
    workflows = make_workflows_dir(root / "workflows", extra=("cpack_inputs",))
    write_example(workflows)
    settings = Settings.from_env(service_env(workflows, root / "work"))
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()  # warms every workflow up with the graph's own values: a failure fails here
    yield engine
    engine.stop(drain_s=10)


def _run(engine, workflow, seed=None, suffixes=None, **values):
    item = EngineItem(values=values, seed=seed, file_suffixes=suffixes or {})
    return engine.run(workflow, [item], timeout=300)[0]


def test_comfy_pack_example_serves_with_its_seed_and_sizes(engine):
    spec = engine.catalog["cpack_example"]
    assert [(p.name, p.kind, p.role) for p in spec.params] == [
        ("prompt", "string", ""), ("height", "int", ""), ("width", "int", ""), ("seed", "int", "seed")]
    a = _run(engine, "cpack_example", prompt="a rose", width=64, height=96, seed=7)
    b = _run(engine, "cpack_example", prompt="a rose", width=64, height=96, seed=7)
    c = _run(engine, "cpack_example", prompt="a rose", width=64, height=96, seed=8)
    assert a.ok and b.ok and c.ok, (a.error, b.error, c.error)
    assert a.seed == 7 and [(o.output, o.width, o.height) for o in a.outputs] == [("image_output", 64, 96)]
    img_a, img_b, img_c = (png_array(r.outputs[0].data) for r in (a, b, c))
    assert np.array_equal(img_a, img_b) and np.abs(img_a - img_c).mean() > 5


def test_an_omitted_seed_is_drawn_and_returned(engine):
    spec = engine.catalog["cpack_example"]
    seeds = [resolve_seed(spec.params, {}) for _ in range(2)]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]
    result = _run(engine, "cpack_example", width=64, height=64, seed=seeds[0])
    assert result.ok and result.seed == seeds[0]


def test_an_uploaded_file_reaches_the_node_as_a_fresh_path_in_the_input_folder(engine):
    picture = sample_image(64, 64)
    data = png_bytes(picture)
    item = EngineItem(values={"picture": data}, seed=None, file_suffixes={"picture": ".png"})
    prepared, _, _ = engine._prepare(engine.catalog["cpack_inputs"], item)
    try:
        (stored,) = prepared.files
        assert prepared.graph["1"]["inputs"]["path"] == str(stored)
        assert stored.parent == engine.input_dir and stored.name.startswith("cb_") and stored.suffix == ".png"
        assert stored.read_bytes() == data
    finally:
        stored.unlink()
    result = _run(engine, "cpack_inputs", picture=data, scale=0.5, method="area", suffixes={"picture": ".png"})
    assert result.ok, result.error
    out = png_array(result.outputs[0].data)
    assert out.shape == (32, 32, 3)  # the file went through the path loader, ImageInvert and ImageScaleBy(0.5)
    expected = 255 - np.asarray(picture.resize((32, 32), resample=4)).astype(np.int16)  # Pillow's BOX, like "area"
    assert np.abs(out - expected).mean() < 8
    assert not list(engine.input_dir.glob("cb_*"))  # deleted once the request is done


def test_bad_files_are_refused_naming_the_field(engine):
    too_big = _run(engine, "cpack_inputs", picture=b"\0" * (MAX_FILE_BYTES + 1))
    assert not too_big.ok and too_big.status == 413 and "picture" in too_big.error and str(MAX_FILE_BYTES) in too_big.error
    missing = _run(engine, "cpack_inputs")
    assert not missing.ok and missing.status == 422 and "'picture': a file is required" in missing.error
    not_an_image = _run(engine, "cpack_inputs", picture=b"plain text", suffixes={"picture": "/../../x.png"})
    assert not not_an_image.ok and not_an_image.error_kind == "node" and not_an_image.node_id == "2"
    assert not list(engine.input_dir.glob("cb_*")) and not list(engine.input_dir.parent.glob("x.png"))
