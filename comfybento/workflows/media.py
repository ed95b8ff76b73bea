"""Video and audio inputs, sniffed with PyAV from their container header: streams, length, frames, size.

Nothing is decoded: opening a container reads its header and probes the
streams. A file with no stream of the wanted kind, a still image posing as a
video (ffmpeg's image demuxers), or one whose length cannot be read is
refused; so is one over max_media_seconds, max_video_frames or (a video's
frame) max_upload_pixels.
"""

from __future__ import annotations

import io
from typing import Any

import av

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.limits import Limits

# ffmpeg's name of a container (its first alias) -> the extension the file is stored under.
SUFFIXES = {"mov": ".mp4", "matroska": ".mkv", "webm": ".webm", "avi": ".avi", "gif": ".gif", "flv": ".flv", "mpegts": ".ts",
            "wav": ".wav", "mp3": ".mp3", "ogg": ".ogg", "flac": ".flac", "aac": ".aac", "aiff": ".aiff", "w64": ".w64"}


def check_media(field: str, kind: str, data: bytes, limits: Limits) -> str:
    """Refuse anything but a readable video (kind "video") or sound (kind "audio") within the limits; its suffix."""
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except Exception:
        raise InvalidRequest(f"{field}: not a readable {kind} file") from None
    with container:
        fmt = container.format.name.split(",")[0]
        if fmt.startswith("image2") or fmt.endswith("_pipe"):
            raise InvalidRequest(f"{field}: a still image ({fmt}), not a {kind} file")
        streams = container.streams.video if kind == "video" else container.streams.audio
        if not streams:
            raise InvalidRequest(f"{field}: the {fmt} file has no {kind} stream")
        stream = streams[0]
        seconds = _seconds(container, stream)
        if seconds is None:
            raise InvalidRequest(f"{field}: the length of the {fmt} file cannot be read from its header")
        if seconds > limits.max_media_seconds:
            raise TooLarge(f"{field}: the {kind} is {seconds:.1f} s long, more than the limit of {limits.max_media_seconds} s "
                           "(max_media_seconds)")
        if kind == "video":
            _check_frames(field, stream, seconds, limits)
        if fmt == "matroska" and container.format.name.endswith("webm") and kind == "video" and \
                stream.codec_context.name in ("vp8", "vp9", "av1"):
            return ".webm"
        return SUFFIXES.get(fmt, "")


def _seconds(container: Any, stream: Any) -> float | None:
    if container.duration is not None and container.duration > 0:
        return float(container.duration / av.time_base)
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def _check_frames(field: str, stream: Any, seconds: float, limits: Limits) -> None:
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width * height > limits.max_upload_pixels:
        raise TooLarge(f"{field}: the video is {width} x {height} pixels a frame, more than the limit of "
                       f"{limits.max_upload_pixels} pixels (max_upload_pixels)")
    rate = stream.average_rate or stream.guessed_rate
    frames = int(stream.frames or 0) or (round(seconds * float(rate)) if rate else 0)
    if frames > limits.max_video_frames:
        raise TooLarge(f"{field}: the video has {frames} frames, more than the limit of {limits.max_video_frames} "
                       "(max_video_frames)")
