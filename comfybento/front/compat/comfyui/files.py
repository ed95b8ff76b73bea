"""ComfyUI's files: uploaded inputs (/upload/image, /upload/mask) and outputs (/view), kept in the job storage.

Keys: `comfyui-inputs/[<owner tag>/][<subfolder>/]<name>` for uploads (every replica
sees them, S3 included): with API keys on, each key has its own folder (its tag,
front/ownership.py), so a name never reaches, or overwrites, another key's file.
An output is `<prompt id>/<file>`, the job's own output key, shown to ComfyUI
clients as {filename, subfolder: <prompt id>, type: output}, and read only by
whom may see the job.
"""

from __future__ import annotations

import io
import re
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError

from comfybento.errors import InvalidRequest, NotFound, TooLarge
from comfybento.front.jobs.service import JobService
from comfybento.front.ownership import Caller
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


def key(filename: str, subfolder: str, kind: str, tag: str | None = None) -> str:
    """The storage key of a ComfyUI file reference (a 404 for anything outside the input and output folders);
    an input is looked for in the folder of the owner `tag` (None: keys off, the one shared folder)."""
    name = _segments(filename, "filename")
    if len(name) != 1:
        raise InvalidRequest(f"filename: {filename!r} must be a file name, not a path")
    folder = _segments(subfolder, "subfolder")
    if kind == "input":
        return "/".join([INPUTS, *([tag] if tag is not None else []), *folder, name[0]])
    if kind == "output" and len(folder) == 1:
        return f"{folder[0]}/{name[0]}"
    raise NotFound(f"no such file: type={kind!r} subfolder={subfolder!r} filename={filename!r}")


def read(service: JobService, filename: str, subfolder: str, kind: str, caller: Caller) -> bytes:
    """A file `caller` may see: one of its uploads, or an output of a prompt (job) it may see; else a 404, the same as
    for a file that does not exist."""
    where = key(filename, subfolder, kind, caller.tag)
    if kind == "output":
        job = service.store.get_job(where.split("/", 1)[0])
        if job is None or not caller.can_see(job.owner):
            raise NotFound(f"no such file: {where}")
    return service.storage.get(where)


def content_type(filename: str) -> str:
    return media_type_of(filename)


def check_size(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise TooLarge(f"image: the upload is {len(data)} bytes, over the limit of {limit} bytes "
                       "(COMFYBENTO_MAX_UPLOAD_BYTES)")


def store_upload(storage: Storage, data: bytes, filename: str, subfolder: str, overwrite: bool, tag: str | None) -> str:
    """Store an upload in the folder of the owner `tag`; returns the name it got (ComfyUI's 'name (1).ext' when another
    file of that folder has the name)."""
    name = PurePosixPath(filename.replace("\\", "/")).name or "upload.png"
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    candidate, n = name, 1
    while not overwrite:
        try:
            existing = storage.get(key(candidate, subfolder, "input", tag))
        except NotFound:
            break
        if existing == data:  # the same file again: ComfyUI keeps its name
            return candidate
        candidate, n = f"{stem} ({n}){suffix}", n + 1
    storage.put(key(candidate, subfolder, "input", tag), data, content_type(candidate))
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
