"""Exceptions that carry an HTTP status.

They subclass BentoML's exception, so raising one inside an API handler gives
the client that status and the message (never a traceback). ComfyUI's error
tuples and dicts are converted to these in exactly one place:
`comfybento.runtime.errors`.
"""

from __future__ import annotations

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
    (Cancelled, "cancelled"),
)


def describe(exc: BaseException) -> dict[str, Any]:
    """The client-safe fields of an error: status, kind, message and, for node errors, the node.

    The one place where an exception becomes what a client sees. Anything that
    is not a ComfyBentoError is an internal error: its message may hold server
    paths, so the client gets a generic one (the caller logs the traceback).
    """
    kind = next((k for cls, k in _KINDS if isinstance(exc, cls)), "internal")
    safe = isinstance(exc, ComfyBentoError)
    fields: dict[str, Any] = {
        "status": int(exc.error_code) if isinstance(exc, ComfyBentoError) else 500,
        "error_kind": kind,
        "error": str(exc) if safe else "internal error (see the server log)",
    }
    if isinstance(exc, NodeExecutionError):
        fields.update(node_id=exc.node_id, class_type=exc.class_type)
    return fields
