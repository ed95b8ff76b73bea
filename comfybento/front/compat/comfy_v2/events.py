"""The SSE stream of one job (GET /api/v2/jobs/{id}/events), as the spec's x-sse-events define it.

On connect: `status` (and the latest `progress` when running). Then live events of this replica's runner
(front/jobs/live.py: queued -> status with queue_position, progress -> progress snapshot) and, each second or after an
item is recorded, the job re-read from the store (items run on other replicas are seen this way): a `status` on
each change, an `output` per new output, and the stream ends after the terminal `status`.
Comments (`: keepalive`) every 15 s keep proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from comfybento.front.compat.comfy_v2.views import TERMINAL

POLL_S = 1.0
KEEPALIVE_S = 15.0

Snapshot = Callable[[dict[str, Any] | None], dict[str, Any]]


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_stream(queue: asyncio.Queue[dict[str, Any]], snapshot: Snapshot) -> AsyncIterator[str]:
    """Frames until the job is terminal. `snapshot(None)` re-reads the job (the spec's Job), `snapshot(progress_event)` gives at
    least its "progress" (both called off the loop)."""
    view = await asyncio.to_thread(snapshot, None)
    status = ""  # a job already terminal: the loop sends its outputs, then its status
    if view["status"] not in TERMINAL:
        status = view["status"]
        yield frame("status", {"status": status, "queue_position": view["queue_position"]})
        if view["progress"] is not None and status == "running":
            yield frame("progress", view["progress"])
    sent: set[str] = set()
    last_poll = last_frame = time.monotonic()
    while True:
        if view["status"] != status or view["status"] in TERMINAL:
            for out in view["outputs"]:
                if out["id"] not in sent:
                    sent.add(out["id"])
                    yield frame("output", out)
            status = view["status"]
            yield frame("status", {"status": status, "queue_position": None})
            if status in TERMINAL:
                return
            last_frame = time.monotonic()
        try:
            event = await asyncio.wait_for(queue.get(), timeout=POLL_S)
        except TimeoutError:
            event = {"event": "poll"}
        kind = event.get("event")
        if kind == "progress":
            progress = (await asyncio.to_thread(snapshot, event))["progress"]
            if progress is not None:
                yield frame("progress", progress)
                last_frame = time.monotonic()
            continue
        if kind == "queued":
            yield frame("status", {"status": "queued", "queue_position": event.get("position")})
            last_frame = time.monotonic()
            continue
        if kind in ("started", "item", "lagged") or time.monotonic() - last_poll >= POLL_S:
            view = await asyncio.to_thread(snapshot, None)
            last_poll = time.monotonic()
            for out in view["outputs"]:
                if out["id"] not in sent:
                    sent.add(out["id"])
                    yield frame("output", out)
                    last_frame = time.monotonic()
        if time.monotonic() - last_frame >= KEEPALIVE_S:
            yield ": keepalive\n\n"
            last_frame = time.monotonic()
