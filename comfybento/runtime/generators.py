"""The models.lock `generator:` sources: each name and the function that writes that file.

They build their weights with ComfyUI's own model classes, so they live here; models/fetch.py,
below the runtime, is given this table by its callers (the engine, `python -m comfybento models fetch`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path


def model_generators() -> dict[str, Callable[[Path], None]]:
    """Generator name -> writer of the file at a path (ComfyUI is imported when one runs, after bootstrap)."""
    from comfybento.runtime import full_size_models, tiny_extras, tiny_model

    return {
        "tiny-sd": tiny_model.generate_tiny_checkpoint,
        "tiny-upscale": tiny_extras.generate_tiny_upscaler,
        "tiny-lora": tiny_extras.generate_tiny_lora,
        "tiny-controlnet": tiny_extras.generate_tiny_controlnet,
        # the same tiny architecture with other weights: a second checkpoint to choose per request in tests
        "tiny-sd-alt": partial(tiny_model.generate_tiny_checkpoint, seed=tiny_model.TINY_SEED + 1),
        "sd15-random": full_size_models.generate_sd15_checkpoint,
        "sdxl-random": full_size_models.generate_sdxl_checkpoint,
    }
