"""Which resources the engine service asks BentoML for. Never imports torch (the arbiter runs this)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from comfybento.config import Settings


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver with at least one GPU, seen without initialising CUDA."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or shutil.which("nvidia-smi") is not None


def engine_resources(settings: Settings) -> dict[str, Any]:
    """One GPU per engine worker when building for, or running on, a GPU; nothing on a CPU host.

    COMFYBENTO_GPU=1 forces the GPU request (bentoml build on a CPU machine for
    a GPU deployment); COMFYBENTO_GPU=0 forces none.
    """
    if settings.gpu is not None:
        return {"gpu": 1} if settings.gpu else {}
    return {"gpu": 1} if nvidia_gpu_present() and not settings.force_cpu else {}
