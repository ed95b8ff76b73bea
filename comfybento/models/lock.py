"""models.lock: every model file the workflows use, with size, sha256 and source.

Format (TOML):

    [[models]]
    path = "checkpoints/v1-5-pruned-emaonly.safetensors"   # under the models root
    size = 4265146304
    sha256 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    source = { hf = "stable-diffusion-v1-5/stable-diffusion-v1-5", revision = "main", file = "v1-5-pruned-emaonly.safetensors" }
    # or  source = { url = "https://example.com/model.safetensors" }
    # or  source = { generator = "tiny-sd" }
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from comfybento.errors import ModelLockError

SOURCE_KINDS = ("hf", "url", "generator")
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelEntry:
    path: str  # posix path under the models root, e.g. "checkpoints/x.safetensors"
    size: int
    sha256: str
    source: dict[str, str] = field(hash=False, compare=False)

    @property
    def folder(self) -> str:
        return PurePosixPath(self.path).parts[0]

    @property
    def filename(self) -> str:
        """Name as ComfyUI lists it in its folder (may contain subfolders)."""
        return str(PurePosixPath(*PurePosixPath(self.path).parts[1:]))

    def local_path(self, models_dir: Path) -> Path:
        return models_dir.joinpath(*PurePosixPath(self.path).parts)


@dataclass(frozen=True)
class ModelLock:
    entries: tuple[ModelEntry, ...]

    def find(self, folder: str | None, filename: str) -> ModelEntry | None:
        """The entry for a file ComfyUI names `filename` in `folder` (any folder if None)."""
        filename = filename.replace("\\", "/")
        for entry in self.entries:
            if entry.filename == filename and (folder is None or entry.folder == folder):
                return entry
        return None


def parse_lock(path: Path) -> ModelLock:
    if not path.exists():
        return ModelLock(entries=())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ModelLockError(f"{path}: not valid TOML ({exc})") from None
    raw = data.get("models", [])
    if not isinstance(raw, list):
        raise ModelLockError(f"{path}: 'models' must be an array of tables ([[models]])")
    entries = tuple(_entry(path, i, item) for i, item in enumerate(raw))
    paths = [e.path for e in entries]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise ModelLockError(f"{path}: listed more than once: {dupes}")
    return ModelLock(entries=entries)


def _entry(lock_path: Path, index: int, item: Any) -> ModelEntry:
    where = f"{lock_path}: models[{index}]"
    if not isinstance(item, dict):
        raise ModelLockError(f"{where}: expected a table")
    missing = [k for k in ("path", "size", "sha256", "source") if k not in item]
    if missing:
        raise ModelLockError(f"{where}: missing {missing}")
    path = str(item["path"]).replace("\\", "/")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2:
        raise ModelLockError(f"{where}: path {path!r} must be relative, like 'checkpoints/model.safetensors'")
    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ModelLockError(f"{where} ({path}): size must be a positive integer")
    sha = str(item["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelLockError(f"{where} ({path}): sha256 must be 64 hex digits")
    source = item["source"]
    if not isinstance(source, dict) or sum(k in source for k in SOURCE_KINDS) != 1:
        raise ModelLockError(f"{where} ({path}): source must have exactly one of {list(SOURCE_KINDS)}")
    if "url" in source and not str(source["url"]).startswith("https://"):
        raise ModelLockError(f"{where} ({path}): source url must be https://")
    return ModelEntry(path=path, size=size, sha256=sha, source={k: str(v) for k, v in source.items()})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def cached_sha256(path: Path) -> str:
    """sha256 of a file, remembered next to it while its size and mtime are unchanged."""
    stat = path.stat()
    stamp = _stamp_path(path)
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    try:
        stamp.write_text(json.dumps({"key": key, "sha256": digest}))
    except OSError:
        pass
    return digest


def verify_entry(entry: ModelEntry, models_dir: Path, check_hash: bool = True) -> str | None:
    """None if the file is present and matches; else a message naming the file."""
    path = entry.local_path(models_dir)
    if not path.is_file():
        return f"{entry.path}: missing (expected at {path}); run `python -m comfybento models fetch`"
    size = path.stat().st_size
    if size != entry.size:
        return f"{entry.path}: size {size} does not match models.lock ({entry.size})"
    if check_hash:
        digest = cached_sha256(path)
        if digest != entry.sha256:
            return f"{entry.path}: sha256 {digest} does not match models.lock ({entry.sha256}); refusing to use it"
    return None


def verify_all(lock: ModelLock, models_dir: Path, check_hash: bool = True) -> list[str]:
    return [m for e in lock.entries if (m := verify_entry(e, models_dir, check_hash)) is not None]


def remove_if_corrupt(entry: ModelEntry, models_dir: Path) -> None:
    path = entry.local_path(models_dir)
    for p in (path, _stamp_path(path)):
        if p.exists():
            os.remove(p)
