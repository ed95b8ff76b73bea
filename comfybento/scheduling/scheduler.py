"""The one scheduler: decides what the engine's executor runs next.

Contract (tests/unit/test_scheduler.py checks each point, without ComfyUI):

1. `submit(job)` queues a job under its shape key (workflow + everything that
   must be equal to share one execution, token-length bucket included) and
   returns at once; the job's sink gets `Queued(position)`.
2. The executor thread loops on `next_batch()`. When work is waiting it
   returns at once: no waiting at low load. While a batch executes, new
   arrivals gather in their queues and form the next batch. One bounded
   exception, coalescing: the callers of a batch that just ended usually send
   their next requests within a round trip. For each key the scheduler learns
   which share of a batch's callers come back within the coalescing window (a
   moving average, starting at 1). While fewer of them than expected are back,
   the queue cannot fill a batch and the key's last batch was not already full,
   the executor waits, at most `coalesce` (a quarter of that batch's execution
   time, capped) after it ended. A lone client is served at once (its one
   expected caller is the request at hand); clients that do not come back
   (an open queue) soon stop causing any wait; under closed-loop load batches
   merge to full instead of alternating the first callers back with the rest.
3. A batch holds jobs of one key, at most `cap(key)`: the job's `max_batch`
   (the workflow's sidecar or default), lowered by what out-of-memory errors
   taught (`run`). A job with `can_batch=False` always runs alone.
4. Policy (scheduling/policy.py: the scheduler is given one; `OldestFirst` is the default, described here):
   the queue whose oldest job arrived first goes next. A job waits at
   most for the batches ahead of it in its own queue plus one batch of every
   other queue that was waiting before it. Within a queue, live jobs go before
   background ones (`background=True`: batch-job items), so a batch takes the
   live requests first and fills its free places with job items: a job keeps
   the executor busy without making live requests wait behind its backlog.
   Across queues, one whose head is live goes before one whose head is
   background (a job's items, or a request far heavier than its neighbours,
   which the engine marks background). A background job waits while live ones
   keep the executor busy, at most `background_max_wait_s` (30 s): after that
   it competes by age like a live one, so nothing starves. Among each kind,
   first come first served.
5. `run(batch, execute)` emits `Started` to each job, then calls
   `execute(jobs)`. Returning normally hands the jobs over to the caller (the
   engine finishes them: outputs, Done). `OutOfMemory` caps the key below the
   failed size and retries in halves (a single job that still does not fit
   fails with `TooLarge`, a 413: retrying cannot help); any other error of a shared batch reruns
   its jobs one by one, so one bad request does not fail its neighbours; an
   error of a single job is that job's `Failed`.
6. `cancel(job)` removes a queued job (it gets `Failed(Cancelled)`). A running
   job is flagged (`job.cancelled`); once every job of the running batch is
   flagged, `on_abandoned()` is called (the engine sets ComfyUI's interrupt
   flag), under the scheduler's lock, so it can never reach the next batch.
   A cancelled job is never rerun: when its batch fails (interrupted, or a
   neighbour's error) it gets `Failed(Cancelled)`, and the one-by-one reruns
   skip it.
7. `stop()` lets `next_batch()` drain what is queued, then return None;
   `fail_queued(error)` fails whatever is still queued (a drain deadline).
8. `stats()`: seconds the executor was busy, seconds it sat idle while jobs
   were queued (the scheduler's own overhead: the target is < 5%), and, apart
   from those, seconds it waited on purpose to coalesce (point 2).
   `queued_by(group)`: the jobs queued and not yet running, counted by
   `group(job)` (the engine counts them per workflow).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from comfybento.errors import Cancelled, OutOfMemory, QueueFull, TooLarge
from comfybento.scheduling.events import Event, Failed, Queued, Started
from comfybento.scheduling.policy import OldestFirst, Policy

log = logging.getLogger(__name__)

P = TypeVar("P")
_ids = itertools.count()


def _no_events(event: Event) -> None:
    pass


@dataclass(eq=False)
class Job(Generic[P]):
    """One request waiting for, or in, an execution."""

    key: str
    payload: P
    max_batch: int = 1
    can_batch: bool = True
    background: bool = False  # a batch-job item: behind the live jobs of its queue (point 4)
    sink: Callable[[Event], None] = _no_events
    id: int = field(default_factory=lambda: next(_ids))
    arrived: float = field(default_factory=time.monotonic)
    state: Literal["new", "queued", "running", "handed_off", "failed", "cancelled"] = "new"
    cancelled: bool = False

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:  # a sink must never break the executor loop
            log.exception("event sink of job %d failed on %s", self.id, type(event).__name__)


@dataclass(frozen=True)
class Stats:
    busy_s: float  # executing batches
    idle_with_work_s: float  # not executing although jobs were queued (coalescing waits excluded)
    queued_s: float  # time with at least one job queued
    batches: int
    jobs: int
    coalescing_s: float = 0.0  # waiting on purpose for the callers of a batch to come back


class Scheduler(Generic[P]):
    def __init__(self, clock: Callable[[], float] = time.monotonic, coalesce_fraction: float = 0.25,
                 coalesce_max_s: float = 0.25, on_abandoned: Callable[[], None] | None = None,
                 policy: Policy | None = None) -> None:
        self._clock = clock
        self._policy: Policy = policy if policy is not None else OldestFirst()  # which queue goes next (point 4)
        self._on_abandoned = on_abandoned
        self._running: list[Job[P]] = []
        self._coalesce_fraction = coalesce_fraction
        self._coalesce_max_s = coalesce_max_s
        self._recent: dict[str, tuple[int, float, float]] = {}  # key -> (size, ended at, seconds) of its last batch
        self._returned: dict[str, int] = {}  # key -> arrivals within the window after its last batch ended
        self._return_rate: dict[str, float] = {}  # key -> moving average of returned / batch size
        self._queues: dict[str, deque[Job[P]]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._fits: dict[str, int] = {}
        self._largest_ok: dict[str, int] = {}
        # accounting (under _cond)
        self._executing = False
        self._waiting = 0
        self._mark_at = clock()
        self._busy = self._idle_with_work = self._queued_time = self._coalescing_time = 0.0
        self._coalescing = False
        self._batches = self._jobs_run = 0

    # ------------------------------------------------------------ callers

    def submit(self, job: Job[P]) -> None:
        """Queue a job; a stopped scheduler fails it at once."""
        with self._cond:
            if self._stopping:
                job.state = "failed"
                stopped = True
            else:
                stopped = False
                self._account()
                position = self._waiting
                job.arrived = self._clock()
                job.state = "queued"
                key = job.key if job.can_batch else f"{job.key}#solo{job.id}"
                self._enqueue(self._queues.setdefault(key, deque()), job)
                if key in self._recent and job.arrived <= self._window_end(key):
                    self._returned[key] = self._returned.get(key, 0) + 1
                self._waiting += 1
                self._cond.notify()
        if stopped:
            job.emit(Failed(QueueFull("the engine is shutting down; retry on another replica")))
        else:
            job.emit(Queued(position))

    def cancel(self, job: Job[P]) -> bool:
        """Drop a queued job (True), or flag a running one (False)."""
        with self._cond:
            job.cancelled = True
            if job.state != "queued":
                if job.state == "running" and self._running and all(j.cancelled for j in self._running):
                    log.info("every caller of the running batch of %d left: interrupting it", len(self._running))
                    if self._on_abandoned is not None:
                        self._on_abandoned()
                return False
            self._account()
            for key, queue in self._queues.items():
                if job in queue:
                    queue.remove(job)
                    if not queue:
                        del self._queues[key]
                    break
            self._waiting -= 1
            job.state = "cancelled"
        job.emit(Failed(Cancelled("the request was cancelled before it ran")))
        return True

    def queued(self) -> int:
        with self._cond:
            return self._waiting

    def queued_by(self, group: Callable[[Job[P]], str]) -> dict[str, int]:
        """Queued jobs (not running) counted by group(job); groups with none are absent."""
        with self._cond:
            counts: dict[str, int] = {}
            for queue in self._queues.values():
                for job in queue:
                    name = group(job)
                    counts[name] = counts.get(name, 0) + 1
            return counts

    def largest_fit(self, key: str) -> int | None:
        """The largest batch known to fit in device memory for a key, once one ran out."""
        with self._cond:
            return self._fits.get(key)

    def stats(self) -> Stats:
        with self._cond:
            self._account()
            return Stats(self._busy, self._idle_with_work, self._queued_time, self._batches, self._jobs_run, self._coalescing_time)

    # ------------------------------------------------------------ executor side

    def next_batch(self, timeout: float | None = None) -> list[Job[P]] | None:
        """The next batch by the policy; blocks while nothing is queued. None: stopped (or timed out)."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                while not self._queues:
                    if self._stopping:
                        return None
                    remaining = None if deadline is None else deadline - self._clock()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                key = self._next_key()
                wait = self._coalesce_wait(key)
                if wait <= 0:
                    break
                self._account()
                self._coalescing = True
                try:
                    self._cond.wait(wait)
                finally:
                    self._account()
                    self._coalescing = False
            self._account()
            queue = self._queues[key]
            batch = [queue.popleft() for _ in range(min(len(queue), self._cap(key, queue[0])))]
            if not queue:
                del self._queues[key]
            self._waiting -= len(batch)
            self._executing = True
            for job in batch:
                job.state = "running"
            self._running = batch
            return batch

    def run(self, batch: list[Job[P]], execute: Callable[[list[Job[P]]], Any]) -> None:
        """Execute one batch from next_batch(), splitting on OOM and isolating failures."""
        started = self._clock()
        for job in batch:
            job.emit(Started(len(batch), max(0.0, started - job.arrived) * 1000))
        try:
            self._run_chunk(batch, execute)
        finally:
            with self._cond:
                self._account()
                ended = self._clock()
                key = batch[0].key
                if key in self._recent:  # how many of the previous batch's callers came back in time
                    share = min(1.0, self._returned.get(key, 0) / self._recent[key][0])
                    self._return_rate[key] = 0.5 * self._return_rate.get(key, 1.0) + 0.5 * share
                self._recent[key] = (len(batch), ended, ended - started)
                self._returned[key] = 0
                if len(self._recent) > 256:  # shapes come and go: keep the recent ones
                    for old in sorted(self._recent, key=lambda k: self._recent[k][1])[:128]:
                        for table in (self._recent, self._returned, self._return_rate):
                            table.pop(old, None)
                self._executing = False
                self._running = []
                self._batches += 1
                self._jobs_run += len(batch)

    def run_forever(self, execute: Callable[[list[Job[P]]], Any]) -> None:
        """The executor loop: returns once stopped and drained."""
        while (batch := self.next_batch()) is not None:
            self.run(batch, execute)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def fail_queued(self, error: Exception) -> int:
        """Fail every job still queued (a drain deadline passed); returns how many."""
        with self._cond:
            self._account()
            jobs = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._waiting = 0
            for job in jobs:
                job.state = "failed"
        for job in jobs:
            job.emit(Failed(error))
        return len(jobs)

    # ------------------------------------------------------------ internals

    def _next_key(self) -> str:
        """The queue whose head goes next, as the policy says (point 4)."""
        return self._policy.next_queue(self._queues, self._clock())

    @staticmethod
    def _enqueue(queue: deque[Job[P]], job: Job[P]) -> None:
        """Append a background job; put a live one after the live jobs already queued, before any background job."""
        if job.background or not queue or not queue[-1].background:
            queue.append(job)
            return
        at = next(i for i, queued in enumerate(queue) if queued.background)
        queue.insert(at, job)

    def _window_end(self, key: str) -> float:
        _, ended, seconds = self._recent[key]
        return ended + min(self._coalesce_fraction * seconds, self._coalesce_max_s)

    def _coalesce_wait(self, key: str) -> float:
        """Seconds to wait for more callers of the key's last batch to come back (0: dispatch now)."""
        if self._stopping or key not in self._recent:
            return 0.0
        size, _, _ = self._recent[key]
        queue = self._queues[key]
        cap = self._cap(key, queue[0])
        expected = self._return_rate.get(key, 1.0) * size
        if size >= cap or len(queue) >= cap or self._returned.get(key, 0) + 0.5 >= expected:
            return 0.0
        return max(0.0, self._window_end(key) - self._clock())

    def _cap(self, key: str, head: Job[P]) -> int:
        if not head.can_batch:
            return 1
        return max(1, min(head.max_batch, self._fits.get(key, head.max_batch)))

    def _account(self) -> None:
        """Advance the busy / idle-with-work clocks to now (caller holds _cond)."""
        now = self._clock()
        elapsed, self._mark_at = now - self._mark_at, now
        if self._executing:
            self._busy += elapsed
        if self._waiting:
            self._queued_time += elapsed
            if self._coalescing:
                self._coalescing_time += elapsed
            elif not self._executing:
                self._idle_with_work += elapsed

    def _run_chunk(self, chunk: list[Job[P]], execute: Callable[[list[Job[P]]], Any]) -> None:
        gone = [job for job in chunk if job.cancelled]
        if gone:  # their callers left: never (re)run them
            self._fail(gone, Cancelled("the caller went away; the request was cancelled"))
            chunk = [job for job in chunk if not job.cancelled]
            if not chunk:
                return
        key = chunk[0].key
        try:
            execute(chunk)
        except OutOfMemory as exc:
            if len(chunk) == 1:
                self._fail(chunk, TooLarge(f"this request does not fit in this device's memory even alone; ask for fewer "
                                           f"or smaller images ({exc})"))
                return
            self._remember_oom(key, len(chunk))
            half = len(chunk) // 2
            self._run_chunk(chunk[:half], execute)
            self._run_chunk(chunk[half:], execute)
            return
        except Exception as exc:
            if all(job.cancelled for job in chunk):
                self._fail(chunk, Cancelled("the caller went away; the request was interrupted"))
                return
            if len(chunk) == 1:
                self._fail(chunk, exc)
                return
            log.info("a shared execution of %d requests failed (%s); running them one by one", len(chunk), exc)
            for job in chunk:
                self._run_chunk([job], execute)
            return
        with self._cond:
            self._largest_ok[key] = max(len(chunk), self._largest_ok.get(key, 0))
        for job in chunk:
            job.state = "handed_off"

    def _remember_oom(self, key: str, failed_size: int) -> None:
        with self._cond:
            cap = max(self._largest_ok.get(key, 0), failed_size // 2, 1)
            self._fits[key] = min(cap, self._fits.get(key, cap))
            cap = self._fits[key]
        log.warning("out of memory at batch %d: batches for %s are capped at %d", failed_size, key, cap)

    @staticmethod
    def _fail(chunk: list[Job[P]], exc: Exception) -> None:
        for job in chunk:
            job.state = "failed"
            job.emit(Failed(exc))
