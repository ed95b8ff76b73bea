"""The SSE stream of one job (GET /api/v2/jobs/{id}/events), as the spec's x-sse-events define it.

On connect: `status` (and the latest `progress` when running). Then, from the job's changes (front/jobs/follow.py:
live events of this replica's runner, and the job re-read from the store, which also sees items run on other
replicas): `status` with queue_position when an item is queued on the engine, a `progress` snapshot per sampler step,
a `status` on each change of the job's status, an `output` per new output, and the stream ends after the terminal
`status`. Comments (`: keepalive`) every 15 s of silence keep proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from comfybento.front.compat import node_ids
from comfybento.front.compat.comfy_v2.views import job_view, progress_snapshot
from comfybento.front.compat.node_ids import NodeIds
from comfybento.front.jobs import follow
from comfybento.front.jobs.service import JobService
from comfybento.front.stream import KEEPALIVE_S

KEEPALIVE = ": keepalive\n\n"


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_stream(service: JobService, job_id: str, origin: str) -> AsyncIterator[str]:
    """Frames until the job is terminal (or no longer exists)."""
    told = _Told(service, origin)
    with service.live.subscription(job_id) as queue:
        async with aclosing(follow.follow_job(service.store, queue, job_id, KEEPALIVE_S)) as changes:
            async for change in changes:
                if isinstance(change, follow.JobSnapshot):
                    frames = await asyncio.to_thread(told.snapshot, change)
                elif isinstance(change, follow.Progress):
                    frames = told.progress(change)
                elif isinstance(change, follow.Queued):
                    frames = [frame("status", {"status": "queued", "queue_position": change.position})]
                elif isinstance(change, follow.Keepalive):
                    frames = [KEEPALIVE]
                else:
                    continue
                for chunk in frames:
                    yield chunk
                if isinstance(change, follow.JobSnapshot) and change.terminal:
                    return  # (a job over when the stream started is told again after its items: not here)


class _Told:
    """What one stream has sent (its status, its outputs) and the job as last read."""

    def __init__(self, service: JobService, origin: str) -> None:
        self.service, self.origin = service, origin
        self.sizes: dict[str, int] = {}  # output sizes by storage key, read once
        self.sent: set[str] = set()
        self.status = ""  # "": none sent yet
        self.last: follow.JobSnapshot | None = None
        self.ids: NodeIds | None = None  # the job's node ids as its graph names them, read with the first snapshot

    def snapshot(self, change: follow.JobSnapshot) -> list[str]:
        """The job re-read (blocking: output sizes may be read): on connect its status (and progress), then new outputs,
        then its status if it changed (always the terminal one)."""
        if self.ids is None:
            self.ids = node_ids.load(self.service.storage, change.job.id)
        view = job_view(self.service, change.job, self.origin, None, self.sizes, list(change.items), self.ids)
        frames = []
        if self.last is None and not change.terminal:
            self.status = view["status"]
            frames.append(frame("status", {"status": self.status, "queue_position": view["queue_position"]}))
            if view["progress"] is not None and self.status == "running":
                frames.append(frame("progress", view["progress"]))
        self.last = change
        for out in view["outputs"]:
            if out["id"] not in self.sent:
                self.sent.add(out["id"])
                frames.append(frame("output", out))
        if view["status"] != self.status or change.terminal:
            self.status = view["status"]
            frames.append(frame("status", {"status": self.status, "queue_position": None}))
        return frames

    def progress(self, change: follow.Progress) -> list[str]:
        """A sampler step's progress snapshot, from the job as last read (a step reads nothing)."""
        if self.last is None:
            return []
        live = {"value": change.value, "max": change.max, "node_id": change.node_id}
        progress = progress_snapshot(self.service, self.last.job, list(self.last.items), live, self.ids or NodeIds())
        return [frame("progress", progress)] if progress is not None else []
