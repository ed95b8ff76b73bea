"""Images to PNG / WebP / JPEG bytes, and base64 for the JSON edges. No torch here.

The engine's executor hands over uint8 (H, W, C) arrays; `encode_image` runs in
the engine's encoding pool (Pillow releases the GIL while it compresses), never
on the executor thread.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# format -> (Pillow format name, media type, file extension)
FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
}
EXTENSIONS = {media: ext for _, media, ext in FORMATS.values()}


@dataclass(frozen=True)
class Encoding:
    """How a request's images are encoded: format, quality (WebP/JPEG), PNG compress level."""

    format: str = "png"
    quality: int = 90
    png_compress_level: int = 4

    @property
    def media_type(self) -> str:
        return FORMATS[self.format][1]


def encode_image(pixels: Any, encoding: Encoding) -> bytes:
    """A uint8 (H, W, C) array (C = 1, 3 or 4) as the requested format."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(array)
    pil_format = FORMATS[encoding.format][0]
    options: dict[str, Any] = {}
    if encoding.format == "png":
        options["compress_level"] = encoding.png_compress_level
    else:
        options["quality"] = encoding.quality
        if encoding.format == "jpeg" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format=pil_format, **options)
    return buf.getvalue()


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
