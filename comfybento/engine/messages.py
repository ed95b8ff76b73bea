"""The small typed objects the front and the engine exchange, and their wire frames.

A request (EngineItem) travels as one frame: its fields in the header, uploaded
files as raw parts. The engine answers with one frame per event; an output's
encoded bytes travel as a raw part, once. Nothing here imports torch.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field

from comfybento.errors import ErrorKind, describe
from comfybento.outputs.media import OutputKind
from comfybento.scheduling.events import Done, Event, Failed, OutputReady, Preview, Progress, Queued, Started

OutputFormat = Literal["png", "webp", "jpeg"]


class EngineItem(BaseModel):
    """One request for one workflow: validated fields; uploaded files as bytes."""

    values: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    submitted_at: float = 0.0
    output_format: OutputFormat | None = None  # None: the workflow's default
    output_quality: int | None = None  # WebP/JPEG quality; None: the workflow's default
    request_id: str = ""
    file_suffixes: dict[str, str] = Field(default_factory=dict)  # file field -> its upload's extension (".wav")
    background: bool = False  # a batch-job item: the scheduler runs live requests of its shape first


class OutputBlob(BaseModel):
    """One output of one request: an encoded image, a file an output node wrote, or a text (UTF-8)."""

    output: str
    node_id: str
    index: int
    width: int | None = None
    height: int | None = None
    media_type: str
    kind: OutputKind = "image"
    data: bytes = b""


class ItemResult(BaseModel):
    ok: bool
    seed: int | None = None
    outputs: list[OutputBlob] = Field(default_factory=list)
    status: int = 200
    error: str | None = None
    error_kind: ErrorKind | None = None
    node_id: str | None = None
    class_type: str | None = None
    queue_ms: float = 0.0
    execution_ms: float = 0.0
    batch_size: int = 1

    @classmethod
    def failure(cls, exc: Exception, seed: int | None = None) -> ItemResult:
        return cls(ok=False, seed=seed, **describe(exc))


# ---------------------------------------------------------------- frames


def item_to_frame(workflow: str, item: EngineItem) -> tuple[dict[str, Any], list[bytes]]:
    values, files, parts = {}, [], []
    for name, value in item.values.items():
        if isinstance(value, bytes):
            files.append(name)
            parts.append(value)
        else:
            values[name] = value
    header = item.model_dump(exclude={"values"})
    header.update(workflow=workflow, values=values, files=files)
    return header, parts


def item_from_frame(header: dict[str, Any], parts: list[bytes]) -> tuple[str, EngineItem]:
    header = dict(header)
    workflow = str(header.pop("workflow", ""))
    files = header.pop("files", [])
    if len(files) != len(parts):
        raise ValueError(f"{len(files)} file fields but {len(parts)} parts")
    values = {**header.pop("values", {}), **dict(zip(files, parts, strict=True))}
    return workflow, EngineItem(values=values, **header)


def event_to_frame(event: Event) -> tuple[dict[str, Any], list[bytes]]:
    if isinstance(event, Queued):
        return {"event": "queued", "position": event.position}, []
    if isinstance(event, Started):
        return {"event": "started", "batch_size": event.batch_size, "queue_ms": event.queue_ms}, []
    if isinstance(event, Progress):
        return {"event": "progress", "value": event.value, "max": event.max, "node_id": event.node_id}, []
    if isinstance(event, Preview):
        return {"event": "preview", "media_type": event.media_type}, [event.data]
    if isinstance(event, OutputReady):
        blob: OutputBlob = event.output
        return {"event": "output", **blob.model_dump(exclude={"data"})}, [blob.data]
    if isinstance(event, Done):
        return {"event": "done", "result": event.result.model_dump(exclude={"outputs"})}, []
    if isinstance(event, Failed):
        return {"event": "failed", "result": ItemResult.failure(event.error).model_dump(exclude={"outputs"})}, []
    raise TypeError(f"not an event: {event!r}")


def preview_header(header: dict[str, Any], parts: list[bytes]) -> dict[str, Any]:
    """A preview frame as a JSON-able event: its image (the frame's one part) as base64 under "data"."""
    return {"event": "preview", "media_type": header.get("media_type", "image/jpeg"), "data": base64.b64encode(parts[0]).decode("ascii") if parts else ""}
