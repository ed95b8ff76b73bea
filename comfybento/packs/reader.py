"""Read a comfy-pack pack (`.cpack.zip`) into what comfybento needs from it.

The layout comfy-pack writes (its ComfyUI node's `/bentoml/pack` route):

    workflow_api.json   the graph in API format (comfybento serves this)
    workflow.json       the same graph in UI format (not used here)
    snapshot.json       comfyui (commit), python, models [{filename: "models/<folder>/<file>", size, sha256,
                        disabled, source: {source: "huggingface"|"civitai", repo, commit, path, download_url, url}}]
                        and the custom nodes:
                          comfy-pack >= 0.4: a ComfyUI-Manager snapshot: git_custom_nodes {url: {hash, disabled}},
                                             cnr_custom_nodes {name: version}, file_custom_nodes, pips {spec: ""}
                          comfy-pack < 0.4:  custom_nodes [{url, commit_hash, disabled}], and requirements.txt
    input/              files from ComfyUI's input folder the workflow uses

comfy-pack's own parser of the workflow (`comfy_pack.utils.parse_workflow`) refuses UI-format graphs and
finds its input nodes; comfy-pack has no reader of snapshot.json (its `unpack` reads it inline while it
clones ComfyUI and the nodes from GitHub), so that part is read here.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from comfybento.errors import ConfigError
from comfybento.packs.nodes import NodeManifestError, PinnedNode, check_node, node_name

SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# Nodes every pack lists that comfybento does not need: the manager, and comfy-pack's own CPack* nodes
# (comfybento implements those itself, see comfybento/runtime/nodes.py).
NOT_NEEDED = {"comfyui-manager": "ComfyUI-Manager is not needed to serve", "comfy-pack": "comfybento implements comfy-pack's CPack* nodes"}


class PackError(ConfigError):
    """A pack cannot be imported; the message names the file and what is missing or wrong."""


@dataclass(frozen=True)
class PackModel:
    path: str  # under the models root, e.g. "checkpoints/x.safetensors"
    size: int
    sha256: str
    source: dict[str, str] | None  # in models.lock's form; None when the pack gives none usable
    origin: dict[str, Any]  # the pack's own source, for messages


@dataclass(frozen=True)
class Pack:
    file: Path
    snapshot_format: str  # "comfy-pack >= 0.4" or "comfy-pack < 0.4"
    workflow: dict[str, Any]
    models: tuple[PackModel, ...]
    nodes: tuple[PinnedNode, ...]
    inputs: tuple[str, ...]  # members under input/, e.g. "input/example.png"
    pips: tuple[str, ...]
    comfyui: str
    notes: tuple[str, ...]  # what was left out, and why


def read_pack(file: Path) -> Pack:
    try:
        archive = zipfile.ZipFile(file)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackError(f"{file}: not a readable zip file ({exc})") from None
    with archive:
        names = set(archive.namelist())
        for required in ("workflow_api.json", "snapshot.json"):
            if required not in names:
                raise PackError(f"{file}: no {required} in the pack; export it again with comfy-pack's Package button")
        workflow = _workflow(file, _json(archive, file, "workflow_api.json"))
        snapshot = _json(archive, file, "snapshot.json")
        if not isinstance(snapshot, dict):
            raise PackError(f"{file}: snapshot.json must be a JSON object")
        requirements = archive.read("requirements.txt").decode("utf-8", "replace") if "requirements.txt" in names else ""
    new_format = "pips" in snapshot
    notes: list[str] = []
    nodes = _manager_nodes(file, snapshot, notes) if new_format else _old_nodes(file, snapshot, notes)
    pips = tuple(snapshot["pips"]) if new_format else tuple(ln.strip() for ln in requirements.splitlines() if ln.strip() and not ln.startswith("#"))
    return Pack(file=file, snapshot_format="comfy-pack >= 0.4" if new_format else "comfy-pack < 0.4", workflow=workflow,
                models=_models(file, snapshot, notes), nodes=nodes, inputs=_inputs(file, names), pips=pips,
                comfyui=str(snapshot.get("comfyui") or ""), notes=tuple(notes))


def _json(archive: zipfile.ZipFile, file: Path, member: str) -> Any:
    try:
        return json.loads(archive.read(member))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{file}: {member} is not valid JSON ({exc})") from None


def _workflow(file: Path, workflow: Any) -> dict[str, Any]:
    """The API-format graph, checked with comfy-pack's own parser (which refuses a UI-format file)."""
    from comfy_pack.utils import parse_workflow

    if not isinstance(workflow, dict) or not workflow:
        raise PackError(f"{file}: workflow_api.json must be a JSON object of nodes")
    try:
        parse_workflow(copy.deepcopy(workflow))
    except ValueError as exc:
        raise PackError(f"{file}: workflow_api.json is not in API format: {' '.join(str(exc).split())}") from None
    except (KeyError, TypeError, AttributeError):
        pass  # a node without class_type/inputs: named below
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs"), dict):
            raise PackError(f"{file}: workflow_api.json node {node_id} needs a class_type and an inputs object")
    return workflow


def referenced_inputs(workflow: dict[str, Any]) -> set[str]:
    """Every string value of a node input: a file in input/ is used when one of them names it."""
    return {v for node in workflow.values() for v in node["inputs"].values() if isinstance(v, str)}


def _models(file: Path, snapshot: dict[str, Any], notes: list[str]) -> tuple[PackModel, ...]:
    raw = snapshot.get("models")
    if not isinstance(raw, list):
        raise PackError(f"{file}: snapshot.json has no 'models' list (each model's filename, size, sha256 and source)")
    models = []
    for i, item in enumerate(raw):
        label = f"{file}: snapshot.json models[{i}]" + (f" ({item.get('filename')})" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            raise PackError(f"{label}: expected an object")
        if item.get("disabled"):
            notes.append(f"model {item.get('filename')}: not selected when the pack was made (disabled); left out")
            continue
        missing = [k for k in ("filename", "size", "sha256") if not item.get(k)]
        if missing:
            raise PackError(f"{label}: missing {', '.join(missing)}; comfybento pins every model by size and sha256")
        models.append(_model(label, item))
    return tuple(models)


def _model(label: str, item: dict[str, Any]) -> PackModel:
    path = PurePosixPath(str(item["filename"]).replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 3 or path.parts[0] != "models":
        raise PackError(f"{label}: filename must be models/<folder>/<file> under ComfyUI's root")
    sha, size = str(item["sha256"]), item["size"]
    if not SHA_RE.match(sha):
        raise PackError(f"{label}: sha256 {sha!r} is not 64 hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise PackError(f"{label}: size {size!r} is not a positive integer")
    raw = item.get("source")
    origin: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return PackModel(path=str(PurePosixPath(*path.parts[1:])), size=size, sha256=sha.lower(), source=lock_source(origin), origin=origin)


def lock_source(origin: dict[str, Any]) -> dict[str, str] | None:
    """comfy-pack's model source in models.lock's form: a Hugging Face repo/revision/file, else its https download URL."""
    repo, path, commit = (str(origin.get(k) or "") for k in ("repo", "path", "commit"))
    if origin.get("source") == "huggingface" and repo and path and not repo.startswith(("datasets/", "spaces/")):
        return {"hf": repo, "revision": commit, "file": path} if commit else {"hf": repo, "file": path}
    url = str(origin.get("download_url") or "")
    return {"url": url} if url.startswith("https://") else None


def _pinned(file: Path, url: Any, commit: Any, where: str) -> PinnedNode:
    if not isinstance(url, str) or not url.strip():
        raise PackError(f"{file}: snapshot.json {where}: no git url")
    if not isinstance(commit, str) or not commit.strip():
        raise PackError(f"{file}: snapshot.json {where} ({url}): no commit; comfybento pins every custom node to a commit")
    try:
        return check_node(PinnedNode(node_name(url.strip()), url.strip(), commit.strip().lower()), f"{file}: snapshot.json {where}")
    except NodeManifestError as exc:
        raise PackError(str(exc)) from None


def _keep(node: PinnedNode, notes: list[str]) -> bool:
    reason = NOT_NEEDED.get(node.name.lower())
    if reason:
        notes.append(f"custom node {node.name}: left out ({reason})")
    return reason is None


def _old_nodes(file: Path, snapshot: dict[str, Any], notes: list[str]) -> tuple[PinnedNode, ...]:
    raw = snapshot.get("custom_nodes")
    if not isinstance(raw, list):
        raise PackError(f"{file}: snapshot.json has neither 'custom_nodes' (comfy-pack < 0.4) nor 'pips' and "
                        "'git_custom_nodes' (comfy-pack >= 0.4): the pack does not say which custom nodes it needs")
    nodes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PackError(f"{file}: snapshot.json custom_nodes[{i}]: expected an object with url and commit_hash")
        if item.get("disabled"):
            continue
        node = _pinned(file, item.get("url"), item.get("commit_hash"), f"custom_nodes[{i}]")
        if _keep(node, notes):
            nodes.append(node)
    return tuple(nodes)


def _manager_nodes(file: Path, snapshot: dict[str, Any], notes: list[str]) -> tuple[PinnedNode, ...]:
    git_nodes = snapshot.get("git_custom_nodes") or {}
    if not isinstance(git_nodes, dict):
        raise PackError(f"{file}: snapshot.json git_custom_nodes must be an object {{url: {{hash, disabled}}}}")
    nodes = []
    for url, info in git_nodes.items():
        info = info if isinstance(info, dict) else {}
        if info.get("disabled"):
            continue
        node = _pinned(file, url, info.get("hash"), "git_custom_nodes")
        if _keep(node, notes):
            nodes.append(node)
    registry = snapshot.get("cnr_custom_nodes") or {}
    unpinnable = sorted(f"{n}@{v}" for n, v in (registry.items() if isinstance(registry, dict) else [])
                        if n.lower() not in NOT_NEEDED and n.lower() != "comfyui-manager")
    if unpinnable:
        raise PackError(f"{file}: custom nodes {unpinnable} come from the Comfy registry (cnr_custom_nodes), which gives no git url "
                        "and commit to pin; install them from git in ComfyUI (ComfyUI-Manager: 'Switch version' > nightly) and pack again")
    for item in snapshot.get("file_custom_nodes") or []:
        if isinstance(item, dict) and not item.get("disabled"):
            notes.append(f"single-file custom node {item.get('filename')}: left out (the pack does not carry it)")
    return tuple(nodes)


def _inputs(file: Path, names: set[str]) -> tuple[str, ...]:
    inputs = []
    for name in sorted(names):
        if not name.startswith("input/") or name.endswith("/"):
            continue
        parts = PurePosixPath(name).parts
        if ".." in parts or "\\" in name or name.startswith("/"):
            raise PackError(f"{file}: input file {name!r} has an unsafe path")
        if not any(p.startswith(".") for p in parts):  # .DS_Store and the like are left out
            inputs.append(name)
    return tuple(inputs)
