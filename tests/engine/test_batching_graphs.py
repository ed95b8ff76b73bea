"""Multi-node graphs batched across requests on the real ComfyUI (CPU, tiny model): each item equals its solo run."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from comfybento.config import Settings
from comfybento.engine.collect import Collector
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.outputs.encoding import png_bytes
from comfybento.scheduling.events import Started
from comfybento.workflows.project import load_project
from tests.helpers import GRAPHS as GRAPHS_DIR
from tests.helpers import ROOT, make_workflows_dir, png_array, sample_image, service_env

pytestmark = pytest.mark.engine

GRAPHS = ("img2img", "ksampler_advanced", "custom_advanced", "hires_fix", "inpaint", "inpaint_noise_mask", "lora_batch", "controlnet_hint")
TOLERANCE = 2  # of 255, the bound for batched vs solo on the CPU
BLOCKER = EngineItem(values={"prompt": "blocker", "width": 64, "height": 64, "steps": 12}, seed=1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An engine serving the batching graphs, with the tiny LoRA and ControlNet generated beside the tiny checkpoint."""
    root = tmp_path_factory.mktemp("batching")
    models = _models_with_companions(root / "models")
    env = service_env(make_workflows_dir(root / "workflows", GRAPHS), root / "work")
    env.update(COMFYBENTO_WARMUP="0", COMFYBENTO_MODELS=str(models), COMFYBENTO_MODELS_LOCK=str(models / "models.lock"))
    env["COMFYBENTO_FETCH_MODELS"] = "1"  # the engine generates the companions once ComfyUI is imported
    engine = Engine(Settings.from_env(env), load_project(Settings.from_env(env)).catalog)
    engine.start()
    import folder_paths  # importable once the engine has bootstrapped ComfyUI

    for folder in ("loras", "controlnet"):  # ComfyUI's folders are set once per process (another test may have done it)
        folder_paths.add_model_folder_path(folder, str(models / folder))
    yield engine
    engine.stop(drain_s=10)


def _models_with_companions(models: Path) -> Path:
    """The tiny checkpoint (linked) and a models.lock that adds the companions of tests/graphs/batch_models.lock."""
    (models / "checkpoints").mkdir(parents=True)
    for path in (ROOT / "models" / "checkpoints").iterdir():
        (models / "checkpoints" / path.name).symlink_to(path)
    lock_text = (ROOT / "models.lock").read_text() + "\n" + (GRAPHS_DIR / "batch_models.lock").read_text()
    (models / "models.lock").write_text(lock_text)
    return models


@contextmanager
def executor_busy(engine: Engine) -> Iterator[None]:
    """Keep the executor busy with a short txt2img run, so what is submitted meanwhile forms one batch."""
    blocker = Collector()
    engine.submit("txt2img", BLOCKER, blocker)
    deadline = time.monotonic() + 60
    while not any(isinstance(e, Started) for e in blocker.events):
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.005)
    yield
    assert blocker.wait(300).ok


def _picture(shade: int) -> bytes:
    """A 64x64 gradient, tinted per request so each request's image differs."""
    rgb = np.asarray(sample_image(64, 64)).astype(np.int16)
    rgb[..., shade % 3] = (rgb[..., shade % 3] + 80 * shade) % 256
    return png_bytes(Image.fromarray(rgb.astype(np.uint8)))


def _hint_picture(index: int) -> bytes:
    """Edge-like control images (white shapes on black), the shapes elsewhere for each request."""
    image = Image.new("RGB", (64, 64))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4 + 16 * index, 8, 24 + 16 * index, 28), fill=(255, 255, 255))
    draw.ellipse((40 - 14 * index, 30, 62 - 14 * index, 56), fill=(128, 128, 128))
    return png_bytes(image)


def _masked_picture(shade: int) -> bytes:
    """An RGBA picture whose transparent square (LoadImage's mask) sits elsewhere for each request."""
    image = Image.open(io.BytesIO(_picture(shade))).convert("RGBA")
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[8 + 8 * shade : 32 + 8 * shade, 8 * shade : 24 + 8 * shade] = 0
    image.putalpha(Image.fromarray(alpha))
    return png_bytes(image)


def _compare(engine: Engine, workflow: str, items: list[EngineItem]) -> int:
    """Run the items as one batch (while the executor is busy), then each alone; the largest pixel difference."""
    with executor_busy(engine):
        together = engine.run(workflow, items, timeout=300)
    assert all(r.ok for r in together), [r.error for r in together]
    assert [r.batch_size for r in together] == [len(items)] * len(items)
    worst = 0
    solos = []
    for item, batched in zip(items, together, strict=True):
        alone = engine.run(workflow, [item], timeout=300)[0]
        assert alone.ok and alone.batch_size == 1, alone.error
        assert len(batched.outputs) == len(alone.outputs) >= 1
        for x, y in zip(batched.outputs, alone.outputs, strict=True):
            assert (x.width, x.height) == (y.width, y.height)
            worst = max(worst, int(np.abs(png_array(x.data) - png_array(y.data)).max()))
        solos.append(png_array(alone.outputs[0].data))
    # Requests must differ by more than the tolerance, so that a batch mixing up its items would fail.
    apart = min(int(np.abs(a - b).max()) for i, a in enumerate(solos) for b in solos[i + 1 :])
    assert apart > TOLERANCE, f"the requests' solo images differ by only {apart}/255"
    print(f"\n{workflow}: batch of {len(items)}, max |batched - solo| = {worst}/255 (solo images {apart}/255 or more apart)")
    return worst


def _items(values: list[dict[str, Any]], seeds: list[int | None]) -> list[EngineItem]:
    return [EngineItem(values=v, seed=s) for v, s in zip(values, seeds, strict=True)]


def test_every_graph_kind_has_a_batch_plan(engine):
    for name in GRAPHS:
        assert engine.catalog[name].batch_plan is not None, f"{name}: {engine.catalog[name].batch_reason}"
    assert engine.catalog["img2img"].batch_plan.image_params == ("image",)


def test_img2img_with_a_different_image_per_request(engine):
    items = _items([{"image": _picture(i), "prompt": p} for i, p in enumerate(("a cat", "a dog", "a cat"))], [1, 2, 3])
    assert _compare(engine, "img2img", items) <= TOLERANCE


def test_images_of_different_sizes_do_not_share_a_batch(engine):
    spec = engine.catalog["img2img"]
    small, large = (EngineItem(values={"image": png_bytes(sample_image(w, 64))}, seed=1) for w in (64, 96))
    prepared = [engine._prepare(spec, item) for item in (small, small, large)]
    for stored, _, _ in prepared:  # prepared directly, never run: delete their stored uploads as a request's end would
        for path in stored.files:
            path.unlink()
    keys = [key for _, key, _ in prepared]
    assert keys[0] == keys[1] != keys[2]


def test_ksampler_advanced_two_stages(engine):
    items = _items([{"prompt": p} for p in ("a cat", "a dog", "an owl")], [11, 12, 13])
    assert _compare(engine, "ksampler_advanced", items) <= TOLERANCE


def test_sampler_custom_advanced(engine):
    items = _items([{"prompt": p, "seed": s} for p, s in (("a cat", 4), ("a dog", 5), ("an owl", 6))], [None] * 3)
    assert _compare(engine, "custom_advanced", items) <= TOLERANCE


def test_hires_fix_with_two_seeds_per_request(engine):
    items = _items([{"prompt": p, "hires_seed": h} for p, h in (("a cat", 7), ("a dog", 8), ("a cat", 9))], [1, 2, 1])
    assert _compare(engine, "hires_fix", items) <= TOLERANCE


@pytest.mark.parametrize("workflow", ["inpaint", "inpaint_noise_mask"])
def test_inpainting_with_a_different_image_and_mask_per_request(engine, workflow):
    items = _items([{"image": _masked_picture(i), "prompt": "a red door"} for i in range(3)], [21, 22, 23])
    assert _compare(engine, workflow, items) <= TOLERANCE


def test_lora_upstream_is_shared_by_the_batch(engine):
    plan = engine.catalog["lora_batch"].batch_plan
    assert plan is not None and not {"10", "11"} & (plan.per_request | plan.batched)
    items = _items([{"prompt": p} for p in ("a cat", "a dog", "an owl")], [31, 32, 33])
    assert _compare(engine, "lora_batch", items) <= TOLERANCE


def test_controlnet_with_a_different_hint_image_per_request(engine):
    plan = engine.catalog["controlnet_hint"].batch_plan
    assert plan is not None and "11" in plan.per_request and "14" in plan.batched
    items = _items([{"image": _hint_picture(i), "prompt": "a lighthouse"} for i in range(3)], [41, 41, 41])
    assert _compare(engine, "controlnet_hint", items) <= TOLERANCE
