"""What an output is: its kind and media type, from its output node's class or from the file it wrote. No torch here.

Output kinds:
    image      a still image (SaveImage, PreviewImage, CPackOutputImage: encoded by comfybento)
    animation  an animated image (SaveAnimatedWEBP, SaveAnimatedPNG)
    video      SaveWEBM, SaveVideo, CPackOutputVideo
    audio      SaveAudio, SaveAudioMP3, SaveAudioOpus, PreviewAudio, CPackOutputAudio
    text       PreviewAny and any node whose UI result carries text; CPackOutputTextFile
    file       anything else a node writes (CPackOutputFile, CPackOutputZip, custom output nodes)
"""

from __future__ import annotations

import io
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

OutputKind = Literal["image", "animation", "video", "audio", "text", "file"]
KINDS: tuple[OutputKind, ...] = ("image", "animation", "video", "audio", "text", "file")
OCTET = "application/octet-stream"

# What stock and comfy-pack output nodes make: (kind, media type; None = decided per request or by the file).
KNOWN_OUTPUTS: dict[str, tuple[OutputKind, str | None]] = {
    "SaveImage": ("image", None),
    "PreviewImage": ("image", None),
    "CPackOutputImage": ("image", None),
    "SaveAnimatedWEBP": ("animation", "image/webp"),
    "SaveAnimatedPNG": ("animation", "image/png"),
    "SaveWEBM": ("video", "video/webm"),
    "SaveVideo": ("video", None),
    "CPackOutputVideo": ("video", "video/mp4"),
    "SaveAudio": ("audio", "audio/flac"),
    "SaveAudioMP3": ("audio", "audio/mpeg"),
    "SaveAudioOpus": ("audio", "audio/ogg"),
    "PreviewAudio": ("audio", "audio/flac"),
    "CPackOutputAudio": ("audio", "audio/flac"),
    "PreviewAny": ("text", "text/plain"),
    "CPackOutputTextFile": ("text", "text/plain"),
    "CPackOutputZip": ("file", "application/zip"),
    "CPackOutputFile": ("file", None),
}
# The output nodes whose images comfybento collects as tensors and encodes itself (the request's output_format): the
# "image" rows above. The engine runs its collector node in their place (runtime/executor.py); they batch.
OUTPUT_IMAGE_CLASSES: tuple[str, ...] = tuple(name for name, (kind, _) in KNOWN_OUTPUTS.items() if kind == "image")
# Media types Python's table lacks or names oddly.
_MEDIA_TYPES = {".webm": "video/webm", ".opus": "audio/ogg", ".flac": "audio/flac", ".wav": "audio/wav", ".mkv": "video/x-matroska",
                ".apng": "image/apng"}
# Media type -> file extension (job files, archives, S3 keys).
_EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg", "image/gif": "gif", "video/webm": "webm",
               "video/mp4": "mp4", "audio/flac": "flac", "audio/mpeg": "mp3", "audio/ogg": "ogg", "audio/wav": "wav",
               "text/plain": "txt", "application/json": "json", "application/zip": "zip"}


@dataclass(frozen=True)
class ProducedFile:
    """A file one output node wrote during one execution, moved into that execution's own folder."""

    node_id: str
    path: Path
    animated: bool = False


@dataclass(frozen=True)
class ProducedText:
    """A text one output node reported in its UI result (PreviewAny)."""

    node_id: str
    text: str


Produced = ProducedFile | ProducedText


def media_type_of(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or OCTET


def extension_for(media_type: str) -> str:
    """The file extension for a media type ("bin" when unknown)."""
    media_type = media_type.split(";")[0].strip().lower()
    return _EXTENSIONS.get(media_type) or (mimetypes.guess_extension(media_type) or ".bin").lstrip(".")


def kind_of(media_type: str, animated: bool = False) -> OutputKind:
    top = media_type.split("/")[0]
    if top == "image":
        return "animation" if animated or media_type == "image/gif" else "image"
    if top in ("video", "audio", "text"):
        return top  # type: ignore[return-value]
    return "file"


def dimensions(data: bytes, media_type: str) -> tuple[int | None, int | None]:
    """(width, height) of an image, animation or video, when its header says; else (None, None)."""
    try:
        if media_type.startswith("image/"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                return image.size
        if media_type.startswith("video/"):
            import av

            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                return int(stream.codec_context.width), int(stream.codec_context.height)
    except Exception:  # an unreadable header: the size is unknown, the bytes still go out
        return None, None
    return None, None
