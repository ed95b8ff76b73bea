"""The entry service's HTTP edge: request ids, the body limit, JSON nesting, form bodies.

- Every response carries `X-Request-ID` (the client's own if it sent a sane
  one, else a fresh one); log lines about a request carry it too. It also carries
  the headers a handler added (front/context.py `add_response_header`).
- A body over `max_body_bytes` gets a 413 before it is read (Content-Length)
  or as soon as it passes the limit (chunked).
- A JSON body (a JSON content type, or none) is read whole and its nesting
  measured before any route parses it: deeper than `max_json_depth` is a 413
  naming the limit (a parser's recursion never sees it). A form-urlencoded body
  gets a 415 naming its content type (no route takes one), unless it is JSON
  (urllib's default content type, which comfy-cli sends): then it is read as JSON.
- Its own refusals (413, 400, 404, 415) answer in the contract of the path
  (front/renderers.py: the v2 envelope on /api/v2, ComfyUI's shape on its routes,
  ours elsewhere), like every other error answer, never a traceback or a server path.
- `quiet_client_errors` turns BentoML's "Exception on ..." tracebacks for
  requests it refused itself (validation: 400) into one INFO line.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from comfybento.errors import NotFound, TooLarge
from comfybento.front.context import RECEIVE, REQUEST_ID, SCOPE, response_headers
from comfybento.front.context import base_url as base_url  # re-exported: where the handlers have always found them
from comfybento.front.context import request_id as request_id
from comfybento.front.context import until_client_disconnects as until_client_disconnects
from comfybento.front.renderers import error_response as error_response
from comfybento.front.renderers import render_for, status_fields

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
        refused = self._refused_up_front(scope, headers)
        if refused is not None:
            await _refuse(scope, receive, send, refused)
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
                own = [id_header] if not any(k.lower() == b"x-request-id" for k, _ in message.get("headers", [])) else []
                added = [*own, *response_headers(scope)]  # a renderer's has the id; the handler's own (context.py)
                if added:
                    message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        app_receive = limited_receive
        if (_is_json(content_type) or form) and scope.get("method") in ("POST", "PUT", "PATCH"):
            try:
                body, more = await _read_whole(limited_receive)
            except BodyTooLarge:
                await _refuse(scope, receive, send, TooLarge(self._too_large()))
                return
            if form and body.lstrip()[:1] not in (b"{", b"["):
                await _refuse(scope, receive, send, status_fields(415, f"Content-Type {content_type!r} is not accepted: send "
                                                                      "JSON (application/json) or multipart/form-data"))
                return
            if form:  # JSON sent with urllib's default content type (comfy-cli does): read as the JSON it is
                scope["headers"] = [(k, b"application/json" if k == b"content-type" else v) for k, v in scope["headers"]]
            if json_too_deep(body, self.max_json_depth):
                await _refuse(scope, receive, send, TooLarge(f"the JSON body nests arrays and objects deeper than the limit "
                                                             f"of {self.max_json_depth} (max_json_depth)"))
                return
            app_receive = _replay(body, more, limited_receive)
        token, scope_token = RECEIVE.set(app_receive), SCOPE.set(scope)
        try:
            await self.app(scope, app_receive, send_with_id)
        except BodyTooLarge:
            pass
        finally:
            RECEIVE.reset(token)
            SCOPE.reset(scope_token)
        if state["over"] and not state["started"]:
            await _refuse(scope, receive, send, TooLarge(self._too_large()))

    def _refused_up_front(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> Exception | dict[str, Any] | None:
        """What is wrong before any byte of the body is read: its announced length, or a path no route can match."""
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            return status_fields(400, "Content-Length is not a number")
        if length is not None and (len(length) > MAX_DIGITS or int(length) > self.max_body_bytes):
            return TooLarge(self._too_large())
        if "\n" in scope.get("path", ""):  # no route matches a line break (a mount's path pattern stops there)
            return NotFound("no such route (the path holds a line break)")
        return None

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


async def _refuse(scope: dict[str, Any], receive: Any, send: Any, error: Exception | dict[str, Any]) -> None:
    """Answer the middleware's own refusal in the contract of the path (front/renderers.py)."""
    await render_for(scope.get("path", ""), error)(scope, receive, send)


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
