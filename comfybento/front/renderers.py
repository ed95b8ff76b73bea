"""Errors as answers: one renderer per wire contract, all fed by `errors.describe`.

The entry service speaks three contracts; `contract_of(path)` says which one a path belongs to:

- "comfybento" (the typed endpoints, /jobs, /outputs, everything else):
  `{"error", "error_kind", "request_id"}`, "detail" (one entry per bad field) for a field error and, for node
  errors, "node_id" and "class_type"; for storage_full
  (507), the "folder", its "free_bytes" and the "watermark_bytes" when known.
- "comfy_v2" (/api/v2/...): the spec's envelope `{"error": {"code", "message", "details"}, "request_id"}`. The
  spec has no 507: a full disk is a 503 with code "storage_full".
- "comfyui" (ComfyUI's routes: /prompt, /queue, /history, /view, /upload/..., /ws ... and their /api/... twins):
  ComfyUI's `{"error": {"type", "message", "details", "extra_info"}, "node_errors": {}}` plus "request_id"; a bad
  request is a 400 as ComfyUI answers it (not 422), and a full disk a 503 (ComfyUI has no 507).
- "openai" (the OpenAI Images API under /v1, front/compat/openai_images/): OpenAI's `{"error": {"message", "type",
  "param", "code"}}` plus "request_id"; a bad request is a 400 "invalid_request_error" naming its `param`.

Every answer carries X-Request-ID, and Retry-After on a 429, 503 or 507: the error's own (a key's rate limit, a full
disk) or else COMFYBENTO_RETRY_AFTER_S. Each is logged in one line with the request id: a 5xx (but 503 and 507,
which are capacity, not faults) at ERROR with the traceback, the rest as a short line. The endpoints, the route
handlers and the middlewares (front/http.py, front/access.py) all answer through `render`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar, Literal

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from comfybento.config import get_settings
from comfybento.errors import describe, kind_of_status
from comfybento.front.context import request_id

log = logging.getLogger("comfybento.http")

Contract = Literal["comfybento", "comfy_v2", "comfyui", "openai"]
V2_PREFIX = "/api/v2"
EDITOR_PREFIX = "/comfy"  # ComfyUI's editor (front/editor.py)
OPENAI_PREFIX = "/v1"
# ComfyUI's routes (front/compat/comfyui/routes.py), each served at /x and at /api/x: the first segment of the path.
COMFYUI_ROUTES = frozenset({"prompt", "queue", "interrupt", "history", "view", "upload", "object_info", "system_stats",
                            "free", "embeddings", "extensions", "models", "ws",
                            # the ones ComfyUI's editor calls (front/compat/comfyui/editor_routes.py)
                            "users", "settings", "userdata", "v2", "experiment", "view_metadata", "features", "i18n",
                            "workflow_templates", "global_subgraphs"})
RETRY_STATUSES = (429, 503, 507)
# Fields beyond status, kind and message that comfybento's shape carries (when the error has them).
OUR_FIELDS = ("node_id", "class_type", "folder", "free_bytes", "watermark_bytes")
# comfybento's HTTP status -> the Comfy API v2 spec's error code (an error may name its own: V2Error's "code").
V2_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "payload_too_large",
            422: "invalid_workflow", 429: "queue_full", 503: "queue_full"}

Shape = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


def contract_of(path: str) -> Contract:
    """The wire contract a request path belongs to (the one place that decides it)."""
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return "comfy_v2"
    if path.startswith(OPENAI_PREFIX + "/"):
        return "openai"
    if path.startswith(EDITOR_PREFIX + "/api/") or path == EDITOR_PREFIX + "/ws":
        return "comfyui"  # ComfyUI's editor's calls (front/editor.py), which it maps onto ComfyUI's routes
    bare = path[len("/api"):] if path.startswith("/api/") else path
    return "comfyui" if bare.lstrip("/").split("/", 1)[0] in COMFYUI_ROUTES else "comfybento"


def ours(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """comfybento's own shape (typed endpoints, /jobs ...)."""
    body = {"error": fields.get("error") or "failed", "error_kind": fields.get("error_kind") or "internal",
            "request_id": request_id()}
    body.update({key: fields[key] for key in OUR_FIELDS if fields.get(key) is not None})
    if isinstance(fields.get("detail"), list):  # a field error's entries: {"loc", "msg", "type"} per field
        body["detail"] = fields["detail"]
    return _status(fields), body


def comfy_v2(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The Comfy API v2 spec's envelope; a full disk (507, which the spec lacks) is a 503 "storage_full"."""
    status = _status(fields)
    details = fields.get("details")
    if status == 507:
        status, code = 503, "storage_full"
        details = {key: fields[key] for key in ("folder", "free_bytes", "watermark_bytes") if key in fields} or None
    else:
        code = fields.get("code") or V2_CODES.get(status) or ("invalid_request" if status < 500 else "upstream_error")
    error = {"code": code, "message": fields.get("error") or "failed", "details": details}
    return status, {"error": error, "request_id": request_id()}


def comfyui(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """ComfyUI's shape, as its server answers a refused /prompt: a bad request is a 400 "invalid_prompt"."""
    status, kind = _status(fields), fields.get("error_kind") or "internal"
    if status == 507:  # ComfyUI's API has no 507: the generic "retry later"
        status = 503
    elif status in (400, 422):
        status = 400
    message = fields.get("error") or "failed"
    extra_info = {key: fields[key] for key in OUR_FIELDS if fields.get(key) is not None}
    error = {"type": "invalid_prompt" if kind == "invalid" else kind, "message": message, "details": message,
             "extra_info": extra_info}
    return status, {"error": error, "node_errors": {}, "request_id": request_id()}


# comfybento's HTTP status -> OpenAI's error type (its SDKs raise by status; the type is for people reading it).
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def openai(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """OpenAI's error shape: a field error is a 400 naming its `param`; a full disk (507) a 503, as OpenAI has none."""
    status = _status(fields)
    if status == 422:
        status = 400
    elif status == 507:
        status = 503
    kind = OPENAI_TYPES.get(status) or ("invalid_request_error" if status < 500 else "server_error")
    param = fields.get("param")
    errors = (fields.get("details") or {}).get("errors") or []
    if param is None and errors:  # a request that failed validation: its first field
        param = ".".join(str(p) for p in errors[0]["loc"] if p != "body") or None
    error = {"message": fields.get("error") or "failed", "type": kind, "param": param,
             "code": fields.get("code") or fields.get("error_kind")}
    return status, {"error": error, "request_id": request_id()}


SHAPES: dict[Contract, Shape] = {"comfybento": ours, "comfy_v2": comfy_v2, "comfyui": comfyui, "openai": openai}


def render(error: BaseException | Mapping[str, Any], contract: Contract = "comfybento", *,
           retry_after_s: int | None = None, headers: Mapping[str, str] | None = None,
           extra: Mapping[str, Any] | None = None) -> JSONResponse:
    """An error (an exception, or fields as `describe` gives them: an engine result's) as the contract's JSON answer.

    `retry_after_s` overrides the error's own; `headers` are added (WWW-Authenticate, RateLimit-*); `extra`: more
    body fields (a refused job's "items").
    """
    fields = fields_of(error) if isinstance(error, BaseException) else dict(error)
    status, body = SHAPES[contract](fields)
    body.update(extra or {})
    out = dict(error.headers or {}) if isinstance(error, HTTPException) else {}
    out.update(headers or {})
    if request_id() != "-":
        out["X-Request-ID"] = request_id()
    if status in RETRY_STATUSES:
        out["Retry-After"] = str(retry_after_s or fields.get("retry_after_s") or get_settings().retry_after_s)
    _log(status, fields, error)
    return JSONResponse(body, status_code=status, headers=out)


def render_for(path: str, error: BaseException | Mapping[str, Any], **options: Any) -> JSONResponse:
    """`render` in the contract of the request path (`contract_of`)."""
    return render(error, contract_of(path), **options)


def error_response(error: BaseException | Mapping[str, Any], retry_after_s: int | None = None,
                   headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> JSONResponse:
    """An error in comfybento's own shape (the typed endpoints, /jobs)."""
    return render(error, "comfybento", retry_after_s=retry_after_s, headers=headers, extra=extra)


def fields_of(exc: BaseException) -> dict[str, Any]:
    """`describe`, and the framework's own refusals: a request that fails validation (422, naming the first field;
    "details" lists each), an HTTPException (its status and detail)."""
    if isinstance(exc, RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type", "invalid"))}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "(request)"
        return status_fields(422, f"{where}: {first['msg']}", code="invalid_request", details={"errors": errors},
                             detail=errors)
    if isinstance(exc, HTTPException):  # e.g. a malformed multipart body
        return status_fields(exc.status_code, str(exc.detail))
    return describe(exc)


def status_fields(status: int, message: str, **more: Any) -> dict[str, Any]:
    """The fields of an answer known by its status and message (a framework's or a middleware's refusal)."""
    return {"status": status, "error_kind": kind_of_status(status), "error": message, **more}


class ContractRoute(APIRoute):
    """A FastAPI route whose every error (validation included) answers in its contract, whatever the app's handlers do."""

    contract: ClassVar[Contract] = "comfybento"

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every failure is rendered (and logged, unexpected ones with their traceback)
                return render(exc, self.contract)

        return answer


def _status(fields: Mapping[str, Any]) -> int:
    return int(fields.get("status") or 500)


def _log(status: int, fields: Mapping[str, Any], error: BaseException | Mapping[str, Any]) -> None:
    """One line per error answer, with the request id: a fault (5xx but 503/507) at ERROR with its traceback."""
    line = ("request %s answered %d (%s): %s", request_id(), status, fields.get("error_kind") or "internal",
            fields.get("error") or "failed")
    if status >= 500 and status not in (503, 507):
        log.error(*line, exc_info=error if isinstance(error, BaseException) else None)
    elif status >= 500:
        log.warning(*line)
    else:
        log.info(*line)

