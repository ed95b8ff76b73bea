"""Safetensors files for the models-by-URL tests: made from scratch, or an existing one restamped with other bytes.

`tiny_lora(strength)` is a LoRA of the tiny checkpoint (comfybento/runtime/tiny_model.py): rank 1 on the UNet's last
convolution (`out.2`, 4x32x3x3), in ComfyUI's generic key format; strength 0 changes nothing.

`restamped` keeps a checkpoint's tensors and changes only its header's `__metadata__`: a file with another sha256
that ComfyUI loads as the same model (how the e2e tier gets two "different" tiny checkpoints for free).
"""

from __future__ import annotations

import json
import struct

import numpy as np


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


def tiny_lora(strength: float) -> bytes:
    """A rank-1 LoRA of the tiny checkpoint's output convolution."""
    down = np.full((1, 32, 3, 3), strength, dtype=np.float32)
    up = np.ones((4, 1, 1, 1), dtype=np.float32)
    header: dict[str, object] = {}
    body = b""
    for name, array in (("diffusion_model.out.2.lora_down.weight", down), ("diffusion_model.out.2.lora_up.weight", up)):
        data = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    return _pack(header, body)
