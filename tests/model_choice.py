"""A project where requests choose their checkpoint: two real tiny checkpoints, a corrupt one and one not in models.lock.

Shared by the engine and e2e tiers. The second checkpoint is the tiny-sd architecture with other weights
(comfybento/runtime/tiny_model.py, another seed), generated in a subprocess that bootstraps ComfyUI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from comfybento.models.lock import sha256_file
from tests.helpers import ROOT

DEFAULT = "tiny-sd.safetensors"
ALTERNATES = {"tiny-sd-alt.safetensors": 1, "tiny-sd-alt2.safetensors": 2}  # file -> seed offset
CORRUPT = "tiny-sd-bad.safetensors"  # tiny-sd-alt with one byte changed; models.lock has the right sha256
ROGUE = "rogue.safetensors"  # on disk, so ComfyUI lists it, but not in models.lock
SIDECAR = "params:\n  - {node: '4', input: ckpt_name, name: checkpoint, description: Which checkpoint to sample with}\n"

_GENERATE = """
import sys
from pathlib import Path
from comfybento.config import Settings
from comfybento.runtime.bootstrap import bootstrap
from comfybento.runtime.tiny_model import TINY_SEED, generate_tiny_checkpoint
bootstrap(Settings.from_env({"COMFYBENTO_CPU": "1", "COMFYBENTO_WORK_DIR": sys.argv[1], "COMFYBENTO_MODELS": sys.argv[1]}))
for pair in sys.argv[2:]:
    path, offset = pair.rsplit("=", 1)
    generate_tiny_checkpoint(Path(path), TINY_SEED + int(offset))
"""


def make_models(root: Path) -> tuple[Path, Path]:
    """(models folder, models.lock) of the choose-a-checkpoint project."""
    models = root / "models"
    ckpts = models / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(ROOT / "models" / "checkpoints" / DEFAULT, ckpts / DEFAULT)
    env = {**os.environ, "COMFYBENTO_CPU": "1"}
    pairs = [f"{ckpts / name}={offset}" for name, offset in ALTERNATES.items()]
    subprocess.run([sys.executable, "-c", _GENERATE, str(root / "gen"), *pairs], check=True, cwd=ROOT, env=env, timeout=300)
    data = bytearray((ckpts / "tiny-sd-alt.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpts / CORRUPT).write_bytes(bytes(data))
    shutil.copy(ckpts / DEFAULT, ckpts / ROGUE)
    lines = []
    for name in (DEFAULT, *ALTERNATES, CORRUPT):
        good = ckpts / ("tiny-sd-alt.safetensors" if name == CORRUPT else name)
        lines += [
            "[[models]]",
            f'path = "checkpoints/{name}"',
            f"size = {good.stat().st_size}",
            f'sha256 = "{sha256_file(good)}"',
            'source = { generator = "tiny-sd" }',
            "",
        ]
    lock = root / "models.lock"
    lock.write_text("\n".join(lines))
    return models, lock


def make_workflows(root: Path, name: str = "choose_model") -> Path:
    """The demo txt2img graph with its checkpoint exposed as a request field."""
    folder = root / "workflows"
    folder.mkdir(parents=True)
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    (folder / f"{name}.json").write_text(json.dumps(graph))
    (folder / f"{name}.yaml").write_text(SIDECAR)
    return folder
