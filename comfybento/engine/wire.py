"""Frames between the front and the engine: a JSON header and raw binary parts, no base64.

A frame is `u32 header length | header JSON | part 0 | part 1 | ...`; the
header lists the byte length of each part under "parts". A request to the
engine is one frame (fields, then uploaded files as parts); the engine's
answer is a stream of frames, one per event (queued, started, progress,
output with its encoded bytes, done or failed). Pure code: both processes use
it, neither imports torch for it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

MEDIA_TYPE = "application/x-comfybento-frames"
_LEN = struct.Struct(">I")
MAX_HEADER = 16 * 1024 * 1024


class WireError(ValueError):
    """A malformed frame."""


def encode_frame(header: dict[str, Any], parts: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    head = json.dumps({**header, "parts": [len(p) for p in parts]}, separators=(",", ":")).encode()
    return b"".join((_LEN.pack(len(head)), head, *parts))


def decode_frame(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Exactly one frame."""
    frames = FrameReader()
    out = frames.feed(data)
    if len(out) != 1 or frames.pending:
        raise WireError(f"expected one frame, got {len(out)} and {frames.pending} stray bytes")
    return out[0]


class FrameReader:
    """Reassembles frames from chunks of any size."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[tuple[dict[str, Any], list[bytes]]]:
        self._buf += chunk
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> tuple[dict[str, Any], list[bytes]] | None:
        if len(self._buf) < _LEN.size:
            return None
        (head_len,) = _LEN.unpack_from(self._buf)
        if head_len > MAX_HEADER:
            raise WireError(f"frame header of {head_len} bytes")
        if len(self._buf) < _LEN.size + head_len:
            return None
        try:
            header = json.loads(bytes(self._buf[_LEN.size:_LEN.size + head_len]))
            sizes = [int(n) for n in header.pop("parts", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise WireError(f"bad frame header: {exc}") from None
        end = _LEN.size + head_len + sum(sizes)
        if len(self._buf) < end:
            return None
        parts, at = [], _LEN.size + head_len
        for size in sizes:
            parts.append(bytes(self._buf[at:at + size]))
            at += size
        del self._buf[:end]
        return header, parts


async def read_frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[dict[str, Any], list[bytes]]]:
    reader = FrameReader()
    async for chunk in chunks:
        for frame in reader.feed(chunk):
            yield frame
    if reader.pending:
        raise WireError(f"the stream ended inside a frame ({reader.pending} bytes)")
