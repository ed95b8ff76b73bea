"""The OpenAI Images API under /v1: generations, edits and the model list, over the typed endpoints' own path.

Each request is mapped to one served workflow's typed fields (mapping.py), validated like a job item, and run
live through `endpoints.generate` (admission, the scheduler, charging the caller's key): `n` images are one
execution (batch_size) or n requests the scheduler batches together. Every answer, errors included, is in
OpenAI's shapes (front/renderers.py "openai"); keys are the service's (`Authorization: Bearer <key>`, as the
`openai` SDKs send it). Left out of comfybento's own OpenAPI document, like the other compatibility APIs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from comfybento.engine.messages import ItemResult
from comfybento.front import access
from comfybento.front.compat.openai_images.mapping import (
    OpenAIFieldError,
    Plan,
    fits,
    image_param,
    openai_param,
    pick_workflow,
    plan,
    prompt_param,
)
from comfybento.front.context import base_url
from comfybento.front.delivery import outputs_as_urls
from comfybento.front.endpoints import Refused, generate
from comfybento.front.job_routes import job_service
from comfybento.front.renderers import ContractRoute, render
from comfybento.outputs.encoding import b64
from comfybento.workflows.catalog import WorkflowSpec


class OpenAIRoute(ContractRoute):
    """A route whose every error (validation included) answers in OpenAI's error shape."""

    contract = "openai"


router = APIRouter(prefix="/v1", route_class=OpenAIRoute, include_in_schema=False)
MAX_FIELD = 32_000  # characters of any text field of an edits form (the prompt's own limit is the workflow's)


class ImageGeneration(BaseModel):
    """POST /v1/images/generations (OpenAI's CreateImageRequest; fields with no counterpart are refused by value)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_FIELD)
    model: str | None = Field(default=None, max_length=64)
    n: int | None = Field(default=1, ge=1, le=16)
    size: str | None = Field(default=None, max_length=16)
    quality: str | None = Field(default=None, max_length=64)
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    user: str | None = Field(default=None, max_length=256)
    background: str | None = Field(default=None, max_length=32)
    moderation: str | None = Field(default=None, max_length=32)
    style: str | None = Field(default=None, max_length=32)
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)


class ImageEdit(ImageGeneration):
    """The text fields of POST /v1/images/edits (multipart; the files are read beside them)."""

    input_fidelity: str | None = Field(default=None, max_length=32)


def _catalog(request: Request) -> dict[str, WorkflowSpec]:
    return job_service(request).catalog  # type: ignore[no-any-return]


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The workflows the images APIs can drive, as OpenAI's model list."""
    specs = _catalog(request).values()
    return {"object": "list", "data": [_model(spec) for spec in specs if fits(spec, "generations") or fits(spec, "edits")]}


@router.get("/models/{model}")
async def get_model(request: Request, model: str) -> dict[str, Any]:
    catalog = _catalog(request)
    fitting = sorted(name for name, spec in catalog.items() if fits(spec, "generations") or fits(spec, "edits"))
    if model not in fitting:
        raise OpenAIFieldError("model", f"model '{model}': no such workflow for the images APIs; models: {', '.join(fitting) or 'none'}",
                               404)
    return _model(catalog[model])


def _model(spec: WorkflowSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "comfybento"}


@router.post("/images/generations")
async def generations(request: Request, body: ImageGeneration) -> Any:
    spec = pick_workflow(_catalog(request), body.model, "generations")
    return await _run(request, spec, body, plan(spec, body.model_dump()))


@router.post("/images/edits")
async def edits(request: Request) -> Any:
    form = await request.form(max_files=8, max_fields=64)
    files = {key: value for key, value in form.multi_items() if isinstance(value, UploadFile)}
    text = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    try:
        body = ImageEdit.model_validate({**text})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise OpenAIFieldError(".".join(map(str, first["loc"])) or None, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    spec = pick_workflow(_catalog(request), body.model, "edits")
    images = [f for key, f in files.items() if key in ("image", "image[]")]
    if not images:
        raise OpenAIFieldError("image", "image: an image file is required (multipart field 'image')")
    if len(images) > 1:
        raise OpenAIFieldError("image", f"image: workflow '{spec.name}' takes one image; got {len(images)}")
    image = await images[0].read()
    mask = files.get("mask")
    if mask is not None:
        image = await asyncio.to_thread(_with_mask_alpha, image, await mask.read())
    target = image_param(spec)
    assert target is not None  # pick_workflow chose a workflow that takes an image
    return await _run(request, spec, body, plan(spec, body.model_dump(), {target.name: base64.b64encode(image).decode()}))


def _with_mask_alpha(image: bytes, mask: bytes) -> bytes:
    """The image with the mask's alpha as its own (OpenAI's mask: transparent where the image is to be edited)."""
    try:
        picture, shape = Image.open(io.BytesIO(image)), Image.open(io.BytesIO(mask))
        picture.load()
        shape.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise OpenAIFieldError("mask", f"mask: not a readable image ({exc.__class__.__name__})") from exc
    if shape.size != picture.size:
        raise OpenAIFieldError("mask", f"mask: {shape.size[0]}x{shape.size[1]} is not the image's size "
                                       f"({picture.size[0]}x{picture.size[1]})")
    if "A" not in shape.getbands():
        raise OpenAIFieldError("mask", "mask: it has no alpha channel (transparent pixels mark where to edit)")
    out = io.BytesIO()
    combined = picture.convert("RGBA")
    combined.putalpha(shape.getchannel("A"))
    combined.save(out, format="PNG")
    return out.getvalue()


async def _run(request: Request, spec: WorkflowSpec, body: ImageGeneration, todo: Plan) -> Any:
    items = [_validated(request, spec, values) for values in todo.items]
    by_url = body.response_format == "url"
    front = request.app.state.front
    try:
        results: list[ItemResult] = list(await asyncio.gather(*(generate(front, spec, values, stores_outputs=by_url) for values in items)))
    except Refused as refused:
        return render(refused.error, "openai", retry_after_s=refused.retry_after_s)
    blobs = [blob for result in results for blob in result.outputs if blob.output == todo.output]
    if by_url:
        stored = ItemResult(ok=True, outputs=blobs)
        outputs = await asyncio.to_thread(outputs_as_urls, front.output_storage(), stored, base_url(), access.key_name())
        data = [{"url": o.url, "revised_prompt": None} for o in outputs]
    else:
        data = [{"b64_json": b64(blob.data), "revised_prompt": None} for blob in blobs]
    first = blobs[0] if blobs else None
    size = f"{first.width}x{first.height}" if first is not None and first.width else todo.size
    fmt = first.media_type.split("/")[-1] if first is not None else None
    return {"created": int(time.time()), "data": data, "output_format": fmt, "size": size, "quality": body.quality or "auto",
            "background": body.background or "auto", "usage": _usage(body.prompt, len(blobs))}


def _usage(prompt: str, images: int) -> dict[str, Any]:
    """OpenAI's usage block in units that mean something here: the prompt's words in, images out."""
    words = len(prompt.split())
    return {"input_tokens": words, "output_tokens": images, "total_tokens": words + images,
            "input_tokens_details": {"text_tokens": words, "image_tokens": 0}}


def _validated(request: Request, spec: WorkflowSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The values checked by the workflow's own item model (bounds, enums, presets), a 400 naming the OpenAI field."""
    model = job_service(request).item_models[spec.name]
    try:
        validated: dict[str, Any] = model.model_validate(values).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        names = {p.name: "prompt" for p in (prompt_param(spec),) if p is not None}
        names.update({p.name: "image" for p in (image_param(spec),) if p is not None})
        param = names.get(field) or openai_param(field)
        raise OpenAIFieldError(param, f"{param}: {first['msg']} (workflow '{spec.name}' field '{field}')") from exc
    validated.pop("preset", None)  # applied: its values are in place
    validated["output_delivery"] = "base64"  # the route stores URL outputs itself (one folder per answer)
    return validated

