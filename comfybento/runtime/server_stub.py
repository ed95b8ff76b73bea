"""A stand-in for ComfyUI's `server.PromptServer.instance`.

Nodes and custom nodes reach for `PromptServer.instance` (to send progress,
to register HTTP routes at import). There is no ComfyUI HTTP server here: this
object accepts those calls and routes progress events to whoever is listening
for the prompt that is running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]


class PromptServerStandIn:
    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets: dict[str, Any] = {}
        self.sockets_metadata: dict[str, Any] = {}
        self.routes = web.RouteTableDef()  # custom nodes decorate routes at import; never served
        self.app = web.Application()
        self.supports = set()  # type: ignore[var-annotated]
        self.loop = None
        self.number = 0
        self._listener: Listener | None = None
        self._lock = threading.Lock()

    def set_listener(self, listener: Listener | None) -> None:
        with self._lock:
            self._listener = listener

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        listener = self._listener
        if listener is not None and isinstance(data, dict):
            try:
                listener(event, data)
            except Exception:  # a listener must never break a running graph
                log.exception("progress listener failed on %s", event)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.send_sync("progress_text", {"text": text, "node": node_id}, sid)

    def queue_updated(self) -> None:
        pass

    def add_routes(self) -> None:
        pass
