"""Plain records the job stores keep, and the rules both stores share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ItemState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ITEM_STATES: tuple[ItemState, ...] = get_args(ItemState)
# The states a job or an item does not leave (but by a retry of the job): the one definition.
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class JobRecord:
    id: str
    workflow: str
    priority: int
    created_at: float
    total: int
    state: JobState = "queued"
    updated_at: float = 0.0
    finished_at: float | None = None
    idempotency_key: str | None = None
    request_hash: str = ""
    webhook_url: str | None = None
    webhook_per_item: bool = False
    use_cache: bool = False
    expires_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    # The name of the API key that submitted the job (None when API keys are off), and what its items used.
    owner: str | None = None
    images: int = 0
    gpu_seconds: float = 0.0


@dataclass
class ItemRecord:
    job_id: str
    index: int
    params: dict[str, Any]
    seed: int | None
    state: ItemState = "queued"
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires: float | None = None
    next_attempt_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass
class Lease:
    """An item a worker may run until `expires`; `attempt` numbers its output files."""

    job_id: str
    workflow: str
    index: int
    params: dict[str, Any]
    seed: int | None
    attempt: int
    use_cache: bool
    webhook_per_item: bool
    job_owner: str | None = None  # the API key the item's images are charged to


@dataclass
class Delivery:
    id: str
    job_id: str
    event: str
    payload: dict[str, Any]
    url: str
    attempts: int = 0
    next_attempt_at: float = 0.0
    state: Literal["pending", "delivered", "failed"] = "pending"
    log: list[dict[str, Any]] = field(default_factory=list)


def job_state_from_counts(counts: dict[str, int], total: int, cancelled: bool) -> JobState:
    if cancelled:
        return "cancelled"
    done = sum(counts.get(s, 0) for s in TERMINAL_STATES)
    if done >= total:
        return "succeeded" if counts.get("failed", 0) == 0 else "failed"
    if done > 0 or counts.get("running", 0) > 0:
        return "running"
    return "queued"


def gave_up_error(attempts: int) -> dict[str, Any]:
    """The error of an item that was leased `attempts` times and never finished (its worker died or hung each time)."""
    return {"kind": "internal", "message": f"gave up after {attempts} attempts: the item never finished (its worker died or hung)",
            "retryable": False, "node_id": None, "class_type": None}


def item_usage(result: dict[str, Any]) -> tuple[int, float]:
    """What a succeeded item used: (images, GPU-seconds), counted into its job and charged to the job's owner.

    GPU-seconds are the item's share of its engine batch (execution time / batch size), as for
    live requests; a result reused from the cache (`cached`) made its images without the GPU: 0.
    """
    images = len(result.get("outputs") or [])
    if result.get("cached"):
        return images, 0.0
    return images, float(result.get("execution_ms") or 0) / 1000 / max(1, int(result.get("batch_size") or 0))


def backoff_s(attempt: int, base: float, cap: float = 300.0) -> float:
    """Exponential backoff after the given (1-based) attempt."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def now() -> float:
    return time.time()


@dataclass
class UsageRecord:
    """What one API key (None: requests without keys) used on one UTC day."""

    day: str  # YYYY-MM-DD, UTC
    key: str | None
    requests: int = 0  # generation requests and job items that succeeded
    images: int = 0
    gpu_seconds: float = 0.0


def usage_day(t: float) -> str:
    """The UTC day (YYYY-MM-DD) usage at time `t` counts in."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def retried_delivery_id(delivery_id: str, t: float) -> str:
    """The id an earlier delivery keeps when its job is retried, so the retried job's own events get the usual ids."""
    return f"{delivery_id}@{int(t * 1000)}"
