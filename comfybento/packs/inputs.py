"""The project's `inputs/` folder: files a workflow reads by name (a LoadImage's default image, a pack's input/).

ComfyUI reads them from its input folder, which comfybento keeps in its work dir (uploads go there too).
When the engine starts, `stage_inputs` copies every file of `inputs/` there, under the same relative name.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path


def stage_inputs(inputs_dir: Path, comfy_input_dir: Path) -> list[str]:
    """Copy each file of inputs_dir into ComfyUI's input folder where it is missing or differs; the names copied."""
    if not inputs_dir.is_dir():
        return []
    copied = []
    for src in sorted(inputs_dir.rglob("*")):
        rel = src.relative_to(inputs_dir)
        if not src.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        dest = comfy_input_dir / rel
        if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        copied.append(rel.as_posix())
    return copied
