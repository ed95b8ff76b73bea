"""Follow a job: its changes as typed values, from this replica's live events and from the job store.

The three job streams (the job SSE in front/stream.py, Comfy API v2's events, ComfyUI's /ws) only translate these.

Contract of `follow_job(store, queue, job_id)` (`queue`: a subscription to the job's live events, front/jobs/live.py):
- The first change is a `JobSnapshot` (the job as it is now), then an `ItemOutcome` per item already finished.
- Live events become `Queued`, `Started`, `Progress`, `Preview` and `ItemOutcome`. The store is re-read after a
  started or item event, after `lagged` (the subscription lost events) and every `poll_s`: an item finished that no
  event told of (another replica ran it, or its event was lost) is an `ItemOutcome`, and the job is a `JobSnapshot`
  again whenever its state or counts changed. A replica that sees no live event follows from the store alone.
- Each finished item is told once (live or from the store, whichever comes first); `retrying` may come several times.
- The last change is a `JobSnapshot` whose state is terminal (after every `ItemOutcome`), or `JobGone` when the job
  no longer exists; then the follow ends. `Keepalive` comes after `keepalive_s` without any other change.

`follow_jobs` follows a changing set of jobs over one subscription to every job (ComfyUI's /ws: a client's prompts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, cast

from comfybento.errors import ERROR_KINDS, ErrorKind
from comfybento.front.jobs.records import TERMINAL_STATES, ItemRecord, JobRecord
from comfybento.front.jobs.store import JobStore

POLL_S = 1.0  # how often a follower re-reads its jobs from the store
ITEMS_READ = 1000  # items read per job re-read: the first ones (the results API pages the rest)
REREAD_ON = ("started", "item", "lagged")  # live events after which the store is re-read at once

Outcome = Literal["succeeded", "failed", "cancelled", "retrying"]


@dataclass(frozen=True)
class JobSnapshot:
    """The job as read from the store, with its first ITEMS_READ items: first, then whenever its state or counts changed."""

    job: JobRecord
    items: tuple[ItemRecord, ...]

    @property
    def terminal(self) -> bool:
        return self.job.state in TERMINAL_STATES


@dataclass(frozen=True)
class JobGone:
    """The job no longer exists (deleted, or expired): the follow ends."""

    job_id: str


@dataclass(frozen=True)
class ItemOutcome:
    """What became of an item: finished (succeeded, failed, cancelled), or an attempt failed and it will be retried."""

    job_id: str
    index: int
    status: Outcome
    outputs: tuple[dict[str, Any], ...] | None  # the recorded outputs (with their storage keys); None: not told (live, not succeeded)
    error: str | None = None
    error_kind: ErrorKind | None = None


@dataclass(frozen=True)
class Queued:
    """An item is queued on the engine (live)."""

    job_id: str
    index: int
    position: int | None


@dataclass(frozen=True)
class Started:
    """An item's engine batch started (live)."""

    job_id: str
    index: int


@dataclass(frozen=True)
class Progress:
    """A sampler step of a running item (live)."""

    job_id: str
    index: int
    value: int
    max: int
    node_id: str | None


@dataclass(frozen=True)
class Preview:
    """A preview image of a running item (live; only when previews are on)."""

    job_id: str
    index: int
    media_type: str
    data: str  # base64


@dataclass(frozen=True)
class Keepalive:
    """Nothing else happened for `keepalive_s`."""


Change = JobSnapshot | JobGone | ItemOutcome | Queued | Started | Progress | Preview | Keepalive


def live_change(event: dict[str, Any]) -> Change | None:
    """A live event (front/jobs/live.py) as a change; None for those that are not one (done, output, lagged)."""
    kind, job_id, index = event.get("event"), str(event.get("job_id")), int(event.get("index", -1))
    if kind == "progress":
        node = event.get("node_id")
        return Progress(job_id, index, int(event.get("value", 0)), int(event.get("max", 0)), None if node is None else str(node))
    if kind == "item" and event.get("status") in (*TERMINAL_STATES, "retrying"):
        status: Outcome = event["status"]
        outputs = tuple(event.get("outputs") or ()) if status == "succeeded" else None
        return ItemOutcome(job_id, index, status, outputs, event.get("error"), _kind(event.get("error_kind")))
    if kind == "started":
        return Started(job_id, index)
    if kind == "queued":
        position = event.get("position")
        return Queued(job_id, index, None if position is None else int(position))
    if kind == "preview" and isinstance(event.get("data"), str):
        return Preview(job_id, index, str(event.get("media_type", "image/jpeg")), event["data"])
    return None


def stored_outcome(item: ItemRecord) -> ItemOutcome:
    """A finished item's outcome as the store recorded it."""
    error = item.error if item.error and item.state != "succeeded" else None
    status = cast(Outcome, item.state)  # (a finished item's state)
    return ItemOutcome(item.job_id, item.index, status, tuple((item.result or {}).get("outputs") or ()),
                       error.get("message") if error else None, _kind(error.get("kind") if error else None))


class Followed:
    """What a follow has told of one job: the items whose outcome it told, and the state and counts it showed."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.told: set[int] = set()
        self.shown: tuple[str, dict[str, int]] | None = None
        self.ended = False

    def live(self, event: dict[str, Any]) -> list[Change]:
        """A live event of this job as its changes (a finished item already told is not told again)."""
        change = live_change(event)
        if isinstance(change, ItemOutcome) and change.status != "retrying":
            if change.index in self.told:
                return []
            self.told.add(change.index)
        return [change] if change is not None else []

    def reread(self) -> list[Change]:
        """The store's word (blocking: call it in a thread): items finished that were not told, then the job if it changed."""
        job = self.store.get_job(self.job_id)
        if job is None:
            self.ended = True
            return [JobGone(self.job_id)]
        items = tuple(self.store.get_items(self.job_id, 0, ITEMS_READ))
        outcomes: list[Change] = [stored_outcome(i) for i in items if i.state in TERMINAL_STATES and i.index not in self.told]
        self.told.update(i.index for i in items if i.state in TERMINAL_STATES)
        snapshot = JobSnapshot(job, items)
        self.ended = snapshot.terminal
        if self.shown is None:  # the first: the job, then the items finished before, then the job again if it is over
            self.shown = (job.state, dict(job.counts))
            return [snapshot, *outcomes, *([snapshot] if outcomes and snapshot.terminal else [])]
        if self.shown != (job.state, job.counts):
            self.shown = (job.state, dict(job.counts))
            outcomes.append(snapshot)
        return outcomes


async def follow_job(store: JobStore, queue: asyncio.Queue[dict[str, Any]], job_id: str, keepalive_s: float,
                     poll_s: float = POLL_S) -> AsyncGenerator[Change]:
    """The changes of one job until it is over (see the module's contract); `queue` is subscribed to its live events."""
    followed = Followed(store, job_id)
    for change in await asyncio.to_thread(followed.reread):
        yield change
    polled = last = time.monotonic()
    while not followed.ended:
        try:
            event: dict[str, Any] | None = await asyncio.wait_for(queue.get(), poll_s)
        except TimeoutError:
            event = None
        changes = followed.live(event) if event is not None else []
        now = time.monotonic()
        if event is None or event.get("event") in REREAD_ON or now - polled >= poll_s:
            changes += await asyncio.to_thread(followed.reread)
            polled = now
        if changes:
            last = now
        elif now - last >= keepalive_s:
            changes, last = [Keepalive()], now
        for change in changes:
            yield change


async def follow_jobs(store: JobStore, queue: asyncio.Queue[dict[str, Any]], jobs: Callable[[], Collection[str]],
                      poll_s: float = POLL_S) -> AsyncGenerator[Change]:
    """The changes of each job in `jobs()` (asked again at each event and poll: jobs join as they are submitted), as
    `follow_job` gives them, and every other job's live `ItemOutcome`s (the queue moved). `queue` is subscribed to every
    job's live events (`live.subscription(None)`). A job leaves the follow after its last change. Never ends by itself."""
    following: dict[str, Followed] = {}
    ended: set[str] = set()

    def current() -> list[Followed]:
        wanted = set(jobs())
        for job_id in [j for j in following if j not in wanted]:
            del following[job_id]
        ended.intersection_update(wanted)
        return [following.setdefault(j, Followed(store, j)) for j in wanted if j not in ended]

    def reread(jobs: list[Followed]) -> list[Change]:
        changes = [c for f in jobs for c in f.reread()]
        for f in jobs:
            if f.ended:
                ended.add(f.job_id)
                following.pop(f.job_id, None)
        return changes

    for change in await asyncio.to_thread(reread, current()):
        yield change
    next_poll = time.monotonic() + poll_s
    while True:
        try:
            event: dict[str, Any] | None = await asyncio.wait_for(queue.get(), max(0.0, next_poll - time.monotonic()))
        except TimeoutError:
            event = None
        changes: list[Change] = []
        if event is not None:
            job_id, kind = str(event.get("job_id")), event.get("event")
            if kind == "lagged":
                changes = await asyncio.to_thread(reread, current())
            elif job_id in jobs() and job_id not in ended:
                followed = following.setdefault(job_id, Followed(store, job_id))
                changes = followed.live(event)
                if kind in REREAD_ON:
                    changes += await asyncio.to_thread(reread, [followed])
            elif isinstance(other := live_change(event), ItemOutcome):
                changes = [other]
        if time.monotonic() >= next_poll:
            changes += await asyncio.to_thread(reread, current())
            next_poll = time.monotonic() + poll_s
        for change in changes:
            yield change


def _kind(value: Any) -> ErrorKind | None:
    """An error kind read back from an event or a record (written from the one list: errors.ERROR_KINDS)."""
    return cast("ErrorKind", value) if value in ERROR_KINDS else None
