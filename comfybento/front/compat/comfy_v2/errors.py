"""The spec's error envelope, {"error": {"code", "message", "details"}}, for every answer of the v2 routes.

The envelope is rendered by front/renderers.py (`comfy_v2`, fed by `errors.describe`), as the access and
request-edge middlewares render theirs on /api/v2; here: the errors that name the spec's own codes, and the route class.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from comfybento.errors import ComfyBentoError
from comfybento.front.renderers import ContractRoute, render


class V2Error(ComfyBentoError):
    """An error with the spec's machine-readable code (missing_asset, hash_mismatch, idempotency_key_reuse ...)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error_code = status  # type: ignore[assignment]
        self.code = code
        self.details = details

    def answer_fields(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details}


def error_envelope(exc: BaseException) -> JSONResponse:
    """Any exception as the envelope: a V2Error keeps its code; a comfybento error maps by status; the rest is a 500."""
    return render(exc, "comfy_v2")


class V2Route(ContractRoute):
    """A route whose every error (validation included) answers in the spec's envelope, not comfybento's own shape."""

    contract = "comfy_v2"
