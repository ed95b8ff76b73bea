"""Per-request events, from the moment a request is queued until it is done or failed.

The scheduler emits Queued, Started and Failed; the engine emits Progress,
Preview (only when previews are on), OutputReady and Done. A request's sink receives them in that order, exactly
one terminal event (Done or Failed) last. They are plain data: the engine's
HTTP route turns them into frames (engine/wire.py), the job runner into
per-item progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Queued:
    position: int  # requests waiting ahead of this one when it arrived (0: runs next)


@dataclass(frozen=True)
class Started:
    batch_size: int  # requests sharing this execution
    queue_ms: float


@dataclass(frozen=True)
class Progress:
    value: int  # sampler step i of max
    max: int
    node_id: str | None = None


@dataclass(frozen=True)
class Preview:
    data: bytes  # a small encoded image of the latent being sampled (COMFYBENTO_PREVIEWS)
    media_type: str = "image/jpeg"


@dataclass(frozen=True)
class OutputReady:
    output: Any  # an encoded output (engine.messages.OutputBlob)


@dataclass(frozen=True)
class Done:
    result: Any  # engine.messages.ItemResult, without the outputs already sent


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Queued | Started | Progress | Preview | OutputReady | Done | Failed
TERMINAL = (Done, Failed)
