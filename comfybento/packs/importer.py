"""`python -m comfybento import PACK.cpack.zip`: a comfy-pack pack into this project.

It writes, after checking everything first (a refused import writes nothing):
- workflows/<name>.json   the pack's workflow_api.json (name from the pack's file name; --force to overwrite);
- models.lock             an entry per model (path, size, sha256, source); an entry with the same path and sha256
                          is kept, the same path with another sha256 is refused;
- inputs/                 the pack's input/ files (the engine copies them into ComfyUI's input folder);
- custom_nodes/nodes.lock the custom nodes pinned to their commit (`python -m comfybento nodes install` clones them).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from comfybento.config import Settings
from comfybento.models.lock import ModelEntry, ModelLock, parse_lock
from comfybento.packs.nodes import MANIFEST_NAME, NodeManifestError, merge_nodes, parse_manifest, write_manifest
from comfybento.packs.reader import Pack, PackError, PackModel, read_pack, referenced_inputs
from comfybento.workflows.catalog import NAME_RE, RESERVED_NAMES

LOCK_HEADER = "# Every model file the workflows use: path under the models root, size in bytes, sha256, and where it comes from.\n"


@dataclass(frozen=True)
class ProjectPaths:
    workflows_dir: Path
    models_lock: Path
    custom_nodes_dir: Path
    inputs_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> ProjectPaths:
        return cls(settings.workflows_dir, settings.models_lock, settings.custom_nodes_dir, settings.inputs_dir)


@dataclass
class ImportResult:
    name: str
    workflow: Path
    models_added: list[str] = field(default_factory=list)
    models_kept: list[str] = field(default_factory=list)
    nodes_added: list[str] = field(default_factory=list)
    nodes_kept: list[str] = field(default_factory=list)
    inputs_written: list[str] = field(default_factory=list)
    inputs_kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def endpoint_name(pack_file: Path) -> str:
    """A valid endpoint name from a pack's file name: 'Pixel Art-v2.cpack.zip' -> 'pixel_art_v2'."""
    stem = pack_file.name
    for suffix in (".cpack.zip", ".zip"):
        stem = stem.removesuffix(suffix)
    name = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")
    name = name if name and name[0].isalpha() else f"pack_{name}".rstrip("_")
    return name[:64].rstrip("_")


def import_pack(pack_file: Path, paths: ProjectPaths, name: str | None = None, force: bool = False,
                sources: dict[str, dict[str, str]] | None = None) -> ImportResult:
    pack = read_pack(pack_file)
    name = name or endpoint_name(pack_file)
    if not NAME_RE.match(name) or name in RESERVED_NAMES:
        raise PackError(f"endpoint name {name!r} is not usable (lowercase letters, digits and '_', starting with a letter, not one of "
                        f"{sorted(RESERVED_NAMES)}); pass --name")
    target = paths.workflows_dir / f"{name}.json"
    if target.exists() and not force:
        raise PackError(f"{target} exists; pass --force to overwrite it, or --name to import under another name")
    lock = parse_lock(paths.models_lock)
    new_entries, kept = _plan_models(pack, lock, sources or {})
    manifest_path = paths.custom_nodes_dir / MANIFEST_NAME
    try:
        nodes, nodes_added, nodes_kept = merge_nodes(parse_manifest(manifest_path), pack.nodes)
    except NodeManifestError as exc:
        raise PackError(f"{pack.file}: {exc}") from None
    inputs_new, inputs_kept = _plan_inputs(pack, paths.inputs_dir, force)
    # Everything checked: write.
    paths.workflows_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(pack.workflow, indent=2) + "\n", encoding="utf-8")
    if new_entries:
        _append_lock(paths.models_lock, new_entries)
    if nodes_added:
        write_manifest(manifest_path, nodes)
    _write_inputs(pack, paths.inputs_dir, inputs_new)
    result = ImportResult(name=name, workflow=target, models_added=[e.path for e in new_entries], models_kept=kept,
                          nodes_added=nodes_added, nodes_kept=nodes_kept, inputs_written=inputs_new, inputs_kept=inputs_kept,
                          notes=list(pack.notes))
    result.notes += _summary_notes(pack)
    return result


def _plan_models(pack: Pack, lock: ModelLock, sources: dict[str, dict[str, str]]) -> tuple[list[ModelEntry], list[str]]:
    by_path = {e.path: e for e in lock.entries}
    new, kept = [], []
    for model in pack.models:
        old = by_path.get(model.path)
        if old is not None:
            if old.sha256 != model.sha256 or old.size != model.size:
                raise PackError(f"{pack.file}: model {model.path} is in models.lock with sha256 {old.sha256} (size {old.size}), "
                                f"the pack's has sha256 {model.sha256} (size {model.size}); rename one of them by hand")
            kept.append(model.path)
            continue
        new.append(ModelEntry(path=model.path, size=model.size, sha256=model.sha256, source=_source(pack, model, sources)))
    return new, kept


def _source(pack: Pack, model: PackModel, sources: dict[str, dict[str, str]]) -> dict[str, str]:
    source = sources.get(model.path) or model.source
    if source is None:
        raise PackError(f"{pack.file}: model {model.path} (sha256 {model.sha256}) has no download source in the pack "
                        f"(its source: {model.origin or 'none'}); give one with --source {model.path}=https://...")
    return source


def _toml_value(source: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in source.items()) + " }"


def _append_lock(lock_path: Path, entries: list[ModelEntry]) -> None:
    text = lock_path.read_text(encoding="utf-8") if lock_path.exists() else LOCK_HEADER
    blocks = "".join(f"\n[[models]]\npath = {json.dumps(e.path)}\nsize = {e.size}\nsha256 = {json.dumps(e.sha256)}\n"
                     f"source = {_toml_value(e.source)}\n" for e in entries)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.write_text(text.rstrip("\n") + "\n" + blocks, encoding="utf-8")
    parse_lock(lock_path)  # what was written reads back


def _plan_inputs(pack: Pack, inputs_dir: Path, force: bool) -> tuple[list[str], list[str]]:
    """(files to write, files already there alike); a file there with other content is refused unless force."""
    new, kept = [], []
    with zipfile.ZipFile(pack.file) as archive:
        for member in pack.inputs:
            rel = str(PurePosixPath(*PurePosixPath(member).parts[1:]))
            dest = inputs_dir / rel
            if dest.is_file() and dest.read_bytes() == archive.read(member):
                kept.append(rel)
            elif dest.exists() and not force:
                raise PackError(f"{pack.file}: {member} would replace {dest}, which differs; pass --force to overwrite it")
            else:
                new.append(rel)
    return new, kept


def _write_inputs(pack: Pack, inputs_dir: Path, rels: list[str]) -> None:
    with zipfile.ZipFile(pack.file) as archive:
        for rel in rels:
            dest = inputs_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(archive.read(f"input/{rel}"))


def _summary_notes(pack: Pack) -> list[str]:
    notes = [f"snapshot format: {pack.snapshot_format}; made with ComfyUI {pack.comfyui or '(commit not given)'}, "
             "served here with comfybento's pinned ComfyUI"]
    if pack.pips:
        notes.append(f"{len(pack.pips)} Python packages listed by the pack are not installed by the import; "
                     "add what its custom nodes need to requirements.txt")
    used = referenced_inputs(pack.workflow)
    missing = sorted(v for v in used if PurePosixPath(v).suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}
                     and f"input/{v}" not in pack.inputs)
    if missing:
        notes.append(f"the workflow names input files the pack does not carry: {missing}")
    return notes
