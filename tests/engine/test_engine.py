"""The real ComfyUI executor on the CPU with the tiny model, behind the real scheduler."""

from __future__ import annotations

import io
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from comfybento.config import Settings
from comfybento.engine.collect import Collector
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.errors import Cancelled
from comfybento.outputs.encoding import png_bytes
from comfybento.scheduling.events import Done, Failed, OutputReady, Progress, Queued, Started
from comfybento.workflows.project import load_project
from tests.helpers import make_workflows_dir, png_array, sample_image, service_env

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    settings = Settings.from_env(service_env(make_workflows_dir(root / "workflows"), root / "work"))
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=10)


def _run(engine, workflow, **values):
    seed = values.pop("seed", None)
    fmt = values.pop("output_format", None)
    return engine.run(workflow, [EngineItem(values=values, seed=seed, output_format=fmt)], timeout=120)[0]


@contextmanager
def executor_busy(engine):
    """Keep the executor busy with a slow request, so what is submitted meanwhile forms batches."""
    blocker = Collector()
    engine.submit("txt2img", EngineItem(values={"prompt": "blocker", "width": 128, "height": 128, "steps": 40}, seed=1), blocker)
    deadline = time.monotonic() + 30
    while not any(isinstance(e, Started) for e in blocker.events):
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.005)
    yield
    assert blocker.wait(120).ok


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
    img_a, img_b, img_c = (png_array(r.outputs[0].data) for r in (a, b, c))
    assert img_a.shape == (96, 64, 3)
    assert np.array_equal(img_a, img_b)
    assert np.abs(img_a - img_c).mean() > 5
    assert img_a.std() > 5  # not a constant colour


def test_an_idle_engine_runs_a_request_at_once_and_reports_every_event(engine):
    collector = Collector()
    engine.submit("txt2img", EngineItem(values={"prompt": "a kite", "width": 64, "height": 64, "steps": 3}, seed=2), collector)
    result = collector.wait(60)
    assert result.ok and result.batch_size == 1 and result.queue_ms < 100  # no batching window when idle
    kinds = [type(e) for e in collector.events]
    assert kinds[0] is Queued and kinds[1] is Started and kinds[-1] is Done
    steps = [e for e in collector.events if isinstance(e, Progress)]
    assert [(s.value, s.max) for s in steps] == [(1, 3), (2, 3), (3, 3)]
    assert {s.node_id for s in steps} == {"3"}  # the KSampler of workflows/txt2img.json
    assert kinds.index(OutputReady) > max(i for i, k in enumerate(kinds) if k is Progress)


def test_a_merged_batch_reports_progress_under_the_workflows_node_id(engine):
    collectors = [Collector(), Collector()]
    with executor_busy(engine):
        for seed, collector in enumerate(collectors):
            engine.submit("txt2img", EngineItem(values={"prompt": "a kite", "width": 64, "height": 64, "steps": 2}, seed=seed), collector)
        results = [c.wait(120) for c in collectors]
    assert [r.batch_size for r in results] == [2, 2] and all(r.ok for r in results)
    for collector in collectors:
        steps = [e for e in collector.events if isinstance(e, Progress)]
        assert steps and {s.node_id for s in steps} == {"3"}


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
    with executor_busy(engine):
        batch = engine.run("txt2img", items, timeout=120)
    assert [r.batch_size for r in batch] == [3, 3, 1, 3, 2, 2, 1]
    for item, together in zip(items, batch, strict=True):
        alone = engine.run("txt2img", [item], timeout=120)[0]
        assert together.ok and alone.ok and together.seed == alone.seed == item.seed
        assert alone.batch_size == 1
        assert len(together.outputs) == len(alone.outputs) == item.values.get("batch_size", 1)
        for x, y in zip(together.outputs, alone.outputs, strict=True):
            assert (x.width, x.height) == (y.width, y.height)
            assert np.abs(png_array(x.data) - png_array(y.data)).max() <= 2


def test_prompts_of_different_token_lengths_never_share_a_batch(engine):
    spec = engine.catalog["txt2img"]
    short, short2 = "a red fox", "a blue whale in the sea"
    long_ = ", ".join(["a very detailed painting of a lighthouse on a cliff at dusk"] * 20)  # > 2 chunks of 77 tokens

    def key(prompt):
        return engine._prepare(spec, EngineItem(values={"prompt": prompt, "width": 64, "height": 64, "steps": 2}, seed=1))[1]

    assert key(short) == key(short2) != key(long_)
    items = [EngineItem(values={"prompt": p, "width": 64, "height": 64, "steps": 2}, seed=i) for i, p in enumerate((short, long_, short2))]
    with executor_busy(engine):
        results = engine.run("txt2img", items, timeout=120)
    assert [r.batch_size for r in results] == [2, 1, 2] and all(r.ok for r in results)


@pytest.mark.parametrize(("fmt", "media", "pil"), [("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP"), ("jpeg", "image/jpeg", "JPEG")])
def test_output_formats(engine, fmt, media, pil):
    result = _run(engine, "txt2img", prompt="a boat", seed=3, width=64, height=64, steps=2, output_format=fmt)
    assert result.ok and result.outputs[0].media_type == media
    image = Image.open(io.BytesIO(result.outputs[0].data))
    assert image.format == pil and image.size == (64, 64)


def test_two_named_outputs(engine):
    result = _run(engine, "two_outputs", seed=9)
    assert result.ok
    assert [(o.output, o.node_id) for o in result.outputs] == [("original", "301"), ("inverted", "302")]
    original, inverted = (png_array(o.data) for o in result.outputs)
    assert np.abs((255 - original) - inverted).max() <= 1


def test_img2img_uses_the_uploaded_image(engine):
    bright = png_bytes(sample_image(64, 64))
    inverted = png_bytes(sample_image(64, 64).point(lambda v: 255 - v))
    a = _run(engine, "img2img", image=bright, seed=5, denoise=0.1)
    b = _run(engine, "img2img", image=inverted, seed=5, denoise=0.1)
    again = _run(engine, "img2img", image=bright, seed=5, denoise=0.1)
    assert a.ok and b.ok and (a.outputs[0].width, a.outputs[0].height) == (64, 64)
    assert np.abs(png_array(a.outputs[0].data) - png_array(b.outputs[0].data)).mean() > 3
    assert np.array_equal(png_array(a.outputs[0].data), png_array(again.outputs[0].data))
    bad = _run(engine, "img2img", image="not base64!!", seed=5)
    assert not bad.ok and bad.status == 422 and "image" in bad.error
    assert not list(engine.input_dir.glob("cb_*"))  # uploads are deleted once their request is done


def test_comfy_pack_graph_runs_with_our_nodes(engine):
    result = _run(engine, "cpack", subject="a castle", steps=2)
    assert result.ok and [o.output for o in result.outputs] == ["image"]


def test_node_failure_names_the_node_and_the_engine_goes_on(engine):
    failed = _run(engine, "failing", trigger="boom now", seed=1)
    assert not failed.ok and failed.error_kind == "node" and failed.status == 500
    assert failed.node_id == "10" and failed.class_type == "RaiseOnText"
    assert "node 10 (RaiseOnText)" in failed.error and "asked to fail" in failed.error
    assert _run(engine, "failing", trigger="fine", seed=1).ok
    assert _run(engine, "txt2img", seed=1, width=64, height=64, steps=2).ok


def test_a_queued_request_whose_caller_left_is_dropped(engine):
    collector = Collector()
    with executor_busy(engine):
        job = engine.submit("img2img", EngineItem(values={"image": png_bytes(sample_image(64, 64))}, seed=1), collector)
        assert list(engine.input_dir.glob("cb_*"))
        engine.cancel(job)
    result = collector.wait(10)
    assert not result.ok and result.error_kind == "cancelled"
    assert isinstance(collector.events[-1], Failed) and isinstance(collector.events[-1].error, Cancelled)
    assert not any(isinstance(e, Started) for e in collector.events)
    assert not list(engine.input_dir.glob("cb_*"))


def test_the_executor_does_not_idle_while_requests_wait(engine):
    before = engine.stats()
    items = [EngineItem(values={"prompt": f"load {i}", "width": 128, "height": 128, "steps": 6}, seed=i) for i in range(12)]
    with executor_busy(engine):  # all twelve queue up behind a running batch: sustained load
        results = engine.run("txt2img", items, timeout=120)
    assert all(r.ok for r in results)
    after = engine.stats()
    queued = after.queued_s - before.queued_s
    idle = after.idle_with_work_s - before.idle_with_work_s
    assert queued > 0.05 and idle < 0.1 * queued, (idle, queued)


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

    items = [EngineItem(values={"prompt": f"oom {i}", "width": 64, "height": 64, "steps": 2}, seed=i) for i in range(5)]
    monkeypatch.setattr(comfy.sample, "sample", limited)
    with executor_busy(engine):
        results = engine.run("txt2img", items, timeout=120)
    assert all(r.ok for r in results) and [r.seed for r in results] == [0, 1, 2, 3, 4]
    assert sizes == [1, 5, 2, 3, 1, 2]  # the blocker, then the batch of 5 and its halves
    key = engine._prepare(engine.catalog["txt2img"], items[0])[1]
    assert engine.scheduler.largest_fit(key) == 2
    sizes.clear()
    with executor_busy(engine):
        assert all(r.ok for r in engine.run("txt2img", items, timeout=120))
    assert sizes[-3:] == [2, 2, 1]  # the remembered fit is used straight away
    monkeypatch.setattr(comfy.sample, "sample", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    alone = _run(engine, "txt2img", prompt="x", width=64, height=64, steps=2, seed=1)
    assert not alone.ok and alone.error_kind == "too_large" and alone.status == 413 and "even alone" in alone.error


def test_an_execution_over_its_budget_is_interrupted_with_a_413_naming_the_limit(engine):
    """COMFYBENTO_MAX_EXECUTION_S: one heavy request cannot hold the engine; it fails alone, the next one runs."""
    engine.max_execution_s = 1
    try:
        started = time.monotonic()
        slow = _run(engine, "txt2img", prompt="slow", width=128, height=128, steps=150, seed=3)
        took = time.monotonic() - started
    finally:
        engine.max_execution_s = engine.settings.max_execution_s
    assert not slow.ok and slow.status == 413 and slow.error_kind == "too_large"
    assert "COMFYBENTO_MAX_EXECUTION_S" in (slow.error or "") and took < 30
    assert _run(engine, "txt2img", prompt="next", width=64, height=64, steps=2, seed=4).ok
