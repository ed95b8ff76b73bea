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
from typing import Any

from bentoml.exceptions import BentoMLException


class ComfyBentoError(BentoMLException):
    """Base class: a message safe to show a client, and an HTTP status."""

    error_code = HTTPStatus.INTERNAL_SERVER_ERROR


class ConfigError(ComfyBentoError):
    """A setting or project file is wrong; raised at startup."""


class WorkflowError(ComfyBentoError):
    """A workflow file cannot be served (named file, node, input or model)."""


class ModelLockError(ComfyBentoError):
    """models.lock is malformed, or a model file is missing or corrupt."""


class InvalidRequest(ComfyBentoError):
    """A request field is wrong; the message names the field."""

    error_code = HTTPStatus.UNPROCESSABLE_ENTITY


class TooLarge(ComfyBentoError):
    """A request, upload or body is over a configured limit, or cannot fit on this device even alone.

    The message names the limit. Not transient: retrying the same request gets the same answer.
    """

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unauthorized(ComfyBentoError):
    """No API key, a malformed Authorization header, or an unknown key."""

    error_code = HTTPStatus.UNAUTHORIZED


class RateLimited(ComfyBentoError):
    """The API key is over its rate limit or its daily image quota."""

    error_code = HTTPStatus.TOO_MANY_REQUESTS


class NotFound(ComfyBentoError):
    error_code = HTTPStatus.NOT_FOUND


class NodeExecutionError(ComfyBentoError):
    """A node raised during execution; names the node id, class and message."""

    error_code = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, node_id: str, class_type: str, message: str) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.comfy_message = message
        super().__init__(f"node {node_id} ({class_type}) failed: {message}")


class OutOfMemory(ComfyBentoError):
    """The device ran out of memory even for a batch of one."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


class QueueFull(ComfyBentoError):
    error_code = HTTPStatus.SERVICE_UNAVAILABLE


class EngineUnavailable(ComfyBentoError):
    """The engine restarted, is shutting down or cannot be reached; retrying is safe."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


class StorageFull(ComfyBentoError):
    """Work that writes to disk cannot be taken or finished now: a folder is below its free-space watermark, or a
    write failed for lack of room (ENOSPC, EDQUOT, EROFS, a full SQLite file, a Redis store out of memory).

    Transient: the same request succeeds once space is freed (Retry-After says when to try again). `folder` names
    the folder by its role and setting, never its server path (the log has that).
    """

    error_code = HTTPStatus.INSUFFICIENT_STORAGE
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


class InternalError(ComfyBentoError):
    """An unexpected failure; the client sees this message, the log has the traceback."""


# What each error is called in results and job records (the first matching class wins).
_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (InvalidRequest, "invalid"),
    (TooLarge, "too_large"),
    (Unauthorized, "unauthorized"),
    (RateLimited, "rate_limited"),
    (NotFound, "not_found"),
    (NodeExecutionError, "node"),
    (OutOfMemory, "oom"),
    (WorkflowError, "workflow"),
    (ModelLockError, "workflow"),  # a model file the workflow needs is missing or corrupt: not retried
    (QueueFull, "unavailable"),
    (EngineUnavailable, "unavailable"),
    (StorageFull, "storage_full"),
    (Cancelled, "cancelled"),
)


def describe(exc: BaseException) -> dict[str, Any]:
    """The client-safe fields of an error: status, kind, message and, for node errors, the node.

    The one place where an exception becomes what a client sees. A write that
    failed for lack of room (see `storage_full`) is a StorageFull, whatever
    raised it. Anything else that is not a ComfyBentoError is an internal error:
    its message may hold server paths, so the client gets a generic one (the
    caller logs the traceback).
    """
    exc = storage_full(exc) or exc
    kind = next((k for cls, k in _KINDS if isinstance(exc, cls)), "internal")
    safe = isinstance(exc, ComfyBentoError)
    fields: dict[str, Any] = {
        "status": int(exc.error_code) if isinstance(exc, ComfyBentoError) else 500,
        "error_kind": kind,
        "error": str(exc) if safe else "internal error (see the server log)",
    }
    if isinstance(exc, NodeExecutionError):
        fields.update(node_id=exc.node_id, class_type=exc.class_type)
    if isinstance(exc, StorageFull):
        fields.update(exc.details())
    return fields
