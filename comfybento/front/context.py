"""The request being handled, as the request-edge middleware (front/http.py) records it: its id, scope and receive,
and the headers its answer is to carry.

Read anywhere below the middleware (handlers, renderers, log lines) without passing the request along.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from starlette.requests import Request

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("comfybento_request_id", default="-")
RECEIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("comfybento_receive", default=None)
SCOPE: contextvars.ContextVar[Any] = contextvars.ContextVar("comfybento_scope", default=None)
RESPONSE_HEADERS = "comfybento_response_headers"  # in the scope's state: [(name, value)] add_response_header gave


def request_id() -> str:
    """The id of the request being handled in this context ("-" outside one)."""
    return REQUEST_ID.get()


def add_response_header(name: str, value: str) -> None:
    """A header the answer to the request being handled will carry, whatever renders it (the edge adds it)."""
    scope = SCOPE.get()
    if scope is not None:
        scope.setdefault("state", {}).setdefault(RESPONSE_HEADERS, []).append((name.lower().encode("latin-1"), value.encode("latin-1")))


def response_headers(scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The headers add_response_header gave the answer to the request of `scope`."""
    return list(scope.get("state", {}).get(RESPONSE_HEADERS, ()))


def base_url() -> str:
    """The scheme, host and root path the client used for the request being handled ("" outside one)."""
    scope = SCOPE.get()
    return str(Request(scope).base_url).rstrip("/") if scope is not None else ""


async def until_client_disconnects() -> None:
    """Returns once the client of the request being handled has gone away (call it after the body was read)."""
    receive = RECEIVE.get()
    if receive is None:
        await asyncio.Event().wait()  # not in a request: never
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)
