"""Which resources the engine service asks BentoML for."""

from __future__ import annotations

import os
from typing import Any


def engine_resources() -> dict[str, Any]:
    """One GPU per engine worker when building for, or running on, a GPU; nothing on a CPU host.

    COMFYBENTO_GPU=1 forces the GPU request (bentoml build on a CPU machine for
    a GPU deployment); COMFYBENTO_GPU=0 forces none.
    """
    forced = os.environ.get("COMFYBENTO_GPU", "").strip()
    if forced in ("0", "1"):
        return {"gpu": 1} if forced == "1" else {}
    import torch

    return {"gpu": 1} if torch.cuda.is_available() else {}
