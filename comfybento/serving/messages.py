"""The small typed objects the front service and the engine service exchange."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from comfybento.workflows.schema import ImageOutput

ErrorKind = Literal["invalid", "node", "oom", "workflow", "internal"]


class EngineItem(BaseModel):
    """One request for one workflow: validated fields, uploaded images as base64 PNG."""

    values: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    submitted_at: float = 0.0


class ItemResult(BaseModel):
    ok: bool
    seed: int | None = None
    images: list[ImageOutput] = Field(default_factory=list)
    status: int = 200
    error: str | None = None
    error_kind: ErrorKind | None = None
    node_id: str | None = None
    class_type: str | None = None
    queue_ms: float = 0.0
    execution_ms: float = 0.0
    batch_size: int = 1
