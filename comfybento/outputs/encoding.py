"""Image tensors <-> PNG bytes."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def to_pil(image: Any) -> Image.Image:
    """A ComfyUI IMAGE item (H, W, C float in [0, 1]) as an 8-bit RGB(A) PIL image."""
    array = np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip(array * 255.0, 0, 255).astype(np.uint8))


def png_bytes(image: Image.Image, compress_level: int = 4) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_b64(data: str) -> bytes:
    return base64.b64decode(data.encode("ascii"), validate=True)


def normalize_upload(image: Image.Image) -> bytes:
    """An uploaded image as PNG bytes, keeping alpha (LoadImage turns alpha into a mask)."""
    mode = "RGBA" if "A" in image.getbands() else "RGB"
    return png_bytes(image.convert(mode), compress_level=1)
