"""Pydantic request/response models built from a workflow's parameters.

Every field has a type, bounds, a default and a description: the OpenAPI
schema is the user's documentation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import BaseModel, Field, ValidationError, WithJsonSchema, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from comfybento.outputs.encoding import Encoding
from comfybento.outputs.media import OutputKind
from comfybento.workflows.limits import Limits
from comfybento.workflows.params import MAX_SEED, Param

# An uploaded file: BentoML stores a multipart part in a temp file and hands over its path. A JSON string is
# refused (BentoML would otherwise read it as file content or fetch it as a URL).
Upload = Annotated[Path, ContentType("image/*")]


def malformed(model: str, field: str, message: str) -> ValidationError:
    """A validation error (BentoML answers 400 with `detail`) for a body that cannot be read at all."""
    detail = InitErrorDetails(type=PydanticCustomError("malformed", message), loc=(field,), input=None)
    return ValidationError.from_exception_data(model, [detail])


class RequestModel(bentoml.IODescriptor):
    """Base of every endpoint's request model: a body that cannot be parsed is a 400 naming why, never a 500.

    BentoML reads the body; its multipart reader lets parser errors escape as 500s and treats a file field
    sent as text as a URL to download. Here multipart bodies are read first, bounded, and every file field
    must be a file part.
    """

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Any:
        name = cls.__name__
        try:
            if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
                form = await request.form(max_files=max(1, len(cls.multipart_fields)), max_fields=len(cls.model_fields) + 1)
                for field in cls.multipart_fields:
                    if any(not isinstance(part, UploadFile) for part in form.getlist(field)):
                        raise malformed(name, field, "must be a file part (multipart/form-data with a filename)")
            return await super().from_http_request(request, serde)
        except (ValidationError, BentoMLException):
            raise
        except Exception as exc:  # the multipart/JSON parsers' own errors
            raise malformed(name, "body", f"the request body cannot be read: {exc}") from None


OutputDelivery = Literal["base64", "url"]


class OutputItem(BaseModel):
    """One output: an image, animation, video, audio, text or file made by one output node."""

    name: str = Field(description="Name of the output node that made it (its title, or its class and id); "
                                  "POST /<workflow>/<name> returns its bytes.")
    node_id: str = Field(description="Id of that node in the workflow graph.")
    index: int = Field(description="Position among that node's outputs (its batch).")
    kind: OutputKind = Field(description="image | animation | video | audio | text | file.")
    media_type: str = Field(description="The content type of the bytes (image/png, video/webm, audio/flac, text/plain ...).")
    width: int | None = Field(default=None, description="Width in pixels (images, animations, videos).")
    height: int | None = Field(default=None, description="Height in pixels (images, animations, videos).")
    data: str | None = Field(default=None, description="The bytes, base64 (output_delivery 'base64'; text is UTF-8).")
    url: str | None = Field(default=None, description="Where to download the bytes (output_delivery 'url').")


class Timings(BaseModel):
    queue_ms: float = Field(description="Time spent waiting to be scheduled, in milliseconds.")
    execution_ms: float = Field(description="Wall time of the (possibly batched) graph execution.")
    batch_size: int = Field(description="Number of requests that shared this graph execution.")


class GenerateResponse(BaseModel):
    """Result of one workflow run."""

    workflow: str = Field(description="Name of the workflow that ran.")
    seed: int | None = Field(description="The seed used (drawn at random when the request omitted it).")
    outputs: list[OutputItem] = Field(description="Every output of every output node, in a stable order: "
                                                   "output node id order, then index.")
    timings: Timings


BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"


def _field_type(param: Param) -> Any:
    if param.kind == "image":
        return Upload
    if param.kind == "file":
        return Path  # BentoML: a multipart upload only (it refuses a string, so never a server path)
    if param.kind == "enum":
        return Literal[param.choices] if param.choices else str  # type: ignore[valid-type]
    return {"int": int, "float": float, "string": str, "bool": bool}.get(param.kind, Any)


# Server-side limits that lower a node's own bound, by parameter role (workflows/limits.py).
ROLE_LIMITS = {"steps": "max_steps", "batch_size": "max_images"}
# Smallest values that keep a node's arithmetic finite (KSampler divides steps by denoise).
ROLE_MINIMUMS = {"denoise": 0.01}


def _constraints(param: Param, limits: Limits) -> dict[str, Any]:
    if param.kind == "string":
        return {"max_length": limits.max_text_chars}
    if param.kind not in ("int", "float"):
        return {}
    out: dict[str, Any] = {}
    minimum = param.minimum
    if param.role in ROLE_MINIMUMS:
        minimum = ROLE_MINIMUMS[param.role] if minimum is None else max(minimum, ROLE_MINIMUMS[param.role])
    if minimum is not None:
        out["ge"] = minimum
    maximum = param.maximum
    if param.role in ROLE_LIMITS:
        limit = getattr(limits, ROLE_LIMITS[param.role])
        maximum = limit if maximum is None else min(maximum, limit)
    if maximum is not None:
        out["le"] = maximum
    return out


def _seed_field(param: Param) -> tuple[Any, Any]:
    # OpenAPI 3.0 states "may be null" as `nullable`, not as a second `type: null` schema.
    schema = {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "nullable": True, "description": param.description}
    return (Annotated[int | None, Field(ge=0, le=MAX_SEED), WithJsonSchema(schema)], Field(default=None, description=param.description))


def field_for(param: Param, limits: Limits, images_as_base64: bool = False) -> tuple[Any, Any]:
    """(annotation, FieldInfo) for one parameter."""
    typ = _field_type(param)
    if param.kind == "image" and images_as_base64:
        return (str, Field(description=f"{param.description} Base64-encoded PNG/JPEG/WebP.", min_length=1))
    if param.kind == "file" and images_as_base64:
        return (str, Field(description=f"{param.description} Base64-encoded.", min_length=1,
                           max_length=4 * math.ceil(limits.max_upload_bytes / 3), pattern=BASE64_PATTERN))
    if param.role == "seed":
        return _seed_field(param)
    if param.kind == "image":
        return (typ, Field(description=f"{param.description} A PNG, JPEG or WebP file, at most "
                                       f"{limits.max_upload_bytes} bytes and {limits.max_upload_pixels} pixels."))
    if param.kind == "file":
        return (typ, Field(description=f"{param.description} At most {limits.max_upload_bytes} bytes."))
    extra: dict[str, Any] | None = {"x-multiline": True} if param.multiline else None
    return (
        Annotated[typ, Field(**_constraints(param, limits))],
        Field(default=param.default, description=param.description, json_schema_extra=extra),
    )


def encoding_fields(encoding: Encoding) -> dict[str, tuple[Any, Any]]:
    """The output-format fields every endpoint has; defaults from the workflow's sidecar."""
    return {
        "output_format": (Literal["png", "webp", "jpeg"], Field(
            default=encoding.format, description="Image format of the outputs (the workflow's sidecar sets the default).")),
        "output_quality": (Annotated[int, Field(ge=1, le=100)], Field(
            default=encoding.quality, description="WebP/JPEG quality, 1-100 (the workflow's sidecar sets the default); "
                                                  "ignored for PNG.")),
        "output_delivery": (OutputDelivery, Field(
            default="base64", description="How outputs come back in JSON: 'base64' (in `data`), or 'url' (stored in the "
                                          "output storage, local or S3; `url` says where). Batch jobs always store them.")),
    }


def build_input_model(workflow: str, params: list[Param], encoding: Encoding | None = None,
                      images_as_base64: bool = False, limits: Limits | None = None) -> type[BaseModel]:
    """The request model of one workflow endpoint; unknown fields are rejected.

    With images_as_base64, image fields are base64 strings (batch-job items are JSON).
    """
    limits = limits or Limits()
    fields = {param.name: field_for(param, limits, images_as_base64) for param in params}
    fields.update(encoding_fields(encoding or Encoding()))
    model_name = "".join(part.capitalize() for part in workflow.replace("-", "_").split("_"))
    model_name += "JobItem" if images_as_base64 else "Input"
    model = create_model(  # type: ignore[call-overload]
        model_name,
        __base__=bentoml.IODescriptor if images_as_base64 else RequestModel,
        __doc__=f"Parameters of the '{workflow}' workflow.",
        **fields,
    )
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    return model  # type: ignore[no-any-return]
