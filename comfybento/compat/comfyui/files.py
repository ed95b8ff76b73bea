"""ComfyUI's files: uploaded inputs (/upload/image, /upload/mask) and outputs (/view), kept in the job storage.

Keys: `comfyui-inputs/[<subfolder>/]<name>` for uploads (every replica sees
them, S3 included); an output is `<prompt id>/<file>`, the job's own output
key, shown to ComfyUI clients as {filename, subfolder: <prompt id>, type: output}.
"""

from __future__ import annotations

import io
import re
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError

from comfybento.errors import InvalidRequest, NotFound, TooLarge
from comfybento.outputs.media import media_type_of
from comfybento.outputs.storage import Storage

INPUTS = "comfyui-inputs"
_SEGMENT = re.compile(r"^[^/\\\x00]{1,200}$")
_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$")


def split_annotation(literal: str) -> tuple[str, str]:
    """'name.png [output]' -> ('name.png', 'output'); a plain name is an input."""
    m = _ANNOTATION.match(literal.strip())
    return (m.group(1), m.group(2)) if m else (literal.strip(), "input")


def _segments(path: str, field: str) -> list[str]:
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    for part in parts:
        if part in (".", "..") or not _SEGMENT.match(part) or part.startswith("."):
            raise InvalidRequest(f"{field}: {path!r} is not a valid name")
    return parts


def key(filename: str, subfolder: str, kind: str) -> str:
    """The storage key of a ComfyUI file reference (a 404 for anything outside the input and output folders)."""
    name = _segments(filename, "filename")
    if len(name) != 1:
        raise InvalidRequest(f"filename: {filename!r} must be a file name, not a path")
    folder = _segments(subfolder, "subfolder")
    if kind == "input":
        return "/".join([INPUTS, *folder, name[0]])
    if kind == "output" and len(folder) == 1:
        return f"{folder[0]}/{name[0]}"
    raise NotFound(f"no such file: type={kind!r} subfolder={subfolder!r} filename={filename!r}")


def read(storage: Storage, filename: str, subfolder: str, kind: str) -> bytes:
    return storage.get(key(filename, subfolder, kind))


def content_type(filename: str) -> str:
    return media_type_of(filename)


def check_size(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise TooLarge(f"image: the upload is {len(data)} bytes, over the limit of {limit} bytes "
                       "(COMFYBENTO_MAX_UPLOAD_BYTES)")


def store_upload(storage: Storage, data: bytes, filename: str, subfolder: str, overwrite: bool) -> str:
    """Store an upload; returns the name it got (ComfyUI's 'name (1).ext' when another file has the name)."""
    name = PurePosixPath(filename.replace("\\", "/")).name or "upload.png"
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    candidate, n = name, 1
    while not overwrite:
        try:
            existing = read(storage, candidate, subfolder, "input")
        except NotFound:
            break
        if existing == data:  # the same file again: ComfyUI keeps its name
            return candidate
        candidate, n = f"{stem} ({n}){suffix}", n + 1
    storage.put(key(candidate, subfolder, "input"), data, content_type(candidate))
    return candidate


def apply_mask(original: bytes, mask: bytes) -> bytes:
    """The original image with the mask's alpha as its alpha (what ComfyUI's /upload/mask stores), as PNG."""
    try:
        with Image.open(io.BytesIO(original)) as base, Image.open(io.BytesIO(mask)) as m:
            alpha = m.convert("RGBA").getchannel("A").resize(base.size)
            out = base.convert("RGBA")
            out.putalpha(alpha)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequest(f"image: the mask or its original is not a readable image ({exc})") from None
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
