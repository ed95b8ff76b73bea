"""Content-addressed assets of Comfy API v2, kept in the jobs' storage (local folder or S3).

Keys (all under `comfy-v2/`):
- `blobs/<blake3 hex>`: the bytes, stored once however many assets name them;
- `assets/<uuid>.json`: an asset record (hash, size, content type, file path, owner, created_at); it is seen
  by whom front/ownership.py lets see its owner's objects;
- `holds/<owner tag>/<blake3 hex>`: the owner uploaded these bytes, so it may mint from their hash
  (the spec's trust boundary: a hash is a lookup key, never an authority; a miss and "not yours" look the same).
Job outputs are assets too, named `out_<job>_<item>_<n>` (views.py), read from the job's own results.

Retention (`expire`, run by jobs/retention.py): records and holds older than COMFYBENTO_OUTPUT_RETENTION_S
are deleted, and a blob once it is that old and no hold on it is left. Every mint writes its owner's hold
after its record, so a blob outlives every record over it.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from blake3 import blake3

from comfybento.errors import NotFound
from comfybento.front.compat.comfy_v2.errors import V2Error
from comfybento.front.ownership import Caller, owner_tag
from comfybento.outputs.storage import Entry, Storage

PREFIX = "comfy-v2"
HASH = re.compile(r"blake3:([0-9a-f]{64})")
HEX = re.compile(r"[0-9a-f]{64}")
ASSET_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class AssetRecord:
    id: str
    hash: str
    size_bytes: int
    content_type: str
    file_path: str | None
    created_at: str
    owner: str | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class Upload:
    """Bytes stored once, with everything over them: the records minted from them and their owners' holds."""

    hexd: str
    modified: float  # the newest write of any of its keys
    size: int
    keys: tuple[str, ...]  # records, then holds, then the blob: the order they are deleted in (a crash leaves no record without bytes)


def blake3_of(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


def parse_hash(value: str) -> str:
    """The hex of `blake3:<hex>`; a 422 naming the field otherwise."""
    match = HASH.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise V2Error(422, "invalid_request", f"hash: expected 'blake3:<64 hex digits>', got {str(value)[:80]!r}")
    return match.group(1)


def _owner_tag(owner: str | None) -> str:
    """A key-safe tag per API key name ("open" when keys are off)."""
    return owner_tag(owner) if owner is not None else "open"


def _exists(storage: Storage, key: str) -> bool:
    try:
        storage.get(key)
    except (NotFound, FileNotFoundError, KeyError):
        return False
    return True


class AssetStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # ---------------------------------------------------------- write

    def upload(self, data: bytes, content_type: str, file_path: str | None, owner: str | None,
               expected_hash: str | None = None) -> tuple[AssetRecord, bool]:
        """Store the bytes (once per hash) and mint an asset over them: (record, whether the bytes are new to this owner).

        "New" is per owner: that another key uploaded the same bytes is never confirmed (front/ownership.py)."""
        digest = blake3_of(data)
        if expected_hash is not None and parse_hash(expected_hash) != digest.split(":", 1)[1]:
            raise V2Error(409, "hash_mismatch", f"expected_hash: the bytes hash to {digest}, not {expected_hash}")
        hexd = digest.split(":", 1)[1]
        blob, hold = f"{PREFIX}/blobs/{hexd}", f"{PREFIX}/holds/{_owner_tag(owner)}/{hexd}"
        new = not (_exists(self.storage, hold) and _exists(self.storage, blob))
        if not _exists(self.storage, blob):
            self.storage.put(blob, data, content_type)
        record = self._mint(digest, len(data), content_type, file_path, owner)
        self.storage.put(hold, b"1", "text/plain")  # after the record: the hold (and so the blob) outlives it
        return record, new

    def from_hash(self, hash_value: str, file_path: str | None, owner: str | None) -> AssetRecord:
        hexd = parse_hash(hash_value)
        if not self.mintable(hash_value, owner):
            raise V2Error(404, "blob_not_found", f"hash: no blob {hash_value} this caller may mint from")
        data = self.storage.get(f"{PREFIX}/blobs/{hexd}")
        record = self._mint(f"blake3:{hexd}", len(data), content_type_of(file_path), file_path, owner)
        self.storage.put(f"{PREFIX}/holds/{_owner_tag(owner)}/{hexd}", b"1", "text/plain")  # renewed: the blob lives on
        return record

    def _mint(self, digest: str, size: int, content_type: str, file_path: str | None, owner: str | None) -> AssetRecord:
        record = AssetRecord(id=str(uuid.uuid4()), hash=digest, size_bytes=size, content_type=content_type or "application/octet-stream",
                             file_path=file_path, created_at=iso(datetime.now(UTC).timestamp()), owner=owner)
        self.storage.put(f"{PREFIX}/assets/{record.id}.json", json.dumps(asdict(record)).encode(), "application/json")
        return record

    def delete(self, asset_id: str, caller: Caller) -> None:
        self.get(asset_id, caller)  # 404 unless it exists and the caller may see it
        self.storage.delete(f"{PREFIX}/assets/{asset_id}.json")

    # ---------------------------------------------------------- read

    def mintable(self, hash_value: str, owner: str | None) -> bool:
        hexd = parse_hash(hash_value)
        return _exists(self.storage, f"{PREFIX}/holds/{_owner_tag(owner)}/{hexd}") and _exists(self.storage, f"{PREFIX}/blobs/{hexd}")

    def get(self, asset_id: str, caller: Caller) -> AssetRecord:
        """An uploaded asset `caller` may see; 404 (the same for "not yours") otherwise."""
        if not ASSET_ID.fullmatch(asset_id):
            raise V2Error(404, "not_found", f"asset {asset_id[:80]!r} does not exist")
        try:
            doc = json.loads(self.storage.get(f"{PREFIX}/assets/{asset_id}.json"))
        except (NotFound, FileNotFoundError, KeyError):
            raise V2Error(404, "not_found", f"asset {asset_id!r} does not exist") from None
        record = AssetRecord(**doc)
        if not caller.can_see(record.owner):
            raise V2Error(404, "not_found", f"asset {asset_id!r} does not exist")
        return record

    def content(self, record: AssetRecord) -> bytes:
        try:
            return self.storage.get(f"{PREFIX}/blobs/{record.hash.split(':', 1)[1]}")
        except (NotFound, FileNotFoundError, KeyError):  # expired meanwhile
            raise V2Error(404, "not_found", f"asset {record.id!r} does not exist") from None

    # ---------------------------------------------------------- retention

    def expire(self, before: float) -> tuple[int, int]:
        """Delete the records and holds written before `before`, then the blobs as old with no hold left:
        (records deleted, bytes of blobs deleted)."""
        records, holds, blobs = self._listing()
        old_records = [e for e in records if e.modified < before]
        for entry in old_records:
            self.storage.delete(entry.key)
        held = set()
        for entry in holds:
            if entry.modified < before:
                self.storage.delete(entry.key)
            else:
                held.add(_hex_of(entry))
        freed = 0
        for entry in blobs:
            if entry.modified < before and _hex_of(entry) not in held:
                self.storage.delete(entry.key)
                freed += entry.size
        return len(old_records), freed

    def uploads(self) -> list[Upload]:
        """Every blob with its records and holds, oldest first (freeing space early; reads every record)."""
        records, holds, blobs = self._listing()
        keys: dict[str, list[Entry]] = defaultdict(list)
        for entry in records:
            try:
                keys[parse_hash(json.loads(self.storage.get(entry.key))["hash"])].append(entry)
            except (NotFound, ValueError, KeyError, TypeError, V2Error):
                continue  # deleted meanwhile, or unreadable: never deleted early
        for entry in [*holds, *blobs]:
            keys[_hex_of(entry)].append(entry)
        found = [Upload(hexd, max(e.modified for e in entries), sum(e.size for e in entries), tuple(e.key for e in entries))
                 for hexd, entries in keys.items()]
        return sorted(found, key=lambda u: u.modified)

    def drop(self, upload: Upload) -> None:
        """Delete the blob and everything over it: its records answer 404 from now on."""
        for key in upload.keys:
            self.storage.delete(key)

    def _listing(self) -> tuple[list[Entry], list[Entry], list[Entry]]:
        """(asset records, holds, blobs) as stored."""
        records, holds, blobs = [], [], []
        for entry in self.storage.entries(PREFIX):
            kind, _, name = entry.key.removeprefix(f"{PREFIX}/").partition("/")
            if kind == "assets" and ASSET_ID.fullmatch(name.removesuffix(".json")):
                records.append(entry)
            elif kind == "holds" and HEX.fullmatch(name.rpartition("/")[2]):
                holds.append(entry)
            elif kind == "blobs" and HEX.fullmatch(name):
                blobs.append(entry)
        return records, holds, blobs

    def resolve_reference(self, kind: str, literal: Any, caller: Caller) -> str:
        """A graph's `core/ASSET` reference -> the file field's value (base64 of the asset's bytes); 422 missing_asset otherwise."""
        info = literal.get("info") if isinstance(literal, dict) and literal.get("__type") == "core/ASSET" else None
        asset_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(asset_id, str):
            raise V2Error(422, "missing_asset", f"a {kind} input must be a core/ASSET reference "
                          f"{{'__type': 'core/ASSET', 'info': {{'id': <asset id>}}}}; got {str(literal)[:80]!r} (upload it to /api/v2/assets)")
        try:
            record = self.get(asset_id, caller)
        except V2Error:
            raise V2Error(422, "missing_asset", f"asset {asset_id[:80]!r} does not exist (or is not yours)") from None
        return base64.b64encode(self.content(record)).decode()


def _hex_of(entry: Entry) -> str:
    return entry.key.rpartition("/")[2]


def content_type_of(file_path: str | None) -> str:
    guessed = mimetypes.guess_type(file_path or "")[0]
    return guessed or "application/octet-stream"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
