"""Build real `.cpack.zip` files for the import tests, laid out as comfy-pack writes them.

comfy-pack writes packs from its ComfyUI node (`nodes/api.py`, route `/bentoml/pack`), which needs a running
ComfyUI with ComfyUI-Manager; the PyPI package has no packing code. So the zips here follow its layout:
- comfy-pack >= 0.4: snapshot.json is a ComfyUI-Manager snapshot (comfyui, git_custom_nodes, cnr_custom_nodes,
  file_custom_nodes, pips) plus python and models;
- comfy-pack < 0.4 (as in its own `examples/simple-pixel-art-generation.cpack.zip`): snapshot.json has python,
  comfyui, models and custom_nodes [{url, commit_hash, disabled}], beside a requirements.txt.
Both carry workflow_api.json, workflow.json and input/.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

TINY = {"filename": "models/checkpoints/tiny-sd.safetensors", "size": 13572418,  # as in models.lock
        "sha256": "c553ea089cff9c84523b768bb9be6aa6ad61b8b0fff9193e816d7fc526f7039a"}
HF_SOURCE = {"source": "huggingface", "repo": "someone/tiny-models", "commit": "0123456789abcdef0123456789abcdef01234567",
             "path": "sd/tiny-sd.safetensors", "url": "https://huggingface.co/someone/tiny-models/blob/0123456/sd/tiny-sd.safetensors",
             "download_url": "https://huggingface.co/someone/tiny-models/resolve/0123456/sd/tiny-sd.safetensors?download=true"}
MANAGER = ("https://github.com/ltdrdata/ComfyUI-Manager.git", "145410eb9332e620133d61324f6c9f87034ae393")
COMFY_PACK = ("https://github.com/bentoml/comfy-pack.git", "4bfd08cead1a98bacb93ed5b0defb896c20cee57")


def model(filename: str = TINY["filename"], source: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """One snapshot.json model as comfy-pack records it."""
    base = {**TINY, "filename": filename, "atime": 1734504149.7, "ctime": 1734502753.7, "disabled": False,
            "source": HF_SOURCE if source is None else source}
    return {**base, **fields}


def new_snapshot(models: list[dict[str, Any]], nodes: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    git_nodes = {url: {"hash": commit, "disabled": False} for url, commit in [MANAGER, COMFY_PACK, *nodes]}
    return {"comfyui": "ca457f7ba1ff33bd0d724cd7324131509efcf3ec", "git_custom_nodes": git_nodes, "cnr_custom_nodes": {},
            "file_custom_nodes": [{"filename": "websocket_image_save.py", "disabled": False}],
            "pips": {"numpy==2.4.6": "", "pillow==13.0.0": ""}, "python": "3.11", "models": models, **extra}


def old_snapshot(models: list[dict[str, Any]], nodes: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    custom = [{"url": url, "commit_hash": commit, "disabled": False} for url, commit in [MANAGER, COMFY_PACK, *nodes]]
    return {"python": "3.11", "comfyui": "ca457f7ba1ff33bd0d724cd7324131509efcf3ec", "models": models, "custom_nodes": custom, **extra}


def write_pack(path: Path, workflow: Any, snapshot: dict[str, Any] | None, inputs: dict[str, bytes] | None = None,
               old: bool = False) -> Path:
    """A .cpack.zip; workflow None or snapshot None leaves that file out (a broken pack)."""
    with zipfile.ZipFile(path, "w") as zf:
        if old:
            zf.writestr("requirements.txt", "numpy==2.4.6\npillow==13.0.0\n")
        if snapshot is not None:
            zf.writestr("snapshot.json", json.dumps(snapshot, indent=2))
        if workflow is not None:
            zf.writestr("workflow_api.json", json.dumps(workflow, indent=2))
            zf.writestr("workflow.json", json.dumps({"last_node_id": 1, "nodes": [], "links": []}))
        for name, data in (inputs or {}).items():
            zf.writestr(f"input/{name}", data)
    return path


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def node_repo(root: Path, name: str = "ComfyUI-Tiny", versions: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """A local bare git repository with a commit per version of a custom node's __init__.py (default: two
    that only differ in VERSION): (its URL, the commits in order)."""
    work, bare = root / f"{name}-work", root / f"{name}.git"
    work.mkdir(parents=True)
    git("init", "--quiet", "-b", "main", cwd=work)
    commits = []
    for version, code in enumerate(versions or ("", ""), start=1):
        (work / "__init__.py").write_text(code or f"VERSION = {version}\nNODE_CLASS_MAPPINGS = {{}}\n")
        git("add", "-A", cwd=work)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", f"v{version}", cwd=work)
        commits.append(git("rev-parse", "HEAD", cwd=work))
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=root)
    return str(bare), commits
