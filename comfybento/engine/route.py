"""The engine's HTTP route: one request in (a frame), its events out (a stream of frames).

Mounted on the engine service at /engine (`route_app`). `POST /engine/run` takes a frame
(engine/wire.py) holding an EngineItem and answers with one frame per event
as it happens, encoded outputs as raw bytes. If the caller goes away before
the request ran, the request is dropped from the scheduler's queue. The engine
service puts its started Engine in the app's state (`app.state.engine`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from comfybento.engine.messages import event_to_frame, item_from_frame
from comfybento.engine.wire import MEDIA_TYPE, WireError, decode_frame, encode_frame
from comfybento.scheduling.events import TERMINAL, Event


def route_app() -> Starlette:
    """The engine's route as an app of its own; its state's `engine` is None until the service has started one."""
    app = Starlette(routes=[Route("/run", run, methods=["POST"])])
    app.state.engine = None
    return app


async def run(request: Request) -> Response:
    engine = request.app.state.engine
    if engine is None:
        return JSONResponse({"error": "the engine is starting"}, status_code=503, headers={"Retry-After": "5"})
    try:
        workflow, item = item_from_frame(*decode_frame(await request.body()))
    except (WireError, ValueError) as exc:
        return JSONResponse({"error": f"malformed engine request: {exc}"}, status_code=400)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    job = await asyncio.to_thread(engine.submit, workflow, item, sink)
    return StreamingResponse(_frames(engine, job, events), media_type=MEDIA_TYPE)


async def _frames(engine: Any, job: Any, events: asyncio.Queue[Event]) -> AsyncIterator[bytes]:
    finished = False
    try:
        while not finished:
            event = await events.get()
            finished = isinstance(event, TERMINAL)
            yield encode_frame(*event_to_frame(event))
    finally:
        if not finished and job is not None:
            engine.cancel(job)  # the caller left: drop its queued work

