"""Exceptions that carry an HTTP status.

They subclass BentoML's exception, so raising one inside an API handler gives
the client that status and the message (never a traceback). ComfyUI's error
tuples and dicts are converted to these in exactly one place:
`comfybento.runtime.errors`.
"""

from __future__ import annotations

import errno
import sqlite3
from http import HTTPStatus
from typing import Any, Literal, get_args

from bentoml.exceptions import BentoMLException

# What each error is called in answers, results, job records and events: the one list (OpenAPI's enums derive from it).
ErrorKind = Literal[
    "invalid",  # a field, query, header or body is wrong (400, 415, 422)
    "too_large",  # over a configured limit (413)
    "unauthorized",  # no API key, or a wrong one (401)
    "rate_limited",  # the key is over its rate limit or daily quota (429)
    "not_found",  # no such route, job, file or output (404)
    "node",  # a node failed at run time (500; node_id, class_type)
    "oom",  # the device ran out of memory even for a batch of one (503)
    "workflow",  # the workflow cannot run here: a node, input or model file is missing or corrupt (500)
    "unavailable",  # at capacity, restarting or shutting down: retry (503)
    "storage_full",  # no room to write: retry once space is freed (507)
    "cancelled",  # the caller went away (499)
    "internal",  # anything else (500; the log has the traceback)
]
ERROR_KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)


def kind_of_status(status: int) -> ErrorKind:
    """The kind of an answer known only by its status (a framework's refusal, an error that names only its status)."""
    named: dict[int, ErrorKind] = {401: "unauthorized", 404: "not_found", 413: "too_large", 429: "rate_limited",
                                   499: "cancelled", 503: "unavailable", 507: "storage_full"}
    return named.get(status, "invalid" if status < 500 else "internal")


class ComfyBentoError(BentoMLException):
    """Base class: a message safe to show a client, an HTTP status and the error's kind."""

    error_code = HTTPStatus.INTERNAL_SERVER_ERROR
    kind: ErrorKind | None = None  # None: the kind its status names (kind_of_status)

    def answer_fields(self) -> dict[str, Any]:
        """Client-safe fields beyond status, kind and message that this error adds to an answer (none by default)."""
        return {}


class ConfigError(ComfyBentoError):
    """A setting or project file is wrong; raised at startup."""


class WorkflowError(ComfyBentoError):
    """A workflow file cannot be served (named file, node, input or model)."""

    kind: ErrorKind = "workflow"


class ModelLockError(ComfyBentoError):
    """models.lock is malformed, or a model file is missing or corrupt."""

    kind: ErrorKind = "workflow"


class InvalidRequest(ComfyBentoError):
    """A request field is wrong; the message names the field."""

    error_code = HTTPStatus.UNPROCESSABLE_ENTITY
    kind: ErrorKind = "invalid"


class UrlRefused(InvalidRequest):
    """A URL a request gives is not allowed: not http(s), or its host is not in the allow-list (an internal address)."""

    error_code = HTTPStatus.BAD_REQUEST


class Conflict(InvalidRequest):
    """What the request would make exists already, and the request asked not to replace it."""

    error_code = HTTPStatus.CONFLICT


class UnsupportedFile(InvalidRequest):
    """A file a request gives is not of a type that field takes (a model by URL that is not safetensors)."""

    error_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class TooLarge(ComfyBentoError):
    """A request, upload or body is over a configured limit, or cannot fit on this device even alone.

    The message names the limit. Not transient: retrying the same request gets the same answer.
    """

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    kind: ErrorKind = "too_large"


class Unauthorized(ComfyBentoError):
    """No API key, a malformed Authorization header, or an unknown key."""

    error_code = HTTPStatus.UNAUTHORIZED
    kind: ErrorKind = "unauthorized"


class RateLimited(ComfyBentoError):
    """The API key is over its rate limit or its daily image quota; `retry_after_s`: when its bucket has room again."""

    error_code = HTTPStatus.TOO_MANY_REQUESTS
    kind: ErrorKind = "rate_limited"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def answer_fields(self) -> dict[str, Any]:
        return {"retry_after_s": self.retry_after_s} if self.retry_after_s is not None else {}


class NotFound(ComfyBentoError):
    error_code = HTTPStatus.NOT_FOUND
    kind: ErrorKind = "not_found"


class NodeExecutionError(ComfyBentoError):
    """A node raised during execution; names the node id, class and message."""

    error_code = HTTPStatus.INTERNAL_SERVER_ERROR
    kind: ErrorKind = "node"

    def __init__(self, node_id: str, class_type: str, message: str) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.comfy_message = message
        super().__init__(f"node {node_id} ({class_type}) failed: {message}")

    def answer_fields(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "class_type": self.class_type}


class OutOfMemory(ComfyBentoError):
    """The device ran out of memory even for a batch of one."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE
    kind: ErrorKind = "oom"


class QueueFull(ComfyBentoError):
    error_code = HTTPStatus.SERVICE_UNAVAILABLE
    kind: ErrorKind = "unavailable"


class EngineUnavailable(ComfyBentoError):
    """The engine restarted, is shutting down or cannot be reached; retrying is safe."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE
    kind: ErrorKind = "unavailable"


class StorageFull(ComfyBentoError):
    """Work that writes to disk cannot be taken or finished now: a folder is below its free-space watermark, or a
    write failed for lack of room (ENOSPC, EDQUOT, EROFS, a full SQLite file, a Redis store out of memory).

    Transient: the same request succeeds once space is freed (Retry-After says when to try again). `folder` names
    the folder by its role and setting, never its server path (the log has that).
    """

    error_code = HTTPStatus.INSUFFICIENT_STORAGE
    kind: ErrorKind = "storage_full"
    # Seconds a client is told to wait (Retry-After): room comes back when retention or an operator frees it.
    retry_after_s = 30

    def __init__(self, message: str, folder: str | None = None, free_bytes: int | None = None,
                 watermark_bytes: int | None = None) -> None:
        super().__init__(message)
        self.folder, self.free_bytes, self.watermark_bytes = folder, free_bytes, watermark_bytes

    def details(self) -> dict[str, Any]:
        """What a client may act on: the folder, its free bytes and the watermark (those known)."""
        found = {"folder": self.folder, "free_bytes": self.free_bytes, "watermark_bytes": self.watermark_bytes}
        return {k: v for k, v in found.items() if v is not None}

    def answer_fields(self) -> dict[str, Any]:
        return {**self.details(), "retry_after_s": self.retry_after_s}


# errno values of a write that failed for lack of room (or a file system that takes no writes).
STORAGE_ERRNOS = {errno.ENOSPC: "ENOSPC", errno.EDQUOT: "EDQUOT", errno.EROFS: "EROFS"}
_SQLITE_FULL = 13


def storage_full(exc: BaseException) -> StorageFull | None:
    """The StorageFull a failed write means (an OSError with a STORAGE_ERRNOS errno, SQLite's "database or disk is
    full", Redis's OOM or MISCONF refusal), or None for any other error. Follows `raise ... from` causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ComfyBentoError):  # already classified
            return seen if isinstance(seen, StorageFull) else None
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return StorageFull(f"the server's storage is full ({STORAGE_ERRNOS[seen.errno]}): a write failed; retry later")
        if isinstance(seen, sqlite3.OperationalError) and (
                getattr(seen, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(seen)):
            return StorageFull("the job store is full (SQLite: database or disk is full); retry later", folder="jobs")
        if type(seen).__module__.startswith("redis") and str(seen).startswith(("OOM ", "MISCONF ")):
            return StorageFull(f"the job store is full (Redis: {str(seen).split(' ', 1)[0]}); retry later", folder="jobs")
        seen = seen.__cause__
    return None


class Cancelled(ComfyBentoError):
    """The caller went away before its request ran (nobody is left to read this status)."""

    error_code = 499  # type: ignore[assignment]
    kind: ErrorKind = "cancelled"


class InternalError(ComfyBentoError):
    """An unexpected failure; the client sees this message, the log has the traceback."""


def describe(exc: BaseException) -> dict[str, Any]:
    """The client-safe fields of an error: "status", "error_kind", "error" (the message) and what the error adds
    (`answer_fields`): "node_id" and "class_type" of a node error, a full folder's "folder", "free_bytes" and
    "watermark_bytes", and "retry_after_s" where the error knows when to retry (a full disk, a key's rate limit).

    The one place where an exception becomes what a client sees (front/renderers.py shapes it for each API). A
    write that failed for lack of room (see `storage_full`) is a StorageFull, whatever raised it. Anything else that
    is not a ComfyBentoError is an internal error: its message may hold server paths, so the client gets a generic
    one (the renderer logs the traceback).
    """
    exc = storage_full(exc) or exc
    if not isinstance(exc, ComfyBentoError):
        return {"status": 500, "error_kind": "internal", "error": "internal error (see the server log)"}
    status = int(exc.error_code)
    return {"status": status, "error_kind": exc.kind or kind_of_status(status), "error": str(exc), **exc.answer_fields()}
