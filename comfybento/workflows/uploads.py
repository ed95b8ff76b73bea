"""Input files (images, masks, video, audio, comfy-pack files), read and checked before the engine sees them.

A file comes as a multipart upload (a stored Path), as base64 (raw, or a
`data:` URI) in a JSON body or a job item, or as an http(s) URL, fetched
through the allow-list (workflows/fetch.py). Whatever the way, the bytes are
then sniffed: images by Pillow, video and audio by PyAV (its container
header: streams, length, frames), so the declared type never decides.

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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.limits import Limits
from comfybento.outputs.encoding import decode_b64
from comfybento.urlguard import AllowList
from comfybento.workflows.fetch import fetch, is_url
from comfybento.workflows.media import check_media

# Formats ComfyUI's LoadImage reads and we accept, and the extension they are stored under.
FORMATS = ("PNG", "JPEG", "WEBP")
MAX_URL_CHARS = 8192
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
# What a `data:` URI may declare for each kind (the bytes are sniffed in any case).
DATA_TYPES: dict[str, tuple[str, ...]] = {"image": ("image/",), "mask": ("image/",), "video": ("video/",), "audio": ("audio/", "video/")}


@dataclass(frozen=True)
class InputFile:
    data: bytes
    suffix: str  # the extension it is stored under (".png", ".mp4", ...); "" if unknown


def read_input(field: str, kind: str, source: Path | bytes | str | None, limits: Limits, allow: AllowList | None) -> InputFile:
    """An input file of any kind, from any source, checked (InvalidRequest / TooLarge naming the field).

    allow: the allow-list for URL inputs; None refuses URLs.
    """
    if source is None:
        raise InvalidRequest(f"{field}: {'an' if kind[0] in 'aeiou' else 'a'} {kind} is required")
    if isinstance(source, str):
        source = source.strip()
    suffix = source.suffix.lower() if isinstance(source, Path) else ""
    if isinstance(source, str) and is_url(source):
        if allow is None:
            raise InvalidRequest(f"{field}: a URL is not taken here; send the file itself")
        data, suffix = fetch(field, source, kind, limits, allow)
        _check_size(field, len(data), limits)
    else:
        data = read_file(field, source, limits, kind)
    if kind in ("image", "mask"):
        suffix = check_image(field, data, limits)
    elif kind in ("video", "audio"):
        suffix = check_media(field, kind, data, limits)
    return InputFile(data, suffix if _plain_suffix(suffix) else "")


def check_item_input(field: str, kind: str, source: str | None, limits: Limits) -> None:
    """A job item's file at submit time: base64 is checked now; a URL only for its form (it is fetched when the item runs)."""
    if isinstance(source, str) and is_url(source):
        try:
            host = urlsplit(source.strip()).hostname
        except ValueError:
            host = None
        if not host or len(source) > MAX_URL_CHARS:
            raise InvalidRequest(f"{field}: not an http(s) URL with a host, of at most {MAX_URL_CHARS} characters")
        return
    read_input(field, kind, source, limits, None)


def _plain_suffix(suffix: str) -> bool:
    return 2 <= len(suffix) <= 17 and suffix[0] == "." and suffix[1:].isalnum() and suffix.isascii()


def read_upload(field: str, source: Path | bytes | str | None, limits: Limits) -> bytes:
    """The bytes of an uploaded image (a stored file, raw bytes, or base64), checked; no URL."""
    return read_input(field, "image", source, limits, None).data


def read_file(field: str, source: Path | bytes | str, limits: Limits, kind: str = "file") -> bytes:
    """The bytes of any uploaded file, within max_upload_bytes; base64 (raw or a data: URI) is decoded."""
    if isinstance(source, Path):
        _check_size(field, source.stat().st_size, limits)
        data = source.read_bytes()
    elif isinstance(source, str):
        source = _data_uri_payload(field, kind, source.strip())
        _check_size(field, len(source) * 3 // 4, limits)
        try:
            data = decode_b64(source)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{field}: not base64-encoded data (nor a data: URI or an http(s) URL)") from None
    else:
        data = source
    _check_size(field, len(data), limits)
    return data


def _data_uri_payload(field: str, kind: str, text: str) -> str:
    """The base64 of a `data:<type>;base64,<data>` URI (its type checked against the kind); other text as it is."""
    if not text[:5].lower() == "data:":
        return text
    header, comma, payload = text[5:].partition(",")
    parts = [p.strip().lower() for p in header.split(";")]
    if not comma or "base64" not in parts[1:]:
        raise InvalidRequest(f"{field}: a data: URI must be data:<type>;base64,<data>")
    expected = DATA_TYPES.get(kind)
    media = parts[0]
    if expected is not None and media and media != "application/octet-stream" and not media.startswith(expected):
        raise InvalidRequest(f"{field}: the data: URI is {media}, not a {kind} file")
    return payload


def _check_size(field: str, size: int, limits: Limits) -> None:
    if size > limits.max_upload_bytes:
        raise TooLarge(f"{field}: the upload is {size} bytes, more than the limit of {limits.max_upload_bytes} (max_upload_bytes)")
    if size == 0:
        raise InvalidRequest(f"{field}: the upload is empty")


def check_image(field: str, data: bytes, limits: Limits) -> str:
    """Refuse anything but a readable PNG/JPEG/WebP within the pixel limits (InvalidRequest or TooLarge); its suffix."""
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
            return SUFFIXES.get(str(image.format), ".png")
