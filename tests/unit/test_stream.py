"""SSE frames and typed events (front/stream.py), and one request's stream driven by an engine call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from comfybento.engine.messages import ItemResult, OutputBlob, event_to_frame, preview_header
from comfybento.errors import EngineUnavailable
from comfybento.front.stream import (
    JOB_EVENTS,
    KEEPALIVE,
    REQUEST_EVENTS,
    DoneEvent,
    OutputEvent,
    ProgressEvent,
    QueuedEvent,
    done_event,
    engine_event,
    failed_event,
    output_event,
    parse_sse,
    request_events,
    sse,
)
from comfybento.scheduling.events import Preview, Progress

BLOB = OutputBlob(output="image", node_id="9", index=0, width=8, height=8, media_type="image/png", data=b"\x89PNG")


def test_a_frame_is_event_and_one_line_of_json_data():
    frame = sse(ProgressEvent(value=2, max=5, node_id="3")).decode()
    assert frame == 'event: progress\ndata: {"event":"progress","value":2,"max":5,"node_id":"3"}\n\n'
    assert parse_sse(frame + KEEPALIVE.decode() + sse(QueuedEvent(position=0)).decode()) == [
        ("progress", '{"event":"progress","value":2,"max":5,"node_id":"3"}'),
        ("queued", '{"event":"queued","position":0}'),
    ]


def test_events_are_told_apart_by_their_event_field():
    assert isinstance(REQUEST_EVENTS.validate_python({"event": "queued", "position": 3}), QueuedEvent)
    done = REQUEST_EVENTS.validate_json(sse(done_event("txt2img", ItemResult(ok=True, seed=4, execution_ms=10))).split(b"data: ")[1])
    assert isinstance(done, DoneEvent) and done.seed == 4 and done.timings.execution_ms == 10
    with pytest.raises(ValidationError):
        REQUEST_EVENTS.validate_python({"event": "queued"})  # position missing
    with pytest.raises(ValidationError):
        REQUEST_EVENTS.validate_python({"event": "item", "index": 0, "status": "succeeded"})  # a job event
    assert JOB_EVENTS.validate_python({"event": "item", "index": 0, "status": "failed", "error": "boom"}).error == "boom"
    schema = REQUEST_EVENTS.json_schema()
    assert set(schema["discriminator"]["mapping"]) == {"queued", "started", "progress", "preview", "output", "done", "failed"}


def test_engine_headers_become_events_and_failures_keep_their_fields():
    header, parts = event_to_frame(Progress(1, 4, "3"))
    assert engine_event(header) == ProgressEvent(value=1, max=4, node_id="3")
    header, parts = event_to_frame(Preview(b"jpeg-bytes"))
    preview = engine_event(preview_header(header, parts))
    assert preview is not None and json.loads(sse(preview).split(b"data: ")[1])["data"] == "anBlZy1ieXRlcw=="
    failed = failed_event(ItemResult(ok=False, status=500, error="node 10 raised", error_kind="node", node_id="10"), "rid")
    assert (failed.status, failed.error_kind, failed.node_id, failed.request_id) == (500, "node", "10", "rid")
    assert failed_event(EngineUnavailable("gone")).status == 503
    assert output_event(BLOB, data="aGk=").model_dump()["name"] == "image"


async def _collect(run: Any, keepalive_s: float = 5.0) -> list[tuple[str, dict[str, Any]]]:
    async def deliver(blob: OutputBlob) -> OutputEvent:
        return output_event(blob, data="eA==")

    async def finish(result: ItemResult) -> Any:
        return done_event("wf", result) if result.ok else failed_event(result)

    chunks = [c async for c in request_events(run, deliver, finish, "rid", keepalive_s=keepalive_s)]
    return [(k, json.loads(d)) for k, d in parse_sse(b"".join(chunks).decode())]


def test_a_stream_sends_each_event_as_it_comes_then_exactly_one_terminal_event():
    async def run(on_event: Callable[[Any], None], on_output: Callable[[Any], None]) -> ItemResult:
        on_event({"event": "queued", "position": 1})
        on_event({"event": "started", "batch_size": 2, "queue_ms": 5.0})
        for step in (1, 2):
            on_event({"event": "progress", "value": step, "max": 2, "node_id": "3"})
            await asyncio.sleep(0)
        on_event({"event": "output", **BLOB.model_dump(exclude={"data"})})  # its bytes come through on_output
        on_output(BLOB)
        return ItemResult(ok=True, seed=9, outputs=[BLOB])

    frames = asyncio.run(_collect(run))
    assert [k for k, _ in frames] == ["queued", "started", "progress", "progress", "output", "done"]
    assert frames[4][1]["data"] == "eA==" and frames[-1][1]["seed"] == 9


def test_silence_sends_keepalives_and_a_broken_engine_call_ends_in_failed():
    async def run(on_event: Callable[[Any], None], on_output: Callable[[Any], None]) -> ItemResult:
        await asyncio.sleep(0.25)
        raise RuntimeError("connection reset")

    async def raw() -> bytes:
        async def deliver(blob: OutputBlob) -> OutputEvent:
            raise AssertionError("no outputs")

        async def finish(result: ItemResult) -> Any:
            raise AssertionError("no result")

        return b"".join([c async for c in request_events(run, deliver, finish, "rid", keepalive_s=0.1)])

    body = asyncio.run(raw())
    assert body.count(KEEPALIVE) >= 1
    frames = parse_sse(body.decode())
    assert [k for k, _ in frames] == ["failed"] and json.loads(frames[0][1])["status"] == 500


def test_a_consumer_that_stops_cancels_the_engine_call():
    cancelled = asyncio.Event()

    async def run(on_event: Callable[[Any], None], on_output: Callable[[Any], None]) -> ItemResult:
        on_event({"event": "queued", "position": 0})
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return ItemResult(ok=True)

    async def leave_after_first() -> bool:
        async def deliver(blob: OutputBlob) -> OutputEvent:
            raise AssertionError

        async def finish(result: ItemResult) -> Any:
            raise AssertionError

        events = request_events(run, deliver, finish, "rid")
        assert (await events.__anext__()).startswith(b"event: queued")
        await events.aclose()  # the client went away
        await asyncio.wait_for(cancelled.wait(), 2)
        return cancelled.is_set()

    assert asyncio.run(leave_after_first())
