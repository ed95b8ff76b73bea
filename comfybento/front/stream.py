"""Live progress as Server-Sent Events: the typed events, their frames, and the stream of one request.

Frames are `event: <type>\\ndata: <json>\\n\\n`, with a `: keepalive` comment
every KEEPALIVE_S seconds of silence. Every event is a pydantic model, its
frame's data; its `event` field repeats the frame's type, so the data alone
says what it is (clients that see only the data, such as generated ones, can
tell them apart). The union of a stream's events, discriminated by `event`, is
the schema of its OpenAPI answer (front/openapi.py).

`POST /<workflow>/stream` (`request_events`): queued {position}, started,
progress {value, max, node_id}, preview (only when COMFYBENTO_PREVIEWS is on),
one output per output item as soon as it is encoded, then exactly one of done
or failed, last. `GET /jobs/{job_id}/events` (front/job_routes.py): job, progress,
item, job ... ending with a job whose state is terminal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.errors import ComfyBentoError, ErrorKind, describe, storage_full
from comfybento.front.delivery import live_key, output_item
from comfybento.front.jobs import follow
from comfybento.front.jobs.api_models import JobStatus, OutputRef
from comfybento.front.jobs.service import JobService
from comfybento.outputs.storage import Storage
from comfybento.workflows.schema import OutputItem, Timings

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
KEEPALIVE_S = 15.0
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---------------------------------------------------------------- events (each frame's data; `event` repeats its type)


class QueuedEvent(BaseModel):
    event: Literal["queued"] = "queued"
    position: int = Field(description="Requests waiting ahead of this one when it arrived (0: it runs next).")


class StartedEvent(BaseModel):
    event: Literal["started"] = "started"
    batch_size: int = Field(description="Requests sharing this graph execution.")
    queue_ms: float = Field(description="Time spent queued, in milliseconds.")


class ProgressEvent(BaseModel):
    event: Literal["progress"] = "progress"
    value: int = Field(description="Sampler step i of max.")
    max: int = Field(description="Steps of the sampler now running.")
    node_id: str | None = Field(default=None, description="Id of the node reporting progress.")


class PreviewEvent(BaseModel):
    event: Literal["preview"] = "preview"
    media_type: str = Field(default="image/jpeg", description="Content type of the preview (image/jpeg).")
    data: str = Field(description="The preview image, base64.")


class OutputEvent(OutputItem):
    event: Literal["output"] = "output"


class DoneEvent(BaseModel):
    event: Literal["done"] = "done"
    workflow: str = Field(description="Name of the workflow that ran.")
    seed: int | None = Field(description="The seed used.")
    timings: Timings


class FailedEvent(BaseModel):
    event: Literal["failed"] = "failed"
    error: str = Field(description="What went wrong: the field, node, file, model or limit.")
    error_kind: ErrorKind = Field(description="The kind of error: the same kinds in every answer, event and job record.")
    status: int = Field(description="The HTTP status the non-streaming endpoint would have answered.")
    node_id: str | None = Field(default=None, description="For node errors: the node that failed.")
    class_type: str | None = Field(default=None, description="For node errors: that node's class.")
    request_id: str | None = Field(default=None, description="Also in the X-Request-ID header and the server's log.")


class JobEvent(JobStatus):
    event: Literal["job"] = "job"


class JobProgressEvent(BaseModel):
    event: Literal["progress"] = "progress"
    index: int = Field(description="The item.")
    value: int = Field(description="Sampler step i of max.")
    max: int = Field(description="Steps of the sampler now running.")


class JobItemEvent(BaseModel):
    event: Literal["item"] = "item"
    index: int = Field(description="The item.")
    status: Literal["succeeded", "failed", "retrying", "cancelled"] = Field(description="What became of it.")
    outputs: list[OutputRef] | None = Field(default=None, description="Its outputs (succeeded).")
    error: str | None = Field(default=None, description="What went wrong (failed, retrying).")
    error_kind: ErrorKind | None = Field(default=None, description="The kind of error (failed, retrying).")


RequestEvent = Annotated[
    QueuedEvent | StartedEvent | ProgressEvent | PreviewEvent | OutputEvent | DoneEvent | FailedEvent, Field(discriminator="event")
]
JobStreamEvent = Annotated[JobEvent | JobProgressEvent | JobItemEvent, Field(discriminator="event")]
REQUEST_EVENTS: TypeAdapter[Any] = TypeAdapter(RequestEvent)
JOB_EVENTS: TypeAdapter[Any] = TypeAdapter(JobStreamEvent)
AnyEvent = (
    QueuedEvent
    | StartedEvent
    | ProgressEvent
    | PreviewEvent
    | OutputEvent
    | DoneEvent
    | FailedEvent
    | JobEvent
    | JobProgressEvent
    | JobItemEvent
)


def sse(event: AnyEvent) -> bytes:
    """One SSE frame: `event: <type>` and the event as one line of JSON (its `event` field repeats the type)."""
    return f"event: {event.event}\ndata: {event.model_dump_json()}\n\n".encode()


def parse_sse(text: str) -> list[tuple[str, str]]:
    """(event, data) of each frame in a complete SSE text; comments are skipped. For tests and clients."""
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            frames.append((name, "\n".join(data)))
    return frames


# ---------------------------------------------------------------- engine events -> request events


def engine_event(header: dict[str, Any]) -> AnyEvent | None:
    """A request event from an engine event header (EngineClient's on_event); None for those sent otherwise."""
    kind = header.get("event")
    if kind == "queued":
        return QueuedEvent(position=int(header.get("position", 0)))
    if kind == "started":
        return StartedEvent(batch_size=int(header["batch_size"]), queue_ms=float(header["queue_ms"]))
    if kind == "progress":
        return ProgressEvent(value=int(header["value"]), max=int(header["max"]), node_id=header.get("node_id"))
    if kind == "preview":
        return PreviewEvent(media_type=str(header.get("media_type", "image/jpeg")), data=str(header["data"]))
    return None  # outputs come with their bytes (on_output); done/failed from the result


def output_event(blob: OutputBlob, data: str | None = None, url: str | None = None) -> OutputEvent:
    return OutputEvent(**output_item(blob, data=data, url=url).model_dump())


def store_output(storage: Storage, blob: OutputBlob, folder: str, base_url: str) -> OutputEvent:
    """Store one output of a live request (output_delivery 'url'; blocking: call it in a thread): its event, with its URL."""
    key = live_key(blob, folder)
    storage.put(key, blob.data, blob.media_type)
    return output_event(blob, url=storage.url(key, base_url))


def failed_event(error: BaseException | ItemResult, rid: str | None = None) -> FailedEvent:
    fields = describe(error) if isinstance(error, BaseException) else error.model_dump(exclude={"outputs"})
    return FailedEvent(
        error=fields.get("error") or "failed",
        error_kind=fields.get("error_kind") or "internal",
        status=int(fields.get("status") or 500),
        node_id=fields.get("node_id"),
        class_type=fields.get("class_type"),
        request_id=rid,
    )


def done_event(workflow: str, result: ItemResult) -> DoneEvent:
    timings = Timings(queue_ms=result.queue_ms, execution_ms=result.execution_ms, batch_size=result.batch_size)
    return DoneEvent(workflow=workflow, seed=result.seed, timings=timings)


# ---------------------------------------------------------------- one request's stream

RunEngine = Callable[[Callable[[dict[str, Any]], None], Callable[[OutputBlob], None]], Awaitable[ItemResult]]
DeliverOutput = Callable[[OutputBlob], Awaitable[OutputEvent]]
Finish = Callable[[ItemResult], Awaitable[AnyEvent]]
_END = object()


async def request_events(
    run: RunEngine, deliver: DeliverOutput, finish: Finish, rid: str, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[bytes]:
    """The SSE frames of one engine call: its events as they come, each output as it is ready, then `finish(result)`.

    `run(on_event, on_output)` is the engine call; `deliver` turns an output into its event's item (base64 or a stored
    URL); `finish` makes the terminal event (done, or failed for a failed result). If the consumer stops (the client
    went away), the engine call is cancelled: its queued work is dropped, a batch whose every caller left is interrupted.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.ensure_future(run(queue.put_nowait, queue.put_nowait))
    task.add_done_callback(lambda _t: queue.put_nowait(_END))
    finished = False
    try:
        while True:
            try:
                got = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if got is _END:
                break
            if isinstance(got, OutputBlob):
                try:
                    frame = sse(await deliver(got))
                except Exception as exc:  # the output could not be stored (a full disk ...): the stream ends failed
                    _log_failure(rid, "storing an output failed", exc)
                    finished = True
                    yield sse(failed_event(exc, rid))
                    return
                yield frame
            elif (event := engine_event(got)) is not None:
                yield sse(event)
        try:
            result = task.result()
        except Exception as exc:  # the engine call itself broke (not a failed result)
            _log_failure(rid, "the engine call failed", exc)
            finished = True
            yield sse(failed_event(exc, rid))
            return
        finished = True
        yield sse(await finish(result))
    finally:
        if not task.done():
            task.cancel()
        if not finished:
            log.info("request %s: the client left the stream; its work is cancelled", rid)


def _log_failure(rid: str, what: str, exc: Exception) -> None:
    """One line for an error a client is told of (a full disk: its message), a traceback for an unexpected one."""
    if isinstance(exc, ComfyBentoError) or storage_full(exc) is not None:
        log.warning("request %s: %s: %s", rid, what, describe(exc)["error"])
    else:
        log.exception("request %s: %s", rid, what)


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` answer that calls `on_close` once it is over, however it ended (even never started)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None] | None = None) -> None:
        super().__init__(content, media_type=MEDIA_TYPE, headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


# ---------------------------------------------------------------- a job's stream


async def job_events(service: JobService, job_id: str, base_url: str, poll_s: float = follow.POLL_S,
                     keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
    """A job's SSE frames: the job, then its items' progress and outcomes (live from this replica's runner, and from
    the store every `poll_s` for items other replicas ran), the job again whenever its state or counts change; the
    stream ends after a job event whose state is terminal. Items finished before the client came are told first.
    The changes are front/jobs/follow.py's; this only frames them."""
    shown: tuple[follow.JobSnapshot, JobEvent] | None = None
    with service.live.subscription(job_id) as queue:
        async with aclosing(follow.follow_job(service.store, queue, job_id, keepalive_s, poll_s)) as changes:
            async for change in changes:
                if isinstance(change, follow.JobSnapshot):
                    if shown is None or shown[0] is not change:  # (the first snapshot comes again when the job is over)
                        status = await asyncio.to_thread(service.status_of, change.job, change.items)
                        shown = (change, JobEvent(**status.model_dump()))
                    yield sse(shown[1])
                elif isinstance(change, follow.Progress):
                    yield sse(JobProgressEvent(index=change.index, value=change.value, max=change.max))
                elif isinstance(change, follow.ItemOutcome):
                    yield sse(_item_event(service.storage, change, base_url))
                elif isinstance(change, follow.Keepalive):
                    yield KEEPALIVE


def _item_event(storage: Storage, outcome: follow.ItemOutcome, base_url: str) -> JobItemEvent:
    outputs = None if outcome.outputs is None else [
        OutputRef(**{k: v for k, v in o.items() if k != "key"}, url=storage.url(o["key"], base_url)) for o in outcome.outputs]
    return JobItemEvent(index=outcome.index, status=outcome.status, outputs=outputs, error=outcome.error, error_kind=outcome.error_kind)
