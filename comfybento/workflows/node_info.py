"""Node definitions without importing ComfyUI: a snapshot of its object_info, refreshed when it changes.

Only the engine may import torch and ComfyUI. The arbiter and the front still
need every node's inputs, types, bounds and choices to build typed endpoints,
so they read a snapshot file. The snapshot is keyed by a fingerprint of what
can change the node registry: the ComfyUI tree and its version, the custom
node folders, comfybento's own nodes, the installed torch, and the model
files (their names are the choices of loader inputs). A missing or stale
snapshot is written by a child process (`python -m comfybento object-info`),
which imports ComfyUI on the CPU and exits, so its memory goes with it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from comfybento.config import PROJECT_ROOT, Settings, find_comfyui_root
from comfybento.errors import ConfigError
from comfybento.workflows.graph import InputDef, NodeDef

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 3  # 2: ComfyUI's own node_info() per node; 3: the custom nodes' web folders
KEEP_SNAPSHOTS = 8
_SKIP_DIRS = {"__pycache__", ".git", "node_modules", ".venv"}
# Model files (loader inputs list them); not the hash stamps the engine writes beside them.
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf", ".pt2", ".onnx", ".yaml")


# ---------------------------------------------------------------- parsing


def _input_def(name: str, spec: Any, required: bool) -> InputDef:
    if not isinstance(spec, (tuple, list)) or not spec:
        return InputDef(name=name, type=str(spec), required=required)
    typ, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(typ, (list, tuple)):
        return InputDef(name=name, type="COMBO", required=required, options=options, choices=tuple(map(str, typ)))
    if typ == "COMBO":
        choices = tuple(map(str, options.get("options", ())))
        return InputDef(name=name, type="COMBO", required=required, options=options, choices=choices)
    return InputDef(name=name, type=str(typ), required=required, options=options)


def node_def_from_info(class_type: str, info: Mapping[str, Any]) -> NodeDef:
    inputs: dict[str, InputDef] = {}
    for section, required in (("required", True), ("optional", False)):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            inputs[name] = _input_def(name, spec, required)
    return NodeDef(
        class_type=class_type,
        inputs=inputs,
        output_node=bool(info.get("output_node")),
        return_types=tuple(str(t) for t in info.get("output", ())),
        description=str(info.get("description") or ""),
        display_name=str(info.get("display_name") or ""),
    )


def node_defs_from_info(info: Mapping[str, Mapping[str, Any]]) -> dict[str, NodeDef]:
    return {class_type: node_def_from_info(class_type, entry) for class_type, entry in info.items()}


# ---------------------------------------------------------------- snapshot file


def _files(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(suffixes):
                yield Path(dirpath) / name


def fingerprint(settings: Settings) -> str:
    """Changes whenever the node registry could: ComfyUI, custom nodes, our nodes, torch, model files."""
    root = find_comfyui_root(settings)
    digest = hashlib.sha256(f"v{SNAPSHOT_VERSION}|{sys.version}|{root}|".encode())
    for dist in ("torch", "torchvision", "torchaudio", "spandrel", "kornia"):
        try:
            digest.update(f"{dist}={importlib.metadata.version(dist)}|".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist}=absent|".encode())
    version_file = root / "comfyui_version.py"
    digest.update(version_file.read_bytes() if version_file.is_file() else b"")
    for path in _files(PROJECT_ROOT / "comfybento" / "runtime", (".py",)):
        digest.update(path.read_bytes())
    for folder, suffixes in ((root / "custom_nodes", (".py", ".txt")), (settings.custom_nodes_dir, (".py", ".txt")),
                             (settings.models_dir, _MODEL_SUFFIXES)):
        for path in _files(folder, suffixes):
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    return digest.hexdigest()[:32]


def snapshot_path(settings: Settings, print_: str) -> Path:
    return settings.cache_dir / f"object_info-{print_}.json"


_last: dict[str, Any] = {}  # "nodes": the node info this process last read (what its workflows were typed with)


def load_node_info(settings: Settings) -> dict[str, Any]:
    """ComfyUI's object_info, every node as its node_info() builds it, from a fresh snapshot (written first if missing or stale)."""
    path = snapshot_path(settings, fingerprint(settings))
    if not path.is_file():
        write_snapshot_in_child(settings, path)
    try:
        snapshot = json.loads(path.read_text(encoding="utf-8"))
        nodes, web_dirs = snapshot["nodes"], snapshot.get("web_dirs") or {}
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"node-definition snapshot {path} is unreadable ({exc}); delete it and start again") from None
    _last["nodes"], _last["web_dirs"] = nodes, web_dirs
    return dict(nodes)


def loaded_node_info(settings: Settings) -> dict[str, Any]:
    """The node info this process loaded its workflows with (its snapshot file may since be pruned by another process)."""
    return dict(_last["nodes"]) if "nodes" in _last else load_node_info(settings)


def loaded_web_dirs(settings: Settings) -> dict[str, Path]:
    """The custom nodes' web folders (WEB_DIRECTORY) by module name, from the snapshot this process loaded."""
    if "web_dirs" not in _last:
        load_node_info(settings)
    return {name: Path(folder) for name, folder in _last["web_dirs"].items()}


def load_node_defs(settings: Settings) -> dict[str, NodeDef]:
    """The node registry's definitions from a fresh snapshot (written first if missing or stale)."""
    return node_defs_from_info(load_node_info(settings))


def write_snapshot_in_child(settings: Settings, path: Path) -> None:
    """Import ComfyUI in a child process (CPU only) and write its object_info to path."""
    env = {
        **os.environ,
        "COMFYBENTO_CPU": "1",
        "COMFYBENTO_CUSTOM_NODES": str(settings.custom_nodes_dir),
        "COMFYBENTO_MODELS": str(settings.models_dir),
        "COMFYBENTO_WORK_DIR": str(settings.work_dir),
        "COMFYBENTO_CACHE_DIR": str(settings.cache_dir),
    }
    env.pop("COMFYUI_PATH", None)
    if settings.comfyui_path is not None:
        env["COMFYUI_PATH"] = str(settings.comfyui_path)
    log.info("writing the node-definition snapshot %s (ComfyUI or custom nodes changed)", path.name)
    cmd = [sys.executable, "-m", "comfybento", "object-info", "--out", str(path)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not path.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ConfigError(f"could not read ComfyUI's node definitions (python -m comfybento object-info failed):\n{tail}")


def write_snapshot(path: Path, nodes: Mapping[str, Any], comfyui_version: str, web_dirs: Mapping[str, str] | None = None) -> None:
    """Write atomically: processes starting together may race to write the same snapshot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": SNAPSHOT_VERSION, "comfyui_version": comfyui_version, "nodes": nodes,
                               "web_dirs": dict(web_dirs or {})}), encoding="utf-8")
    tmp.replace(path)
    older = sorted(path.parent.glob("object_info-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_SNAPSHOTS:]
    for stale in older:
        stale.unlink(missing_ok=True)
