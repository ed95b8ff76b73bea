"""Safetensors files for the models-by-URL tests: made from scratch, or an existing one restamped with other bytes.

`restamped` keeps a checkpoint's tensors and changes only its header's `__metadata__`: a file with another sha256
that ComfyUI loads as the same model (how the e2e tier gets two "different" tiny checkpoints for free).
"""

from __future__ import annotations

import json
import struct


def safetensors_bytes(tensors: dict[str, bytes], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of float32 vectors (each value's bytes, a multiple of 4)."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, data in tensors.items():
        header[name] = {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    return _pack(header, b"".join(tensors.values()))


def restamped(data: bytes, stamp: str) -> bytes:
    """The same safetensors file with `stamp` in its header's metadata (other bytes, the same tensors)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = {**header.get("__metadata__", {}), "comfybento_test": stamp}
    return _pack(header, data[8 + length:])


def _pack(header: dict[str, object], body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body
