"""Which resources the engine service asks BentoML for. Never imports torch (the arbiter runs this)."""

from __future__ import annotations

import sys
from typing import Any

from comfybento.config import Settings, nvidia_gpu_present


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
