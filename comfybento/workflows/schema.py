"""Pydantic request/response models built from a workflow's parameters.

Every field has a type, bounds, a default and a description: the OpenAPI
schema is the user's documentation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.datastructures import FormData
from starlette.requests import Request

from comfybento.limits import Limits
from comfybento.outputs.encoding import Encoding
from comfybento.outputs.media import OutputKind
from comfybento.urlguard import AllowList
from comfybento.workflows.params import MAX_SEED, UPLOAD_KINDS, Param

# Content types a multipart file part may declare, by kind of input (the bytes are sniffed afterwards in any case).
UPLOAD_CONTENT_TYPES = {"image": "image/*", "mask": "image/*", "video": "video/*", "audio": "audio/*"}
HOW = ("a multipart file upload; in a JSON body (or a multipart text part) base64, raw or as a data: URI; or an http(s) URL, "
       "fetched within the max_url_seconds and max_upload_bytes limits and never from an internal address")


def _keep_text(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A string (base64, data: URI or URL) stays a string, read later by workflows/uploads.py; a file part is stored
    by BentoML's own file validator. BentoML would otherwise fetch a string itself, with no allow-list."""
    if isinstance(value, str):
        if not value.strip():
            raise PydanticCustomError("empty", "an empty string is not a file")
        return value
    return handler(value)


def upload_type(kind: str) -> Any:
    """The field type of an input file: a multipart upload (a stored Path) or a string."""
    content_type = UPLOAD_CONTENT_TYPES.get(kind)
    if content_type is None:
        return Annotated[Path, WrapValidator(_keep_text)]
    return Annotated[Path, ContentType(content_type), WrapValidator(_keep_text)]


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
                return cls.model_validate(_form_values(cls.multipart_fields, form, _text_fields(cls)))
            return await super().from_http_request(request, serde)
        except (ValidationError, BentoMLException):
            raise
        except Exception as exc:  # the multipart/JSON parsers' own errors
            raise malformed(name, "body", f"the request body cannot be read: {exc}") from None


def _form_values(file_fields: list[str], form: FormData, text_fields: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A multipart form as the model's values: file fields as their part (a file, or text: base64 or a URL), the other
    fields' text parsed as JSON where it is JSON (as BentoML does), else kept as text. A text field's part is its text
    (`-F prompt=7` is the prompt "7", not a number), or the string it is JSON of (`"7"`, the documented encoding)."""
    data: dict[str, Any] = {}
    for key in form:
        part = form[key]
        if key in file_fields:
            data[key] = part
            continue
        text = part if isinstance(part, str) else part.file.read().decode("utf-8", "replace")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        data[key] = text if key in text_fields and not isinstance(value, str) else value
    return data


_TEXT_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def _text_fields(model: type[BaseModel]) -> frozenset[str]:
    """The model's fields whose values are text (strings and string enums, not files)."""
    if model not in _TEXT_FIELDS:
        props = model.model_json_schema().get("properties", {})
        _TEXT_FIELDS[model] = frozenset(k for k, v in props.items() if v.get("type") == "string" and v.get("format") != "binary")
    return _TEXT_FIELDS[model]



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


DATA_URI_HEADER = 256  # room for "data:<type>;base64," before the base64 of the largest file


def _field_type(param: Param) -> Any:
    if param.kind in UPLOAD_KINDS:
        return upload_type(param.kind)
    if param.kind == "enum" and param.urls is not False:
        return _model_field_type(param)
    if param.kind == "enum":
        return Literal[param.choices] if param.choices else str  # type: ignore[valid-type]
    return {"int": int, "float": float, "string": str, "bool": bool}.get(param.kind, Any)


class ModelUrl(BaseModel):
    """A model by URL, where the workflow's sidecar allows it (`urls:`): downloaded once into the engine's model cache."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=10, max_length=4096, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://",
                     description="An http(s) URL of a .safetensors file (a pickle, .ckpt/.pt/.bin, is refused), from an "
                                 "allowed host; redirects are followed and checked again.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$",
                               description="The file's sha256 (hex). Given, the file must match it (else a 422 naming "
                                           "both hashes) and a file already downloaded with it is used without fetching.")


def _model_field_type(param: Param) -> Any:
    """A model choice that also takes {url, sha256}: the URL checked against its hosts now (a 400), without DNS."""
    allow = AllowList(param.urls if isinstance(param.urls, tuple) else (), what=param.name)

    def allowed(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        value = handler(value)
        if not isinstance(value, ModelUrl):
            return value
        refusal = allow.refusal_without_dns(value.url)
        if refusal is not None:
            raise PydanticCustomError("url_not_allowed", "model URL refused: {why}", {"why": refusal})
        return value.model_dump()  # a plain mapping: it travels to the engine as JSON

    return Annotated[Literal[param.choices] | ModelUrl, WrapValidator(allowed)]  # type: ignore[valid-type]


def _not_bool(value: Any) -> Any:
    """JSON's true and false are not numbers (pydantic's lax mode would take them as 1 and 0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
    return value


NOT_BOOL = BeforeValidator(_not_bool)  # after the Field in an Annotated, or its bounds leave the JSON schema


# Server-side limits that lower a node's own bound, by parameter role (workflows/limits.py).
ROLE_LIMITS = {"steps": "max_steps", "batch_size": "max_images", "width": "max_side", "height": "max_side"}
# Smallest values that keep a node's arithmetic finite (KSampler divides steps by denoise).
ROLE_MINIMUMS = {"denoise": 0.01}
# Server-side limits that raise a node's own lower bound, by parameter role.
ROLE_LIMIT_MINIMUMS = {"width": "min_side", "height": "min_side"}


def _constraints(param: Param, limits: Limits) -> dict[str, Any]:
    if param.kind == "string":
        return {"max_length": limits.max_text_chars}
    if param.kind not in ("int", "float"):
        return {}
    out: dict[str, Any] = {}
    minimum = param.minimum
    if param.role in ROLE_MINIMUMS:
        minimum = ROLE_MINIMUMS[param.role] if minimum is None else max(minimum, ROLE_MINIMUMS[param.role])
    if param.role in ROLE_LIMIT_MINIMUMS:
        limit = getattr(limits, ROLE_LIMIT_MINIMUMS[param.role])
        minimum = limit if minimum is None else max(minimum, limit)
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
    return (Annotated[int | None, Field(ge=0, le=MAX_SEED), NOT_BOOL, WithJsonSchema(schema)],
            Field(default=None, description=param.description))


def field_for(param: Param, limits: Limits, images_as_base64: bool = False) -> tuple[Any, Any]:
    """(annotation, FieldInfo) for one parameter."""
    typ = _field_type(param)
    if param.kind in UPLOAD_KINDS:
        return _upload_field(param, limits, images_as_base64)
    if param.role == "seed":
        return _seed_field(param)
    extra: dict[str, Any] | None = {"x-multiline": True} if param.multiline else None
    checks = (NOT_BOOL,) if param.kind in ("int", "float") else ()
    return (
        Annotated[(typ, Field(**_constraints(param, limits)), *checks)],  # type: ignore[valid-type]
        Field(default=param.default, description=param.description, json_schema_extra=extra),
    )


def _upload_field(param: Param, limits: Limits, as_text: bool) -> tuple[Any, Any]:
    bounds = f"At most {limits.max_upload_bytes} bytes"
    if param.kind in ("image", "mask"):
        bounds += f" and {limits.max_upload_pixels} pixels"
    elif param.kind in ("video", "audio"):
        bounds += f", {limits.max_media_seconds} s" + (f" and {limits.max_video_frames} frames" if param.kind == "video" else "")
    if as_text:  # job items are JSON: base64 (raw or a data: URI) or an http(s) URL, fetched when the item runs
        how = "Base64 (raw or a data: URI) or an http(s) URL (fetched when the item runs)"
        longest = 4 * math.ceil(limits.max_upload_bytes / 3) + DATA_URI_HEADER
        return (str, Field(description=f"{param.description} {how}. {bounds}.", min_length=1, max_length=longest))
    return (upload_type(param.kind), Field(description=f"{param.description} As {HOW}. {bounds}."))


def encoding_fields(encoding: Encoding) -> dict[str, tuple[Any, Any]]:
    """The output-format fields every endpoint has; defaults from the workflow's sidecar."""
    return {
        "output_format": (Literal["png", "webp", "jpeg"], Field(
            default=encoding.format, description="Image format of the outputs (the workflow's sidecar sets the default).")),
        "output_quality": (Annotated[int, Field(ge=1, le=100), NOT_BOOL], Field(
            default=encoding.quality, description="WebP/JPEG quality, 1-100 (the workflow's sidecar sets the default); "
                                                  "ignored for PNG.")),
        "output_delivery": (OutputDelivery, Field(
            default="base64", description="How outputs come back in JSON: 'base64' (in `data`), or 'url' (stored in the "
                                          "output storage, local or S3; `url` says where). Batch jobs always store them.")),
    }


Presets = Mapping[str, Mapping[str, Any]]
PRESET_FIELD = "preset"


def describe_presets(presets: Presets) -> str:
    """`fast: steps=4, cfg=5.0; quality: ...`: each preset's values, for the OpenAPI and error messages."""
    return "; ".join(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()) for name, values in presets.items())


def preset_field(presets: Presets) -> tuple[Any, Any]:
    """The `preset` field: one of the sidecar's preset names (an enum in the OpenAPI, each preset's values described)."""
    names = tuple(presets)
    description = (f"A named set of field values from the workflow's sidecar; fields given explicitly override it. "
                   f"{describe_presets(presets)}.")

    def known(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is not None and value not in names:
            raise PydanticCustomError("unknown_preset", "unknown preset {preset}; this workflow has {known}",
                                      {"preset": repr(value), "known": ", ".join(names)})
        return handler(value)

    # x-presets: each preset's values, for clients that show them (the playground fills its form with them)
    schema = {"type": "string", "enum": list(names), "nullable": True, "description": description,
              "x-presets": {name: dict(values) for name, values in presets.items()}}
    return (Annotated[str | None, WrapValidator(known), WithJsonSchema(schema)], Field(default=None, description=description))


def with_preset(presets: Presets, data: Any) -> Any:
    """A request's raw fields with its preset's values under them: explicit fields win, then the preset, then the defaults."""
    if not isinstance(data, dict):
        return data
    name = data.get(PRESET_FIELD)
    chosen = presets.get(name) if isinstance(name, str) else None
    return {**chosen, **data} if chosen else data


def build_input_model(workflow: str, params: list[Param], encoding: Encoding | None = None,
                      images_as_base64: bool = False, limits: Limits | None = None, presets: Presets | None = None) -> type[BaseModel]:
    """The request model of one workflow endpoint; unknown fields are rejected.

    With images_as_base64, image fields are base64 strings (batch-job items are JSON). With presets
    (the sidecar's), a `preset` field picks one, applied before the fields are validated.
    """
    limits = limits or Limits()
    fields = {param.name: field_for(param, limits, images_as_base64) for param in params}
    fields.update(encoding_fields(encoding or Encoding()))
    validators: dict[str, Any] = {}
    if presets:
        fields[PRESET_FIELD] = preset_field(presets)
        table = {name: dict(values) for name, values in presets.items()}
        validators["apply_preset"] = model_validator(mode="before")(lambda cls, data: with_preset(table, data))
    model_name = "".join(part.capitalize() for part in workflow.replace("-", "_").split("_"))
    model_name += "JobItem" if images_as_base64 else "Input"
    model = create_model(  # type: ignore[call-overload]
        model_name,
        __base__=bentoml.IODescriptor if images_as_base64 else RequestModel,
        __doc__=f"Parameters of the '{workflow}' workflow.",
        __validators__=validators,
        **fields,
    )
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    return model  # type: ignore[no-any-return]
