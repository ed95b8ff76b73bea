"""The spec's error envelope: {"error": {"code", "message", "details"}}, for every answer of the v2 routes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from comfybento.errors import ComfyBentoError, StorageFull, describe
from comfybento.front.http import request_id

log = logging.getLogger(__name__)

# comfybento's HTTP status -> the spec's error code (a V2Error names its own code).
CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "payload_too_large",
         422: "invalid_workflow", 429: "queue_full", 503: "queue_full"}


class V2Error(ComfyBentoError):
    """An error with the spec's machine-readable code (missing_asset, hash_mismatch, idempotency_key_reuse ...)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error_code = status  # type: ignore[assignment]
        self.code = code
        self.details = details


def envelope(status: int, code: str, message: str, details: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}, "request_id": request_id()}
    log.log(logging.ERROR if status >= 500 and status != 503 else logging.INFO, "request %s answered %d (%s): %s", request_id(), status, code, message)
    return JSONResponse(body, status_code=status, headers=headers)


def error_envelope(exc: BaseException) -> JSONResponse:
    """Any exception as the envelope: a V2Error keeps its code; a comfybento error maps by status; the rest is a 500."""
    if isinstance(exc, V2Error):
        return envelope(int(exc.error_code), exc.code, str(exc), exc.details)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "(request)"
        return envelope(422, "invalid_request", f"{where}: {first.get('msg')}", {"errors": jsonable(exc.errors())})
    if isinstance(exc, HTTPException):  # e.g. a malformed multipart body
        return envelope(exc.status_code, CODES.get(exc.status_code, "invalid_request"), str(exc.detail))
    fields = describe(exc)
    status = int(fields["status"])
    if fields["error_kind"] == "storage_full":  # the spec has no 507: 503 + Retry-After, with its own code
        details: dict[str, Any] = {k: fields[k] for k in ("folder", "free_bytes", "watermark_bytes") if k in fields}
        return envelope(503, "storage_full", str(fields["error"]), details or None, {"Retry-After": str(StorageFull.retry_after_s)})
    if status >= 500 and not isinstance(exc, ComfyBentoError):
        log.error("request %s failed", request_id(), exc_info=exc)
        return envelope(500, "upstream_error", "internal error (see the server log)")
    retry = {"Retry-After": "2"} if status in (429, 503) else None
    return envelope(status, CODES.get(status, "upstream_error"), str(fields["error"]), None, retry)


def jsonable(errors: Any) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg"))} for e in errors]


class V2Route(APIRoute):
    """A route whose every error (validation included) answers in the spec's envelope, not comfybento's own shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every failure gets the envelope; unexpected ones are logged with the request id
                return error_envelope(exc)

        return answer
