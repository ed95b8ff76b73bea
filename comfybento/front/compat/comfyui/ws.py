"""ComfyUI's /ws: status, and the execution events of the prompts a client submitted, from the jobs' live events.

On connect: `status` {status: {exec_info: {queue_remaining}}, sid}. For each of
the client's prompts: execution_start, execution_cached, executing and
progress while it runs (binary preview frames when the engine sends previews),
then executing + executed per output node, execution_success and executing
{node: null}; or execution_error / execution_interrupted; then `status` again.

The changes of the client's unfinished prompts come from front/jobs/follow.py:
this replica's live events, and every second the prompts read from the store,
which covers items run by another replica and events lost to a lagging subscriber.

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
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from comfybento.front.compat import node_ids
from comfybento.front.compat.comfyui import prompts
from comfybento.front.compat.node_ids import NodeIds
from comfybento.front.jobs import follow
from comfybento.front.jobs.service import JobService
from comfybento.front.ownership import Caller
from comfybento.workflows.graph import sorted_ids

PREVIEW_FORMATS = {"image/jpeg": 1, "image/png": 2}  # ComfyUI's binary PREVIEW_IMAGE (type 1) frame formats
MAX_CLIENTS = 10_000
MAX_PROMPTS = 1000
STATUS_S = 0.25  # the queue length sent in status updates is at most this old (it scans the job store)
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

    def of(self, client: ClientKey) -> Collection[str]:
        """The client's prompts, as they are now (not a copy: read it on the event loop)."""
        return self._prompts.get(client, {}).keys()

    def done(self, client: ClientKey, prompt_id: str) -> None:
        self._prompts.get(client, OrderedDict()).pop(prompt_id, None)


class Sockets:
    """What /ws keeps in one front process (the app's, made when the routes are installed): which client submitted
    each prompt (POST /prompt's client_id), and the queue length last counted per owner."""

    def __init__(self) -> None:
        self.clients = Clients()
        self.remaining: dict[str | None, tuple[float, int]] = {}  # owner -> (when counted (monotonic), queue_remaining)


def sockets(app: Any) -> Sockets:
    """The /ws state of `app` (a request's or a socket's app), made when the routes were installed on it."""
    state: Sockets = app.state.comfyui_sockets
    return state


def _ms() -> int:
    return int(time.time() * 1000)


class Session:
    """One websocket: which of its prompts have started, and what to send for each change of its prompts."""

    def __init__(self, ws: WebSocket, service: JobService, caller: Caller, client_id: str, state: Sockets) -> None:
        self.ws = ws
        self.service = service
        self.caller = caller
        self.client_id = client_id  # as the client named itself (sent back as the sid)
        self.client = client_key(caller, client_id)
        self.clients, self.remaining = state.clients, state.remaining
        self.started: dict[str, str | None] = {}  # prompt id -> the node last announced as executing (the workflow's id)
        self.ids: dict[str, NodeIds] = {}  # prompt id -> its workflow's node ids as the submitted graph names them

    async def send(self, kind: str, data: dict[str, Any]) -> None:
        await self.ws.send_json({"type": kind, "data": data})

    async def send_status(self, with_sid: bool = False, fresh: bool = True) -> None:
        """The queue's length: read fresh on connect and after the client's own prompts; for others' at most every STATUS_S."""
        now, owner = time.monotonic(), self.caller.listing_owner
        if fresh or with_sid or owner not in self.remaining or now - self.remaining[owner][0] > STATUS_S:
            self.remaining[owner] = (now, await asyncio.to_thread(prompts.queue_remaining, self.service, self.caller))
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.remaining[owner][1]}}}
        if with_sid:
            data["sid"] = self.client_id
        await self.send("status", data)

    async def start(self, prompt_id: str) -> None:
        if prompt_id in self.started:
            return
        self.started[prompt_id] = None
        self.ids[prompt_id] = await asyncio.to_thread(node_ids.load, self.service.storage, prompt_id)
        await self.send("execution_start", {"prompt_id": prompt_id, "timestamp": _ms()})
        await self.send("execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": _ms()})
        await self.executing(prompt_id, await asyncio.to_thread(self._first_node, prompt_id))

    def _first_node(self, prompt_id: str) -> str | None:
        """The first node of the prompt's workflow in ComfyUI's order (what ComfyUI announces first)."""
        job = self.service.store.get_job(prompt_id)
        spec = self.service.catalog.get(job.workflow) if job is not None else None
        ids = sorted_ids(spec.graph) if spec is not None else []
        return ids[0] if ids else None

    def _theirs(self, prompt_id: str, node: str | None) -> str | None:
        """A node of the prompt's workflow under the id the client's graph gave it."""
        return self.ids.get(prompt_id, NodeIds()).maybe(node)

    async def executing(self, prompt_id: str, node: str | None) -> None:
        self.started[prompt_id] = node
        theirs = self._theirs(prompt_id, node)
        await self.send("executing", {"node": theirs, "display_node": theirs, "prompt_id": prompt_id})

    async def on_change(self, change: follow.Change) -> None:
        """A change of one of the client's prompts (front/jobs/follow.py) in ComfyUI's messages; another's item: the queue moved."""
        if isinstance(change, follow.ItemOutcome):
            if change.status != "retrying" and not self.clients.has(self.client, change.job_id):
                await self.send_status(fresh=False)  # another prompt or job finished: the queue changed
        elif isinstance(change, follow.JobSnapshot):
            if change.terminal:
                await self.finish(change)
            elif change.job.state == "running":
                await self.start(change.job.id)
        elif isinstance(change, follow.JobGone):
            self.clients.done(self.client, change.job_id)
        elif isinstance(change, follow.Started):
            await self.start(change.job_id)
        elif isinstance(change, follow.Progress):
            await self.progress(change)
        elif isinstance(change, follow.Preview):
            await self.preview(change)

    async def progress(self, change: follow.Progress) -> None:
        prompt_id = change.job_id
        await self.start(prompt_id)
        node = change.node_id if change.node_id is not None else self.started.get(prompt_id)
        if node is not None and node != self.started.get(prompt_id):
            await self.executing(prompt_id, node)
        await self.send("progress", {"value": change.value, "max": change.max, "prompt_id": prompt_id, "node": self._theirs(prompt_id, node)})

    async def preview(self, change: follow.Preview) -> None:
        fmt = PREVIEW_FORMATS.get(change.media_type)
        if fmt is not None:
            await self.ws.send_bytes(struct.pack(">II", 1, fmt) + base64.b64decode(change.data))

    async def finish(self, snapshot: follow.JobSnapshot) -> None:
        """The end of a prompt, as the store recorded it: its outputs and success, or its error or interruption."""
        job, prompt_id = snapshot.job, snapshot.job.id
        if not self.clients.has(self.client, prompt_id):
            return
        self.clients.done(self.client, prompt_id)
        await self.start(prompt_id)
        item = snapshot.items[0] if snapshot.items else None
        if job.state == "succeeded":
            for node, output in prompts.outputs_by_node(item, NodeIds()).items():  # the workflow's ids, sent as the client's
                await self.executing(prompt_id, node)
                theirs = self._theirs(prompt_id, node)
                await self.send("executed", {"node": theirs, "display_node": theirs, "output": output, "prompt_id": prompt_id})
            await self.send("execution_success", {"prompt_id": prompt_id, "timestamp": _ms()})
        elif job.state == "cancelled":
            await self.send("execution_interrupted", {"prompt_id": prompt_id, "node_id": self._theirs(prompt_id, self.started.get(prompt_id)) or "",
                                                      "node_type": "", "executed": [], "timestamp": _ms()})
        else:
            await self.send("execution_error", prompts.error_event(prompt_id, item, _ms(), self.ids.get(prompt_id, NodeIds())))
        await self.executing(prompt_id, None)
        self.started.pop(prompt_id, None)
        self.ids.pop(prompt_id, None)
        await self.send_status()

    async def translate(self, changes: AsyncGenerator[follow.Change]) -> None:
        async with aclosing(changes):
            async for change in changes:
                await self.on_change(change)


async def serve(ws: WebSocket, service: JobService, caller: Caller) -> None:
    """Run one /ws connection of `caller` until the client goes."""
    client_id = ws.query_params.get("clientId") or ws.query_params.get("clientid") or ""
    await ws.accept()
    session = Session(ws, service, caller, client_id or "anonymous", sockets(ws.app))
    with service.live.subscription(None) as queue:
        await session.send_status(with_sid=True)
        changes = follow.follow_jobs(service.store, queue, lambda: session.clients.of(session.client))
        translating = asyncio.ensure_future(session.translate(changes))
        receiver = asyncio.ensure_future(_until_closed(ws))
        try:
            done, _ = await asyncio.wait({translating, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if translating in done:
                translating.result()  # what broke the follow (the client going while we sent is not an error)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went while we were sending
        finally:
            for task in (translating, receiver):
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
