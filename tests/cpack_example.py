"""comfy-pack's own example graph (tests/graphs/comfy_pack_example.json, see tests/graphs/README.md), made servable here.

Its checkpoint cannot be downloaded here, so every checkpoint loader names our tiny checkpoint instead.
Its other nodes are ComfyUI core nodes and CPack* nodes, which comfybento implements: nothing else changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import GRAPHS

EXAMPLE = GRAPHS / "comfy_pack_example.json"
EXAMPLE_CHECKPOINT = "pixelArtDiffusionXL_spriteShaper.safetensors"
TINY_CHECKPOINT = "tiny-sd.safetensors"  # see models.lock
CHECKPOINT_INPUTS = {"CheckpointLoaderSimple": "ckpt_name"}


def servable_example() -> dict[str, Any]:
    """The example graph with our tiny checkpoint in place of its own."""
    graph: dict[str, Any] = json.loads(EXAMPLE.read_text())
    for node in graph.values():
        input_name = CHECKPOINT_INPUTS.get(node["class_type"])
        if input_name is not None:
            node["inputs"][input_name] = TINY_CHECKPOINT
    return graph


def write_example(workflows: Path, name: str = "cpack_example") -> Path:
    """Put the servable example into a workflows folder as `<name>.json` (endpoint /<name>)."""
    path = workflows / f"{name}.json"
    path.write_text(json.dumps(servable_example(), indent=1))
    return path
