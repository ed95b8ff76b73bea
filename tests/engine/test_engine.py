"""The real ComfyUI executor on the CPU with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from comfybento.config import Settings
from comfybento.outputs.encoding import b64, png_bytes
from comfybento.serving.engine import Engine
from comfybento.serving.messages import EngineItem
from comfybento.serving.project import load_project
from tests.helpers import make_workflows_dir, png_array, sample_image, service_env

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    env = service_env(make_workflows_dir(root / "workflows"), root / "work")
    engine = Engine(load_project(Settings.from_env(env)))
    engine.start()
    return engine


def _run(engine, workflow, **values):
    seed = values.pop("seed", None)
    return engine.run(workflow, [EngineItem(values=values, seed=seed)])[0]


def test_real_registry_types_the_demo_workflow(engine):
    params = {p.name: p for p in engine.catalog["txt2img"].params}
    assert "euler" in params["sampler_name"].choices and "karras" in params["scheduler"].choices
    assert params["steps"].minimum == 1 and params["cfg"].maximum == 100.0
    assert engine.catalog["txt2img"].batch_plan is not None


def test_same_seed_same_image_other_seed_other_image(engine):
    a = _run(engine, "txt2img", prompt="a red car", seed=123, width=64, height=96, steps=4)
    b = _run(engine, "txt2img", prompt="a red car", seed=123, width=64, height=96, steps=4)
    c = _run(engine, "txt2img", prompt="a red car", seed=124, width=64, height=96, steps=4)
    assert a.ok and b.ok and c.ok
    img_a, img_b, img_c = (png_array(r.images[0].png) for r in (a, b, c))
    assert img_a.shape == (96, 64, 3)
    assert np.array_equal(img_a, img_b)
    assert np.abs(img_a - img_c).mean() > 5
    assert img_a.std() > 5  # not a constant colour


def test_batched_items_match_their_solo_images(engine):
    items = [
        EngineItem(values={"prompt": "a cat", "width": 64, "height": 64, "steps": 4}, seed=1),
        EngineItem(values={"prompt": "a dog", "negative_prompt": "blur", "width": 64, "height": 64, "steps": 4}, seed=2),
        EngineItem(values={"prompt": "a cat", "width": 64, "height": 96, "steps": 4}, seed=3),
        EngineItem(values={"prompt": "an owl", "width": 64, "height": 64, "steps": 4}, seed=4),
        EngineItem(values={"prompt": "a fox", "width": 64, "height": 96, "steps": 4, "batch_size": 2}, seed=5),
        EngineItem(values={"prompt": "a fox", "width": 64, "height": 96, "steps": 4, "batch_size": 2}, seed=6),
        EngineItem(values={"prompt": "a bee", "width": 64, "height": 64, "steps": 4, "sampler_name": "euler_ancestral"}, seed=7),
    ]
    batch = engine.run("txt2img", items)
    assert [r.batch_size for r in batch] == [3, 3, 1, 3, 2, 2, 1]
    for item, together in zip(items, batch, strict=True):
        alone = engine.run("txt2img", [item])[0]
        assert together.ok and alone.ok and together.seed == alone.seed == item.seed
        assert len(together.images) == len(alone.images) == item.values.get("batch_size", 1)
        for x, y in zip(together.images, alone.images, strict=True):
            assert (x.width, x.height) == (y.width, y.height)
            assert np.abs(png_array(x.png) - png_array(y.png)).max() <= 2


def test_two_named_outputs(engine):
    result = _run(engine, "two_outputs", seed=9)
    assert result.ok
    assert [(i.output, i.node_id) for i in result.images] == [("original", "301"), ("inverted", "302")]
    original, inverted = (png_array(i.png) for i in result.images)
    assert np.abs((255 - original) - inverted).max() <= 1


def test_img2img_uses_the_uploaded_image(engine):
    bright = b64(png_bytes(sample_image(64, 64)))
    inverted = b64(png_bytes(sample_image(64, 64).point(lambda v: 255 - v)))
    a = _run(engine, "img2img", image=bright, seed=5, denoise=0.1)
    b = _run(engine, "img2img", image=inverted, seed=5, denoise=0.1)
    again = _run(engine, "img2img", image=bright, seed=5, denoise=0.1)
    assert a.ok and b.ok and (a.images[0].width, a.images[0].height) == (64, 64)
    assert np.abs(png_array(a.images[0].png) - png_array(b.images[0].png)).mean() > 3
    assert np.array_equal(png_array(a.images[0].png), png_array(again.images[0].png))
    bad = _run(engine, "img2img", image="not base64!!", seed=5)
    assert not bad.ok and bad.status == 422 and "image" in bad.error


def test_comfy_pack_graph_runs_with_our_nodes(engine):
    result = _run(engine, "cpack", subject="a castle", steps=2)
    assert result.ok and [i.output for i in result.images] == ["image"]


def test_node_failure_names_the_node_and_the_engine_goes_on(engine):
    failed = _run(engine, "failing", trigger="boom now", seed=1)
    assert not failed.ok and failed.error_kind == "node" and failed.status == 500
    assert failed.node_id == "10" and failed.class_type == "RaiseOnText"
    assert "node 10 (RaiseOnText)" in failed.error and "asked to fail" in failed.error
    assert _run(engine, "failing", trigger="fine", seed=1).ok
    assert _run(engine, "txt2img", seed=1, width=64, height=64, steps=2).ok


def test_out_of_memory_splits_the_batch_and_remembers_what_fits(engine, monkeypatch):
    """A device OOM (simulated above 2 images: there is no GPU here) inside ComfyUI's real executor."""
    import comfy.sample
    import torch

    real_sample = comfy.sample.sample
    sizes: list[int] = []

    def limited(model, noise, *args, **kwargs):
        sizes.append(noise.shape[0])
        if noise.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real_sample(model, noise, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", limited)
    items = [EngineItem(values={"prompt": f"oom {i}", "width": 64, "height": 64, "steps": 2}, seed=i) for i in range(5)]
    results = engine.run("txt2img", items)
    assert all(r.ok for r in results) and [r.seed for r in results] == [0, 1, 2, 3, 4]
    assert sizes == [5, 2, 3, 1, 2]
    key = next(iter(engine.batcher._fits))
    assert engine.batcher.largest_fit(key) == 2
    sizes.clear()
    assert all(r.ok for r in engine.run("txt2img", items))
    assert sizes == [2, 2, 1]  # the remembered fit is used straight away
    monkeypatch.setattr(comfy.sample, "sample", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    alone = engine.run("txt2img", [EngineItem(values={"prompt": "x", "width": 64, "height": 64, "steps": 2}, seed=1)])[0]
    assert not alone.ok and alone.error_kind == "oom" and alone.status == 503
