"""Pydantic request/response models built from a workflow's parameters.

Every field has a type, bounds, a default and a description: the OpenAPI
schema is the user's documentation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from PIL import Image as PILImage
from pydantic import BaseModel, Field, create_model

from comfybento.outputs.encoding import Encoding
from comfybento.workflows.params import MAX_FILE_BYTES, MAX_SEED, Param


class ImageOutput(BaseModel):
    """One generated image."""

    output: str = Field(description="Name of the output node that produced the image.")
    node_id: str = Field(description="Id of that node in the workflow graph.")
    index: int = Field(description="Position of the image in that node's batch.")
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    media_type: str = Field(description="image/png, image/webp or image/jpeg (the request's output_format).")
    data: str = Field(description="The encoded image, base64.")


class Timings(BaseModel):
    queue_ms: float = Field(description="Time spent waiting to be scheduled, in milliseconds.")
    execution_ms: float = Field(description="Wall time of the (possibly batched) graph execution.")
    batch_size: int = Field(description="Number of requests that shared this graph execution.")


class GenerateResponse(BaseModel):
    """Result of one workflow run."""

    workflow: str = Field(description="Name of the workflow that ran.")
    seed: int | None = Field(description="The seed used (drawn at random when the request omitted it).")
    images: list[ImageOutput] = Field(description="Every image of every output node, in a stable order.")
    timings: Timings


BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"


def _field_type(param: Param) -> Any:
    if param.kind == "image":
        return PILImage.Image
    if param.kind == "file":
        return Path  # BentoML: a multipart upload only (it refuses a string, so never a server path)
    if param.kind == "enum":
        return Literal[param.choices] if param.choices else str  # type: ignore[valid-type]
    return {"int": int, "float": float, "string": str, "bool": bool}.get(param.kind, Any)


def _constraints(param: Param) -> dict[str, Any]:
    if param.kind not in ("int", "float"):
        return {}
    out: dict[str, Any] = {}
    if param.minimum is not None:
        out["ge"] = param.minimum
    if param.maximum is not None:
        out["le"] = param.maximum
    return out


def field_for(param: Param, images_as_base64: bool = False) -> tuple[Any, Any]:
    """(annotation, FieldInfo) for one parameter."""
    typ = _field_type(param)
    if param.kind == "image" and images_as_base64:
        return (str, Field(description=f"{param.description} Base64-encoded PNG/JPEG/WebP.", min_length=1))
    if param.kind == "file" and images_as_base64:
        return (str, Field(description=f"{param.description} Base64-encoded.", min_length=1,
                           max_length=4 * math.ceil(MAX_FILE_BYTES / 3), pattern=BASE64_PATTERN))
    if param.role == "seed":
        return (
            Annotated[int | None, Field(ge=0, le=MAX_SEED)],
            Field(default=None, description=param.description),
        )
    if param.kind in ("image", "file"):
        return (typ, Field(description=param.description))
    extra: dict[str, Any] | None = {"multiline": True} if param.multiline else None
    return (
        Annotated[typ, Field(**_constraints(param))],
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
    }


def build_input_model(workflow: str, params: list[Param], encoding: Encoding | None = None,
                      images_as_base64: bool = False) -> type[BaseModel]:
    """The request model of one workflow endpoint; unknown fields are rejected.

    With images_as_base64, image fields are base64 strings (batch-job items are JSON).
    """
    fields = {param.name: field_for(param, images_as_base64) for param in params}
    fields.update(encoding_fields(encoding or Encoding()))
    model_name = "".join(part.capitalize() for part in workflow.replace("-", "_").split("_"))
    model_name += "JobItem" if images_as_base64 else "Input"
    model = create_model(  # type: ignore[call-overload]
        model_name,
        __base__=bentoml.IODescriptor,
        __doc__=f"Parameters of the '{workflow}' workflow.",
        **fields,
    )
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    return model  # type: ignore[no-any-return]
