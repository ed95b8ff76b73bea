"""Custom nodes pinned to a git commit: the manifest `custom_nodes/nodes.lock` and its installer.

    [[nodes]]
    name = "ComfyUI-Example"                                # folder under custom_nodes/
    url = "https://github.com/someone/ComfyUI-Example.git"
    commit = "0123456789abcdef0123456789abcdef01234567"

`python -m comfybento nodes install` (run by scripts/setup and by the Bento build) clones each
into custom_nodes/<name> at its commit. A clone it made carries `.comfybento-pin` (url and commit),
so a second run, or a Bento that ships the clone, does nothing; a folder it did not make is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from comfybento.errors import ConfigError

MANIFEST_NAME = "nodes.lock"
PIN_FILE = ".comfybento-pin"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
HEADER = (
    "# Custom nodes pinned to a git commit (written by `python -m comfybento import`).\n"
    "# `python -m comfybento nodes install` (run by scripts/setup) clones each into custom_nodes/<name>.\n"
)


class NodeManifestError(ConfigError):
    """The manifest is malformed, or a pinned node cannot be installed."""


@dataclass(frozen=True)
class PinnedNode:
    name: str
    url: str
    commit: str


def check_node(node: PinnedNode, where: str) -> PinnedNode:
    """The node if its name, url and commit are usable; else a NodeManifestError naming what is wrong."""
    if not NAME_RE.match(node.name) or node.name.strip(".") == "":
        raise NodeManifestError(f"{where}: folder name {node.name!r} must be letters, digits, '.', '_' or '-'")
    url = node.url
    if not url or url.startswith("-") or not ("://" in url or url.startswith("git@") or Path(url).is_absolute()):
        raise NodeManifestError(f"{where} ({node.name}): url {url!r} must be a git URL (https://, ssh://, git@, file://) or an absolute path")
    if not COMMIT_RE.match(node.commit):
        raise NodeManifestError(f"{where} ({node.name}): commit {node.commit!r} must be a git commit hash (7-40 hex digits)")
    return node


def node_name(url: str) -> str:
    """custom_nodes/ folder for a repository URL, as comfy-pack and ComfyUI-Manager name it."""
    tail = url.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def parse_manifest(path: Path) -> tuple[PinnedNode, ...]:
    if not path.exists():
        return ()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise NodeManifestError(f"{path}: not valid TOML ({exc})") from None
    raw = data.get("nodes", [])
    if not isinstance(raw, list):
        raise NodeManifestError(f"{path}: 'nodes' must be an array of tables ([[nodes]])")
    nodes = []
    for i, item in enumerate(raw):
        where = f"{path}: nodes[{i}]"
        if not isinstance(item, dict) or any(not isinstance(item.get(k), str) for k in ("name", "url", "commit")):
            raise NodeManifestError(f"{where}: expected a table with string name, url and commit")
        nodes.append(check_node(PinnedNode(item["name"], item["url"], item["commit"].lower()), where))
    names = [n.name for n in nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NodeManifestError(f"{path}: listed more than once: {dupes}")
    return tuple(nodes)


def write_manifest(path: Path, nodes: tuple[PinnedNode, ...]) -> None:
    blocks = [f"[[nodes]]\nname = {json.dumps(n.name)}\nurl = {json.dumps(n.url)}\ncommit = {json.dumps(n.commit)}\n" for n in nodes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join("\n" + b for b in blocks), encoding="utf-8")


def merge_nodes(existing: tuple[PinnedNode, ...], new: tuple[PinnedNode, ...]) -> tuple[tuple[PinnedNode, ...], list[str], list[str]]:
    """(merged manifest, names added, names already pinned alike); a different pin under the same name is refused."""
    by_name = {n.name: n for n in existing}
    added, kept = [], []
    for node in new:
        old = by_name.get(node.name)
        if old is None:
            by_name[node.name] = node
            added.append(node.name)
        elif (old.url, old.commit) == (node.url, node.commit):
            kept.append(node.name)
        else:
            raise NodeManifestError(
                f"custom node {node.name}: nodes.lock pins {old.url} at {old.commit}, the pack {node.url} at {node.commit}; "
                "remove or change one of them by hand")
    return tuple(by_name.values()), added, kept


# ---------------------------------------------------------------- install


def install_nodes(custom_nodes_dir: Path) -> dict[str, str]:
    """Clone every node of custom_nodes/nodes.lock at its commit; {name: 'ok' | 'installed'}."""
    nodes = parse_manifest(custom_nodes_dir / MANIFEST_NAME)
    if nodes and shutil.which("git") is None:
        raise NodeManifestError("git is not installed: it is needed to install the custom nodes of nodes.lock")
    return {node.name: install_node(node, custom_nodes_dir) for node in nodes}


def _pin_text(node: PinnedNode) -> str:
    return f"{node.url} {node.commit}\n"


def install_node(node: PinnedNode, custom_nodes_dir: Path) -> str:
    target = custom_nodes_dir / node.name
    pin = target / PIN_FILE
    if pin.is_file() and pin.read_text(encoding="utf-8") == _pin_text(node):
        return "ok"
    if target.exists() and not pin.is_file():
        raise NodeManifestError(f"{target} exists and was not installed from {MANIFEST_NAME}: move it away, or remove the node from {MANIFEST_NAME}")
    custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{node.name}-", dir=custom_nodes_dir) as tmp:
        clone = Path(tmp) / node.name
        _clone_at(node, clone)
        (clone / PIN_FILE).write_text(_pin_text(node), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)  # our own clone of an older pin
        clone.rename(target)
    return "installed"


def _git(args: list[str], cwd: Path | None, node: PinnedNode) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise NodeManifestError(f"custom node {node.name}: `git {' '.join(args)}` failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def _clone_at(node: PinnedNode, dest: Path) -> None:
    _git(["clone", "--quiet", "--no-checkout", "--", node.url, str(dest)], None, node)
    try:
        _git(["cat-file", "-e", f"{node.commit}^{{commit}}"], dest, node)
    except NodeManifestError:  # not on a branch the clone fetched: ask for the commit itself
        _git(["fetch", "--quiet", "origin", node.commit], dest, node)
    _git(["checkout", "--quiet", "--detach", node.commit], dest, node)
    head = _git(["rev-parse", "HEAD"], dest, node)
    if not head.startswith(node.commit):
        raise NodeManifestError(f"custom node {node.name}: checked out {head}, not the pinned {node.commit}")
    _git(["submodule", "update", "--quiet", "--init", "--recursive"], dest, node)
