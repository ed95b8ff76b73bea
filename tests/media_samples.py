"""Small, real media files made with PyAV (video, audio) and Pillow (images, masks) for the input tests."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image


def png(width: int = 64, height: int = 64, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), (0, 0, 0, 0) if mode == "RGBA" else 128).save(buf, format="PNG")
    return buf.getvalue()


def half_masked_png(width: int = 64, height: int = 64) -> bytes:
    """White RGBA whose left half is transparent (LoadImage: mask 1 there, 0 on the right)."""
    pixels = np.full((height, width, 4), 255, np.uint8)
    pixels[:, : width // 2, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def video(frames: int = 8, size: tuple[int, int] = (64, 64), rate: int = 8) -> bytes:
    """An MPEG-4 video in an MP4 container."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (i * 29) % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """Silence, 16-bit mono PCM in a WAV container."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, int(seconds * rate)), np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
