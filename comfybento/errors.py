"""Exceptions that carry an HTTP status.

They subclass BentoML's exception, so raising one inside an API handler gives
the client that status and the message (never a traceback). ComfyUI's error
tuples and dicts are converted to these in exactly one place:
`comfybento.runtime.errors`.
"""

from __future__ import annotations

from http import HTTPStatus

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
