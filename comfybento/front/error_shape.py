"""The framework's own error answers, in comfybento's error shape: the one place they are reshaped.

BentoML and Starlette answer some requests before any of our code runs: a route that does not exist (a plain-text
404), a method a route does not take (a plain-text 405), a typed endpoint's body that fails validation (BentoML's
400 `{"error": "1 validation error for ...", "detail": [...]}`). On comfybento's own paths (`contract_of` says
"comfybento"; the compatibility APIs answer in their own contracts) such an answer is re-rendered through
`renderers.render`, like every other error: `error` (naming the first bad field), `error_kind`, `detail` (one entry
per bad field) and `request_id`, its status and headers (Allow, Retry-After ...) kept.

An error answer that already has the shape (rendered by us) passes through unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from comfybento.front.renderers import contract_of, render, status_fields

MAX_REWRITTEN_BYTES = 64 * 1024  # a larger error body is not a framework refusal: it passes as it is
_DROPPED = {b"content-length", b"content-type", b"x-request-id"}  # render sets its own


def shaped_fields(status: int, body: bytes, what: str) -> dict[str, Any] | None:
    """The fields `render` needs for a framework's error body, or None when the body already has our shape.

    `what` ("GET /nope") prefixes a plain-text answer's message.
    """
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, list) and data and isinstance(data[0], dict):  # BentoML's `({"error": ...},)`
        data = data[0]
    if isinstance(data, dict) and "error_kind" in data and "request_id" in data:
        return None
    if isinstance(data, dict):
        detail = data.get("detail") if isinstance(data.get("detail"), list) else None
        if detail and all(isinstance(e, dict) and "loc" in e for e in detail):  # kept: loc, msg, type (never the input)
            detail = [{key: e[key] for key in ("loc", "msg", "type") if key in e} for e in detail]
            return status_fields(status, _first_field(detail), detail=detail)
        message = data.get("error") or data.get("detail") or data.get("message")
        if isinstance(message, str) and message:
            return status_fields(status, message)
    text = body.decode("utf-8", "replace").strip() if isinstance(data, (str, type(None))) else ""
    return status_fields(status, f"{what}: {text or 'failed'}")


def _first_field(detail: list[dict[str, Any]]) -> str:
    first = detail[0]
    where = ".".join(str(p) for p in first.get("loc") or () if p != "body") or "(request)"
    more = f" (and {len(detail) - 1} more: see detail)" if len(detail) > 1 else ""
    return f"{where}: {first.get('msg') or 'invalid'}{more}"


class ErrorShapeMiddleware:
    """ASGI middleware: re-render framework error answers on comfybento's own paths (see the module's docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") == "HEAD" or contract_of(path) != "comfybento":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def reshaping_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if int(message["status"]) >= 400:
                    held["start"] = message
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                chunks.append(message.get("body", b""))
                size = sum(map(len, chunks))
                if message.get("more_body", False) and size <= MAX_REWRITTEN_BYTES:
                    return
                if message.get("more_body", False):  # too large to be a refusal: send what was held, then the rest
                    await send(held.pop("start"))
                    await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                    chunks.clear()
                    return
                await self._finish(scope, receive, send, held.pop("start"), b"".join(chunks))
                chunks.clear()
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)

    async def _finish(self, scope: dict[str, Any], receive: Any, send: Any, start: dict[str, Any], body: bytes) -> None:
        status = int(start["status"])
        fields = shaped_fields(status, body, f"{scope.get('method')} {scope.get('path')}")
        if fields is None:
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])
                   if k.lower() not in _DROPPED}
        retry = headers.pop("retry-after", "")  # render sets it: the framework's own, else the default
        answer = render(fields, "comfybento", headers=headers, retry_after_s=int(retry) if retry.isdigit() else None)
        await answer(scope, receive, send)
