"""The entry service's HTTP edge: request ids, the body limit, and errors as responses.

- Every response carries `X-Request-ID` (the client's own if it sent a sane
  one, else a fresh one); log lines about a request carry it too.
- A body over `max_body_bytes` gets a 413 before it is read (Content-Length)
  or as soon as it passes the limit (chunked).
- A JSON body (a JSON content type, or none) is read whole and its nesting
  measured before any route parses it: deeper than `max_json_depth` is a 413
  naming the limit (a parser's recursion never sees it). A form-urlencoded body
  gets a 415 naming its content type (no route takes one), unless it is JSON
  (urllib's default content type, which comfy-cli sends): then it is read as JSON.
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
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
MAX_DIGITS = 18  # of an integer read from a header or a query: anything longer is refused, never converted


def json_too_deep(body: bytes, limit: int) -> bool:
    """True when a JSON text nests arrays and objects deeper than `limit` (C-speed passes, no recursion).

    Strings are cut out, only brackets kept; each pass removes the innermost pairs. What `limit` passes leave is
    either nested deeper, or does not balance (not JSON: the route's parser says so).
    """
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    for _ in range(limit):
        reduced = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if len(reduced) == len(skeleton):
            break
        skeleton = reduced
    if not skeleton or skeleton[:1] not in (b"[", b"{"):
        return False
    return skeleton.count(b"[") + skeleton.count(b"{") == skeleton.count(b"]") + skeleton.count(b"}")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media in ("", "text/plain") or media == "application/json" or media.endswith("+json")


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
    """ASGI middleware: request id in and out, the request body limit, JSON bodies' nesting, form bodies refused."""

    def __init__(self, app: Any, max_body_bytes: int, max_json_depth: int = 64) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

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
        if length is not None and (not length.isdigit() or len(length) > MAX_DIGITS or int(length) > self.max_body_bytes):
            status, msg = (413, self._too_large()) if length.isdigit() else (400, "Content-Length is not a number")
            await _send_json(send, status, {"error": msg, "error_kind": "too_large" if status == 413 else "invalid",
                                            "request_id": rid}, id_header)
            return
        if "\n" in scope.get("path", ""):  # no route matches a line break (a mount's path pattern stops there)
            await _send_json(send, 404, {"error": "no such route (the path holds a line break)", "error_kind": "not_found",
                                         "request_id": rid}, id_header)
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        form = content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"
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

        app_receive = limited_receive
        if (_is_json(content_type) or form) and scope.get("method") in ("POST", "PUT", "PATCH"):
            try:
                body, more = await _read_whole(limited_receive)
            except BodyTooLarge:
                await _send_json(send, 413, {"error": self._too_large(), "error_kind": "too_large", "request_id": rid}, id_header)
                return
            if form and body.lstrip()[:1] not in (b"{", b"["):
                await _send_json(send, 415, {"error": f"Content-Type {content_type!r} is not accepted: send JSON "
                                                      "(application/json) or multipart/form-data", "error_kind": "invalid",
                                             "request_id": rid}, id_header)
                return
            if form:  # JSON sent with urllib's default content type (comfy-cli does): read as the JSON it is
                scope["headers"] = [(k, b"application/json" if k == b"content-type" else v) for k, v in scope["headers"]]
            if json_too_deep(body, self.max_json_depth):
                await _send_json(send, 413, {"error": f"the JSON body nests arrays and objects deeper than the limit of "
                                                      f"{self.max_json_depth} (max_json_depth)", "error_kind": "too_large",
                                             "request_id": rid}, id_header)
                return
            app_receive = _replay(body, more, limited_receive)
        token, scope_token = _RECEIVE.set(app_receive), _SCOPE.set(scope)
        try:
            await self.app(scope, app_receive, send_with_id)
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


async def _read_whole(receive: Any) -> tuple[bytes, bool]:
    """The request body (through the limited receive), and whether the client is still there."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, connected: bool, receive: Any) -> Any:
    """A receive that gives the app the body already read, then waits on the client (its disconnect) as before."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not connected:
            return {"type": "http.disconnect"}
        return await receive()

    return replay


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
