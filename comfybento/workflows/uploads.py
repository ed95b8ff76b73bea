"""Uploaded images, checked before the engine sees them.

The header is read first (Pillow opens lazily): format, size and frames are
checked against the limits while the upload is still a few bytes of header,
so a 20 KB PNG that claims 13000 x 13000 pixels is refused without decoding
it. Only then is it decoded once, with bounded memory, to catch truncated or
corrupt data here (a 422) rather than inside the graph (a node error).
"""

from __future__ import annotations

import binascii
import io
import warnings
from pathlib import Path

from PIL import Image

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.outputs.encoding import decode_b64
from comfybento.workflows.limits import Limits

# Formats ComfyUI's LoadImage reads and we accept.
FORMATS = ("PNG", "JPEG", "WEBP")


def read_upload(field: str, source: Path | bytes | str | None, limits: Limits) -> bytes:
    """The bytes of an uploaded image (a file the endpoint stored, raw bytes, or base64 from a job item), checked."""
    if source is None:
        raise InvalidRequest(f"{field}: an image is required")
    data = read_file(field, source, limits)
    check_image(field, data, limits)
    return data


def read_file(field: str, source: Path | bytes | str, limits: Limits) -> bytes:
    """The bytes of any uploaded file (images and comfy-pack files), within max_upload_bytes; base64 is decoded."""
    if isinstance(source, Path):
        _check_size(field, source.stat().st_size, limits)
        data = source.read_bytes()
    elif isinstance(source, str):
        _check_size(field, len(source) * 3 // 4, limits)
        try:
            data = decode_b64(source)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{field}: not base64-encoded data") from None
    else:
        data = source
    _check_size(field, len(data), limits)
    return data


def _check_size(field: str, size: int, limits: Limits) -> None:
    if size > limits.max_upload_bytes:
        raise TooLarge(f"{field}: the upload is {size} bytes, more than the limit of {limits.max_upload_bytes} (max_upload_bytes)")
    if size == 0:
        raise InvalidRequest(f"{field}: the upload is empty")


def check_image(field: str, data: bytes, limits: Limits) -> None:
    """Refuse anything but a readable PNG/JPEG/WebP within the pixel limits (InvalidRequest or TooLarge)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel limit decides
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise TooLarge(f"{field}: {exc}") from None
        except Exception:
            raise InvalidRequest(f"{field}: not a PNG, JPEG or WebP image") from None
        with image:
            width, height = image.size
            frames = int(getattr(image, "n_frames", 1) or 1)
            pixels = width * height * frames
            if pixels > limits.max_upload_pixels:
                raise TooLarge(f"{field}: the image is {width} x {height} pixels x {frames} frame(s), more than the limit "
                               f"of {limits.max_upload_pixels} pixels (max_upload_pixels)")
            if min(width, height) < limits.min_upload_side:
                raise InvalidRequest(f"{field}: the image is {width} x {height} pixels; each side must be at least "
                                     f"{limits.min_upload_side} (min_upload_side)")
            try:
                image.load()
            except Exception:
                raise InvalidRequest(f"{field}: the {image.format} data is truncated or corrupt") from None
