"""The entry service's HTTP edge: request ids, the body limit, and errors as responses.

- Every response carries `X-Request-ID` (the client's own if it sent a sane
  one, else a fresh one); log lines about a request carry it too.
- A body over `max_body_bytes` gets a 413 before it is read (Content-Length)
  or as soon as it passes the limit (chunked).
- `error_response` is the one place an error becomes an HTTP answer: the
  fields come from `errors.describe` (or an engine result, which carries the
  same fields), never a traceback or a server path.
- `quiet_client_errors` turns BentoML's "Exception on ..." tracebacks for
  requests it refused itself (validation: 400) into one INFO line.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from comfybento.errors import StorageFull, describe

log = logging.getLogger("comfybento.http")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("comfybento_request_id", default="-")
_RECEIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("comfybento_receive", default=None)
_SCOPE: contextvars.ContextVar[Any] = contextvars.ContextVar("comfybento_scope", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def base_url() -> str:
    """The scheme, host and root path the client used for the request being handled ("" outside one)."""
    scope = _SCOPE.get()
    return str(Request(scope).base_url).rstrip("/") if scope is not None else ""


def request_id() -> str:
    """The id of the request being handled in this context ("-" outside one)."""
    return REQUEST_ID.get()


async def until_client_disconnects() -> None:
    """Returns once the client of the request being handled has gone away (call it after the body was read)."""
    receive = _RECEIVE.get()
    if receive is None:
        await asyncio.Event().wait()  # not in a request: never
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


def error_response(error: BaseException | Mapping[str, Any], retry_after_s: int | None = None,
                   headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> JSONResponse:
    """An error (an exception, or the fields of an engine result) as a JSON answer, logged in one line.

    Body: {"error", "error_kind", "request_id"} and, for node errors, "node_id" and "class_type"; for storage_full
    (507), the "folder", its "free_bytes" and the "watermark_bytes" when known. 429, 503 and 507 answers say when
    to retry (a 507 after StorageFull.retry_after_s unless told otherwise).
    """
    fields = describe(error) if isinstance(error, BaseException) else dict(error)
    status = int(fields.get("status") or 500)
    body = {"error": fields.get("error") or "failed", "error_kind": fields.get("error_kind") or "internal",
            "request_id": request_id()}
    for key in ("node_id", "class_type", "folder", "free_bytes", "watermark_bytes"):
        if fields.get(key) is not None:
            body[key] = fields[key]
    body.update(extra or {})
    headers = dict(headers or {})
    retry = retry_after_s or (StorageFull.retry_after_s if status == 507 else None)
    if retry and status in (429, 503, 507):
        headers["Retry-After"] = str(retry)
    level = logging.ERROR if status >= 500 and status not in (503, 507) else logging.INFO
    log.log(level, "request %s answered %d (%s): %s", request_id(), status, body["error_kind"], body["error"])
    return JSONResponse(body, status_code=status, headers=headers)


class RequestEdgeMiddleware:
    """ASGI middleware: request id in and out, and the request body limit."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1").strip()
        rid = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        try:
            await self._handle(scope, receive, send, headers, rid)
        finally:
            REQUEST_ID.reset(token)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any, headers: dict[bytes, bytes], rid: str) -> None:
        id_header = (b"x-request-id", rid.encode("latin-1"))
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            status, msg = (413, self._too_large()) if length.isdigit() else (400, "Content-Length is not a number")
            await _send_json(send, status, {"error": msg, "error_kind": "too_large" if status == 413 else "invalid",
                                            "request_id": rid}, id_header)
            return
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    state["over"] = True
                    raise BodyTooLarge
            return message

        async def send_with_id(message: dict[str, Any]) -> None:
            if state["over"]:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                state["started"] = True
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            await send(message)

        token, scope_token = _RECEIVE.set(limited_receive), _SCOPE.set(scope)
        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            pass
        finally:
            _RECEIVE.reset(token)
            _SCOPE.reset(scope_token)
        if state["over"] and not state["started"]:
            await _send_json(send, 413, {"error": self._too_large(), "error_kind": "too_large", "request_id": rid}, id_header)

    def _too_large(self) -> str:
        return f"the request body is more than the limit of {self.max_body_bytes} bytes (max_body_bytes)"


class BodyTooLarge(Exception):
    """Raised into the app when the body it is reading passes the limit."""


async def _send_json(send: Any, status: int, body: dict[str, Any], *headers: tuple[bytes, bytes]) -> None:
    log.info("request %s answered %d: %s", body.get("request_id"), status, body.get("error"))
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class _ClientErrorFilter(logging.Filter):
    """BentoML logs every refused request as ERROR with a traceback; a client's mistake is one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        client_error = isinstance(exc, ValidationError) or (
            isinstance(exc, BentoMLException) and int(getattr(exc, "error_code", 500)) < 500)
        if client_error and str(record.msg).startswith("Exception on"):
            record.msg = f"request {request_id()} refused: %s %s: " + _one_line(exc).replace("%", "%%")
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def _one_line(exc: BaseException | None) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))[:500]
    return str(exc).replace("\n", " ")[:500]


def quiet_client_errors() -> None:
    """Install the filter on BentoML's HTTP app logger (once per process)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _ClientErrorFilter) for f in logger.filters):
        logger.addFilter(_ClientErrorFilter())
