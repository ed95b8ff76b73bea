"""Live job events, in this process: the job runner publishes, the job follower (front/jobs/follow.py) subscribes.

Contract:
- `publish(job_id, event)` is called on the event loop's thread (the runner's
  item tasks). An event is a JSON-able dict with at least "event", "job_id"
  and "index" (the item). Engine events keep their names (queued, started,
  progress, output, done, failed; outputs without their bytes); once the item
  is recorded the runner publishes "item" with "status" (succeeded, failed,
  retrying) and, on success, the recorded "outputs" (storage keys).
- `subscribe(job_id)` (None: every job) gives a queue of the events published
  after it; the caller must `unsubscribe` it (use `subscription`). (Webhook payloads are front/jobs/events.py.)
- A subscriber that falls `max_queued` events behind loses them: its queue is
  emptied and gets one {"event": "lagged"} before the new event, after which the subscriber should
  re-read the job from the store. Memory per subscriber stays bounded.
- Events are per process: an item leased by another replica is not seen here
  (the job follower, front/jobs/follow.py, also polls the store for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LAGGED: dict[str, Any] = {"event": "lagged"}


class JobEvents:
    def __init__(self, max_queued: int = 1024) -> None:
        self.max_queued = max_queued
        self._subscribers: dict[str | None, set[asyncio.Queue[dict[str, Any]]]] = {}

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        for key in (job_id, None):
            for queue in self._subscribers.get(key, ()):
                if queue.qsize() >= self.max_queued:
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(dict(LAGGED))
                queue.put_nowait(event)

    def subscribe(self, job_id: str | None) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str | None, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self._subscribers.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[job_id]

    @contextmanager
    def subscription(self, job_id: str | None) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue = self.subscribe(job_id)
        try:
            yield queue
        finally:
            self.unsubscribe(job_id, queue)

    @property
    def subscribers(self) -> int:
        return sum(len(q) for q in self._subscribers.values())
