"""Each caller's ComfyUI user data: the editor's settings (comfy.settings.json) and saved files (workflows/, ...).

A folder per API key under COMFYBENTO_USERDATA_DIR (the owner tag of the key's name, front/ownership.py; "default"
when keys are off, as ComfyUI's single user): one key never sees another's files, an operator included (these are
a person's editor state, not objects to support). A name is a relative path of plain segments; anything else (an
absolute path, `..`, a backslash, a control character) is a 400 naming it. A file over COMFYBENTO_USERDATA_MAX_BYTES,
or one that would take the key's files over COMFYBENTO_USERDATA_QUOTA_BYTES, is a 413 naming the limit. Writes are
atomic (a temporary file renamed over the old one).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfybento.config import Settings
from comfybento.errors import Conflict, InvalidRequest, NotFound, TooLarge
from comfybento.front.atomic_file import write_atomically
from comfybento.front.ownership import Caller

SETTINGS_FILE = "comfy.settings.json"
DEFAULT_USER = "default"
MAX_NAME_CHARS = 512
TEMP_PREFIX = ".upload-"  # a write in progress (listings leave it out)
MAX_SEGMENT_BYTES = 255  # one name in a path: the file systems' limit
_BAD_SEGMENT = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|]')


@dataclass(frozen=True)
class UserData:
    """One caller's folder and the limits on what it holds."""

    root: Path
    max_bytes: int
    quota_bytes: int

    @classmethod
    def of(cls, settings: Settings, caller: Caller) -> UserData:
        return cls(settings.userdata_dir / (caller.tag or DEFAULT_USER), settings.userdata_max_bytes, settings.userdata_quota_bytes)

    def path(self, name: str, field: str = "file") -> Path:
        """The file `name` names in the folder; a 400 naming it for anything that is not a plain relative path."""
        parts = name.split("/")
        if not name or len(name) > MAX_NAME_CHARS or any(p in ("", ".", "..") or _BAD_SEGMENT.search(p) for p in parts):
            raise InvalidRequest(f"{field}: {name!r} is not a file name in your user data (a relative path of plain names, no '..')")
        if any(len(p.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for p in parts):
            raise InvalidRequest(f"{field}: {name!r} has a name of more than {MAX_SEGMENT_BYTES} bytes between its '/'")
        return self.root.joinpath(*parts)

    def _room_for(self, path: Path, name: str, field: str) -> None:
        """A 409 naming `name` when a file stands where one of its folders would be (a/b.json when a is a file)."""
        for folder in path.relative_to(self.root).parents:
            if (self.root / folder).is_file():
                raise Conflict(f"{field}: {name!r} is under {folder.as_posix()!r}, which is a file")

    def read(self, name: str) -> bytes:
        path = self.path(name)
        if not path.is_file():
            raise NotFound(f"no such user data file: {name!r}")
        return path.read_bytes()

    def write(self, name: str, data: bytes, overwrite: bool = True) -> Path:
        path = self.path(name)
        if len(data) > self.max_bytes:
            raise TooLarge(f"file: {name!r} is {len(data)} bytes, over the limit of {self.max_bytes} bytes per user data file "
                           "(COMFYBENTO_USERDATA_MAX_BYTES)")
        if path.is_dir():
            raise InvalidRequest(f"file: {name!r} is a folder")
        self._room_for(path, name, "file")
        if path.exists() and not overwrite:
            raise Conflict(f"file: {name!r} exists already (overwrite=false)")
        used = self.used_bytes() - (path.stat().st_size if path.is_file() else 0)
        if used + len(data) > self.quota_bytes:
            raise TooLarge(f"file: {name!r} ({len(data)} bytes) would take your user data over its limit of {self.quota_bytes} "
                           f"bytes ({used} used; COMFYBENTO_USERDATA_QUOTA_BYTES)")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, TEMP_PREFIX)
        return path

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.is_file():
            raise NotFound(f"no such user data file: {name!r}")
        path.unlink()

    def move(self, name: str, dest: str, overwrite: bool = True) -> Path:
        source, target = self.path(name), self.path(dest, "dest")
        if not source.is_file():
            raise NotFound(f"no such user data file: {name!r}")
        if target.is_dir():
            raise InvalidRequest(f"dest: {dest!r} is a folder")
        self._room_for(target, dest, "dest")
        if target.exists() and not overwrite:
            raise Conflict(f"dest: {dest!r} exists already (overwrite=false)")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def info(self, path: Path, base: Path | None = None) -> dict[str, Any]:
        stat = path.stat()
        # as ComfyUI's full_info: seconds since the epoch
        return {"path": path.relative_to(base or self.root).as_posix(), "size": stat.st_size, "modified": stat.st_mtime,
                "created": stat.st_ctime}

    def listing(self, directory: str, recurse: bool, full_info: bool, split: bool) -> list[Any]:
        """GET /userdata?dir=: the files in `directory` (a 404 when it does not exist), as ComfyUI lists them."""
        folder = self.path(directory.strip("/"), "dir")
        if not folder.is_dir():
            raise NotFound(f"no such user data folder: {directory!r}")
        found = sorted(p for p in (folder.rglob("*") if recurse else folder.iterdir()) if p.is_file() and not _is_temp(p))
        if full_info:
            return [self.info(p, folder) for p in found]
        names = [p.relative_to(folder).as_posix() for p in found]
        return [[n, *n.split("/")] for n in names] if split else names

    def tree(self, directory: str) -> list[dict[str, Any]]:
        """GET /v2/userdata?path=: the folders and files under `directory` ("": the whole folder), folders first."""
        folder = self.path(directory.strip("/"), "path") if directory.strip("/") else self.root
        if not folder.exists():
            if folder == self.root:
                return []
            raise NotFound(f"no such user data folder: {directory!r}")
        if not folder.is_dir():
            raise InvalidRequest(f"path: {directory!r} is a file, not a folder")
        entries: list[dict[str, Any]] = []
        for p in folder.rglob("*"):
            if _is_temp(p):
                continue
            entry: dict[str, Any] = {"name": p.name, "path": p.relative_to(self.root).as_posix(), "type": "directory" if p.is_dir() else "file"}
            if p.is_file():
                stat = p.stat()
                entry.update(size=stat.st_size, modified=stat.st_mtime)
            entries.append(entry)
        return sorted(entries, key=lambda e: (e["type"] != "directory", e["name"].lower()))

    def settings(self) -> dict[str, Any]:
        """The editor's settings (an unreadable file reads as none, as ComfyUI does)."""
        try:
            value = json.loads(self.read(SETTINGS_FILE))
        except (NotFound, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def save_settings(self, values: dict[str, Any]) -> None:
        self.write(SETTINGS_FILE, json.dumps(values, indent=2).encode())


def _is_temp(path: Path) -> bool:
    return path.name.startswith(TEMP_PREFIX)
