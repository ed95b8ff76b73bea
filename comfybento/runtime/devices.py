"""Which resources the engine service asks BentoML for."""

from __future__ import annotations

from typing import Any

from comfybento.config import Settings


def engine_resources(settings: Settings) -> dict[str, Any]:
    """One GPU per engine worker when building for, or running on, a GPU; nothing on a CPU host.

    COMFYBENTO_GPU=1 forces the GPU request (bentoml build on a CPU machine for
    a GPU deployment); COMFYBENTO_GPU=0 forces none.
    """
    if settings.gpu is not None:
        return {"gpu": 1} if settings.gpu else {}
    import torch

    return {"gpu": 1} if torch.cuda.is_available() and not settings.force_cpu else {}
