"""ComfyUI's /ws: status, and the execution events of the prompts a client submitted, from the jobs' live events.

On connect: `status` {status: {exec_info: {queue_remaining}}, sid}. For each of
the client's prompts: execution_start, execution_cached, executing and
progress while it runs (binary preview frames when the engine sends previews),
then executing + executed per output node, execution_success and executing
{node: null}; or execution_error / execution_interrupted; then `status` again.

Events come from `jobs().live` (this replica's runner); every second the
client's unfinished prompts are also read from the store, which covers items
run by another replica and events lost to a lagging subscriber.

A client id belongs to the API key that uses it: clients are kept per (key, client
id), so a socket gets the events of its own key's prompts only, whatever client id
it names, and the queue length it is sent counts that key's jobs (front/ownership.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections import OrderedDict
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from comfybento.front.compat.comfyui import prompts
from comfybento.front.jobs.records import TERMINAL_JOB_STATES
from comfybento.front.jobs.service import JobService
from comfybento.front.ownership import Caller
from comfybento.workflows.graph import sorted_ids

POLL_S = 1.0
PREVIEW_FORMATS = {"image/jpeg": 1, "image/png": 2}  # ComfyUI's binary PREVIEW_IMAGE (type 1) frame formats
MAX_CLIENTS = 10_000
MAX_PROMPTS = 1000
STATUS_S = 0.25  # the queue length sent in status updates is at most this old (it scans the job store)
# The owner a queue length was counted for -> (when counted (monotonic), queue_remaining).
_REMAINING: dict[str | None, tuple[float, int]] = {}
ClientKey = tuple[str | None, str]  # (the API key's name, None when keys are off; the client id)


def client_key(caller: Caller, client_id: str) -> ClientKey:
    """A client id as the key of `caller` uses it: the same id under another key is another client."""
    return (caller.name, client_id)


class Clients:
    """client (key, client id) -> its prompts whose end it has not been sent yet (this replica's submissions), bounded."""

    def __init__(self) -> None:
        self._prompts: OrderedDict[ClientKey, OrderedDict[str, None]] = OrderedDict()

    def add(self, client: ClientKey, prompt_id: str) -> None:
        mine = self._prompts.setdefault(client, OrderedDict())
        self._prompts.move_to_end(client)
        mine[prompt_id] = None
        while len(mine) > MAX_PROMPTS:
            mine.popitem(last=False)
        while len(self._prompts) > MAX_CLIENTS:
            self._prompts.popitem(last=False)

    def has(self, client: ClientKey, prompt_id: str) -> bool:
        return prompt_id in self._prompts.get(client, ())

    def prompts(self, client: ClientKey) -> list[str]:
        return list(self._prompts.get(client, ()))

    def done(self, client: ClientKey, prompt_id: str) -> None:
        self._prompts.get(client, OrderedDict()).pop(prompt_id, None)


CLIENTS = Clients()


def _ms() -> int:
    return int(time.time() * 1000)


class Session:
    """One websocket: which of its prompts have started, and what to send for each event."""

    def __init__(self, ws: WebSocket, service: JobService, caller: Caller, client_id: str) -> None:
        self.ws = ws
        self.service = service
        self.caller = caller
        self.client_id = client_id  # as the client named itself (sent back as the sid)
        self.client = client_key(caller, client_id)
        self.started: dict[str, str | None] = {}  # prompt id -> the node last announced as executing

    async def send(self, kind: str, data: dict[str, Any]) -> None:
        await self.ws.send_json({"type": kind, "data": data})

    async def send_status(self, with_sid: bool = False, fresh: bool = True) -> None:
        """The queue's length: read fresh on connect and after the client's own prompts; for others' at most every STATUS_S."""
        now, owner = time.monotonic(), self.caller.listing_owner
        if fresh or with_sid or owner not in _REMAINING or now - _REMAINING[owner][0] > STATUS_S:
            _REMAINING[owner] = (now, await asyncio.to_thread(prompts.queue_remaining, self.service, self.caller))
        remaining = _REMAINING[owner][1]
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
        if with_sid:
            data["sid"] = self.client_id
        await self.send("status", data)

    async def start(self, prompt_id: str) -> None:
        if prompt_id in self.started:
            return
        self.started[prompt_id] = None
        await self.send("execution_start", {"prompt_id": prompt_id, "timestamp": _ms()})
        await self.send("execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": _ms()})
        await self.executing(prompt_id, await asyncio.to_thread(self._first_node, prompt_id))

    def _first_node(self, prompt_id: str) -> str | None:
        """The first node of the prompt's workflow in ComfyUI's order (what ComfyUI announces first)."""
        job = self.service.store.get_job(prompt_id)
        spec = self.service.catalog.get(job.workflow) if job is not None else None
        ids = sorted_ids(spec.graph) if spec is not None else []
        return ids[0] if ids else None

    async def executing(self, prompt_id: str, node: str | None) -> None:
        self.started[prompt_id] = node
        await self.send("executing", {"node": node, "display_node": node, "prompt_id": prompt_id})

    async def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "lagged":
            await self.poll()
            return
        prompt_id = str(event.get("job_id"))
        if not CLIENTS.has(self.client, prompt_id):
            if kind == "item" and event.get("status") != "retrying":
                await self.send_status(fresh=False)  # another prompt or job finished: the queue changed
            return
        if kind == "started":
            await self.start(prompt_id)
        elif kind == "progress":
            await self.progress(prompt_id, event)
        elif kind == "preview":
            await self.preview(event)
        elif kind == "item" and event.get("status") != "retrying":
            await self.finish(prompt_id)

    async def progress(self, prompt_id: str, event: dict[str, Any]) -> None:
        await self.start(prompt_id)
        node = event.get("node_id")
        node = str(node) if node is not None else self.started.get(prompt_id)
        if node is not None and node != self.started.get(prompt_id):
            await self.executing(prompt_id, node)
        await self.send("progress", {"value": event.get("value", 0), "max": event.get("max", 0), "prompt_id": prompt_id,
                                     "node": node})

    async def preview(self, event: dict[str, Any]) -> None:
        fmt = PREVIEW_FORMATS.get(str(event.get("media_type")))
        data = event.get("data")
        if fmt is not None and isinstance(data, str):
            await self.ws.send_bytes(struct.pack(">II", 1, fmt) + base64.b64decode(data))

    async def poll(self) -> None:
        """The store's word on each unfinished prompt of this client (items run elsewhere, lost events)."""
        for prompt_id in CLIENTS.prompts(self.client):
            job = await asyncio.to_thread(self.service.store.get_job, prompt_id)
            if job is None:
                CLIENTS.done(self.client, prompt_id)
            elif job.state in TERMINAL_JOB_STATES:
                await self.finish(prompt_id)
            elif job.state == "running":
                await self.start(prompt_id)

    async def finish(self, prompt_id: str) -> None:
        """The end of a prompt, from the store: its outputs and success, or its error or interruption."""
        job = await asyncio.to_thread(self.service.store.get_job, prompt_id)
        if job is None or job.state not in TERMINAL_JOB_STATES or not CLIENTS.has(self.client, prompt_id):
            return
        CLIENTS.done(self.client, prompt_id)
        await self.start(prompt_id)
        item = await asyncio.to_thread(prompts.item_of, self.service, prompt_id)
        if job.state == "succeeded":
            for node, output in prompts.outputs_by_node(item).items():
                await self.executing(prompt_id, node)
                await self.send("executed", {"node": node, "display_node": node, "output": output, "prompt_id": prompt_id})
            await self.send("execution_success", {"prompt_id": prompt_id, "timestamp": _ms()})
        elif job.state == "cancelled":
            await self.send("execution_interrupted", {"prompt_id": prompt_id, "node_id": self.started.get(prompt_id) or "",
                                                      "node_type": "", "executed": [], "timestamp": _ms()})
        else:
            await self.send("execution_error", prompts.error_event(prompt_id, item, _ms()))
        await self.executing(prompt_id, None)
        self.started.pop(prompt_id, None)
        await self.send_status()


async def serve(ws: WebSocket, service: JobService, caller: Caller) -> None:
    """Run one /ws connection of `caller` until the client goes."""
    client_id = ws.query_params.get("clientId") or ws.query_params.get("clientid") or ""
    await ws.accept()
    session = Session(ws, service, caller, client_id or "anonymous")
    with service.live.subscription(None) as queue:
        await session.send_status(with_sid=True)
        await session.poll()
        receiver = asyncio.ensure_future(_until_closed(ws))
        getter: asyncio.Future[dict[str, Any]] | None = None
        next_poll = time.monotonic() + POLL_S
        try:
            while not receiver.done():
                getter = getter or asyncio.ensure_future(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter, receiver}
                done, _ = await asyncio.wait(waiting, timeout=max(0.0, next_poll - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    event, getter = getter.result(), None
                    await session.on_event(event)
                if time.monotonic() >= next_poll:
                    await session.poll()
                    next_poll = time.monotonic() + POLL_S
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went while we were sending
        finally:
            for task in (getter, receiver):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task


async def _until_closed(ws: WebSocket) -> None:
    """Read (and drop) what the client sends, until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
