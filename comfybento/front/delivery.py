"""Outputs of a live request as the JSON answer carries them: base64, or stored (local folder or S3) with their URLs.

Stored live outputs lie under `outputs/<folder>/` in the output storage the
batch jobs use (outputs/storage.py): a local folder, served at
`/outputs/<folder>/<file>`, or an S3 bucket, with presigned URLs. The folder is
a random id, and with API keys on `<random id>-<owner tag>` (front/ownership.py):
only its owner (or an operator) may read it.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from comfybento.config import Settings
from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.front.ownership import owner_tag
from comfybento.outputs.media import extension_for
from comfybento.outputs.storage import Storage, make_storage
from comfybento.workflows.schema import OutputItem

LIVE_PREFIX = "outputs"


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
