"""Helpers shared by the engine and e2e tiers."""

from __future__ import annotations

import base64
import io
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "tests" / "graphs"
TEST_WORKFLOWS = ("two_outputs", "img2img", "cpack", "failing")


def free_port() -> int:
    """A free loopback TCP port for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_workflows_dir(target: Path, extra: tuple[str, ...] = TEST_WORKFLOWS) -> Path:
    """The demo workflow (and its sidecar) plus the named test graphs (and theirs) in one folder."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".yaml"):
        shutil.copy(ROOT / "workflows" / f"txt2img{suffix}", target / f"txt2img{suffix}")
    for name in extra:
        for suffix in (".json", ".yaml"):
            src = GRAPHS / f"{name}{suffix}"
            if src.exists():
                shutil.copy(src, target / src.name)
    return target


def service_env(workflows: Path, work_dir: Path) -> dict[str, str]:
    return {
        "COMFYBENTO_CPU": "1",
        "COMFYBENTO_WORKFLOWS": str(workflows),
        "COMFYBENTO_MODELS": str(ROOT / "models"),
        "COMFYBENTO_CUSTOM_NODES": str(ROOT / "tests" / "custom_nodes"),
        "COMFYBENTO_WORK_DIR": str(work_dir),
    }


def png_array(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(np.int16)


def sample_image(width: int = 64, height: int = 64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def renumbered(graph: dict[str, Any]) -> dict[str, Any]:
    """The same API-format graph under the ids a client that builds graphs itself gives them: "3" -> "n3x"."""
    def new(node_id: str) -> str:
        return f"n{node_id}x"

    return {new(i): {"class_type": n["class_type"], "inputs": {k: [new(v[0]), v[1]] if isinstance(v, list) else v
                                                               for k, v in n["inputs"].items()}} for i, n in graph.items()}
