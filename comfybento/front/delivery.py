"""Outputs of a live request as the JSON answer carries them: base64, or stored (local folder or S3) with their URLs.

Stored live outputs lie under `outputs/<folder>/` in the output storage the
batch jobs use (outputs/storage.py): a local folder, served at
`/outputs/<folder>/<file>` (`router`, a route of the front's root app, front/root.py),
or an S3 bucket, with presigned URLs. The folder is a random id, and with API keys
on `<random id>-<owner tag>` (front/ownership.py): only its owner (or an operator) may read it.

They are kept for COMFYBENTO_OUTPUT_RETENTION_S after their request (front/retention.py
deletes each folder whole, its owner's tag with it); then their URLs answer 404.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response

from comfybento.config import Settings
from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.errors import NotFound
from comfybento.front.ownership import Caller, caller, owner_tag
from comfybento.outputs.media import extension_for, media_type_of
from comfybento.outputs.storage import Entry, Storage, make_storage
from comfybento.workflows.schema import OutputItem

LIVE_PREFIX = "outputs"
router = APIRouter()


def output_item(blob: OutputBlob, data: str | None = None, url: str | None = None) -> OutputItem:
    return OutputItem(name=blob.output, node_id=blob.node_id, index=blob.index, kind=blob.kind, media_type=blob.media_type,
                      width=blob.width, height=blob.height, data=data, url=url)


def live_folder(owner: str | None) -> str:
    """A new folder for one live request's outputs, tagged with its owner (the API key's name; None: keys off)."""
    folder = uuid.uuid4().hex
    return f"{folder}-{owner_tag(owner)}" if owner is not None else folder


def live_folder_tag(folder: str) -> str | None:
    """The owner tag a live output folder carries (None: made while keys were off)."""
    return folder.partition("-")[2] or None


def live_key(blob: OutputBlob, folder: str) -> str:
    return f"{LIVE_PREFIX}/{folder}/{blob.output}-{blob.index}.{extension_for(blob.media_type)}"


def outputs_as_urls(storage: Storage, result: ItemResult, base_url: str, owner: str | None) -> list[OutputItem]:
    """Store each output of `owner`'s request (blocking: call it in a thread) and answer with its URL instead of its bytes."""
    folder = live_folder(owner)
    items = []
    for blob in result.outputs:
        key = live_key(blob, folder)
        storage.put(key, blob.data, blob.media_type)
        items.append(output_item(blob, url=storage.url(key, base_url)))
    return items


@dataclass(frozen=True)
class LiveFolder:
    """One live request's stored outputs: the folder's key, when its newest file was written, its bytes."""

    prefix: str
    modified: float
    size: int


def live_folders(entries: list[Entry]) -> list[LiveFolder]:
    """The live output folders among a listing of `outputs/` (`Storage.entries(LIVE_PREFIX)`), oldest first."""
    folders: dict[str, tuple[float, int]] = {}
    for entry in entries:
        parts = entry.key.split("/")
        if len(parts) != 3 or parts[0] != LIVE_PREFIX:
            continue
        prefix = f"{LIVE_PREFIX}/{parts[1]}"
        modified, size = folders.get(prefix, (0.0, 0))
        folders[prefix] = (max(modified, entry.modified), size + entry.size)
    return sorted((LiveFolder(p, m, n) for p, (m, n) in folders.items()), key=lambda f: f.modified)


class StorageOnFirstUse:
    """The output storage, made on first call (S3 is reached only once a request asks for URLs)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._storage: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Storage:
        with self._lock:
            if self._storage is None:
                self._storage = make_storage(self._settings)
            return self._storage  # type: ignore[no-any-return]


def read_live_output(storage: Storage, folder: str, name: str, who: Caller | None = None) -> bytes:
    """A live request's output stored for its URL; its folder carries its owner's tag, which `who` must be able to see."""
    missing = NotFound(f"no such file: {folder}/{name}")  # the same answer for a missing file and another key's
    if who is not None and not who.can_see_tag(live_folder_tag(folder)):
        raise missing
    try:
        return storage.get(f"{LIVE_PREFIX}/{folder}/{name}")
    except NotFound:
        raise missing from None


def live_storage(request: Request) -> Storage:
    """The output storage of live requests, which the root app holds in its state (front/root.py)."""
    storage: Callable[[], Storage] = request.app.state.output_storage
    return storage()


@router.get("/outputs/{folder}/{name}", summary="One output of a live request asked for as a URL (local storage)",
            response_class=Response)
def live_file(folder: str, name: str, request: Request) -> Response:
    return Response(read_live_output(live_storage(request), folder, name, caller(request)), media_type=media_type_of(name))
