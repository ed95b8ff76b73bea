"""On a CUDA GPU, with the full-size SD1.5 architecture (random weights): batched == solo, the stock allocator.

Run alone, on a GPU machine (ComfyUI picks its device once per process):

    COMFYBENTO_CPU=0 ./scripts/test tests/engine/test_gpu.py -m gpu

Tolerance: batched and solo images of one request must agree to PSNR >= 40 dB.
A batch changes the order of floating-point reductions in cuDNN/cuBLAS kernels,
so bit-equality is not expected on CUDA; the issue measured up to 4/255 on
an H100 with this model, which is above 45 dB for these images. No GPU was
available to the session that wrote this test, so 40 dB is the issue's
suggested bound, not a value measured here.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from comfybento.config import Settings
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.workflows.project import load_project
from tests.helpers import ROOT, png_array, service_env

pytestmark = [pytest.mark.gpu, pytest.mark.engine]
MIN_PSNR_DB = 40.0


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory):
    if os.environ.get("COMFYBENTO_CPU", "0") == "1" or not _cuda():
        pytest.skip("needs a CUDA GPU and COMFYBENTO_CPU=0")
    from comfybento.runtime import bootstrap as boot

    if boot._runtime is not None and boot._runtime.device == "cpu":
        pytest.skip("ComfyUI was already bootstrapped on the CPU in this process: run the gpu tests alone (-m gpu)")
    root = tmp_path_factory.mktemp("gpu")
    workflows = root / "workflows"
    workflows.mkdir()
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = "sd15-random.safetensors"
    (workflows / "txt2img.json").write_text(json.dumps(graph))
    env = {**service_env(workflows, root / "work"), "COMFYBENTO_CPU": "0", "COMFYBENTO_FETCH_MODELS": "1",
           "COMFYBENTO_MODELS_LOCK": str(ROOT / "bench" / "models.gpu.lock"), "COMFYBENTO_MAX_BATCH_SIZE": "8"}
    settings = Settings.from_env(env)
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=30)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_the_stock_cuda_allocator_is_used(gpu_engine):
    import torch

    assert "cudaMallocAsync" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    assert torch.cuda.get_allocator_backend() == "cudaMallocAsync"


def test_device_memory_reports_the_cuda_device(gpu_engine):
    import torch

    device, used, total = gpu_engine.executor.device_memory()  # what comfybento_gpu_memory_*_bytes export
    assert device == f"cuda:{torch.cuda.current_device()}"
    assert total == torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    assert 0 < used <= total  # the preloaded model is in there


def test_batched_images_match_solo_images_on_cuda(gpu_engine):
    from tests.engine.test_engine import executor_busy

    items = [EngineItem(values={"prompt": f"a photo of object {i}", "width": 512, "height": 512, "steps": 20}, seed=100 + i)
             for i in range(8)]
    with executor_busy(gpu_engine):
        together = gpu_engine.run("txt2img", items, timeout=600)
    assert all(r.ok for r in together) and max(r.batch_size for r in together) > 1
    for item, batched in zip(items, together, strict=True):
        alone = gpu_engine.run("txt2img", [item], timeout=600)[0]
        a, b = png_array(batched.outputs[0].data), png_array(alone.outputs[0].data)
        value = psnr(a, b)
        print(f"seed {item.seed}: batch {batched.batch_size}, max |diff| {np.abs(a - b).max()}, PSNR {value:.1f} dB")
        assert value >= MIN_PSNR_DB
