"""Which resources the engine service asks BentoML for. Never imports torch (the arbiter runs this)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfybento.config import Settings, cpu_engine, nvidia_gpu_present
from comfybento.errors import ConfigError


def building_bento() -> bool:
    """Whether this process is `bentoml build` (or bentoml.bentos.build): the service config goes into a Bento."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name in ("create", "build") and "bentoml/_internal/bento/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def engine_resources(settings: Settings) -> dict[str, Any]:
    """One GPU per engine worker: always in a built Bento, and when serving on a GPU host; nothing on a CPU host.

    A Bento is built for a GPU deployment wherever it is built (a CPU laptop, CI).
    COMFYBENTO_GPU=1 / 0 forces the request on / off.
    """
    if settings.gpu is not None:
        return {"gpu": 1} if settings.gpu else {}
    if building_bento():
        return {"gpu": 1}
    return {"gpu": 1} if nvidia_gpu_present() and not settings.force_cpu else {}


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The NVIDIA devices this process may use, as CUDA_VISIBLE_DEVICES names them, seen without initialising CUDA:
    CUDA_VISIBLE_DEVICES's own list when it is set, else 0..N-1 for the driver's N GPUs."""
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    if count == 0 and shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


def engine_devices(settings: Settings, visible: list[str] | None = None, on_cpu: bool | None = None) -> list[str | None]:
    """One entry per engine service to run: the device it is pinned to (its CUDA_VISIBLE_DEVICES), or None for an
    engine on the CPU. COMFYBENTO_GPUS picks them (config.py): all visible GPUs by default (one engine on a CPU host,
    and in a built Bento, whose replicas scale instead), a count of the first ones, or device ids. A ConfigError names
    what is not there."""
    wanted = settings.gpus
    if cpu_engine(dict(os.environ)) if on_cpu is None else on_cpu:
        count = 1 if wanted is None else wanted if isinstance(wanted, int) else len(wanted)
        return [None] * count
    visible = visible_gpus() if visible is None else visible
    if wanted is None:
        return [None] if building_bento() or not visible else list(visible)  # None: BentoML's allocator pins it
    if isinstance(wanted, int):
        if wanted > len(visible):
            raise ConfigError(f"COMFYBENTO_GPUS={wanted}: only {len(visible)} GPU(s) are visible ({', '.join(visible) or 'none'}); "
                              "ask for fewer, or unset it to use every visible GPU")
        return list(visible[:wanted])
    missing = [d for d in wanted if d not in visible]
    if missing:
        raise ConfigError(f"COMFYBENTO_GPUS: device(s) {', '.join(missing)} not visible here (visible: "
                          f"{', '.join(visible) or 'none'}, as CUDA_VISIBLE_DEVICES names them)")
    return list(wanted)


def pin_engines_ourselves(devices: list[str | None]) -> None:
    """Engines pinned by engine_devices(): BentoML's allocator, which hands out GPUs 0, 1, ... in service order
    whatever COMFYBENTO_GPUS says, must leave their CUDA_VISIBLE_DEVICES alone (read by the arbiter, at `serve`)."""
    if any(d is not None for d in devices):
        os.environ.setdefault("BENTOML_DISABLE_GPU_ALLOCATION", "1")
