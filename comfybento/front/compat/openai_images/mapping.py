"""OpenAI Images API requests as a workflow's typed fields (pure: no I/O, testable without a server).

A workflow "fits" the generations API when it has a text prompt and makes images; it fits the edits API when it also
takes an image. Each OpenAI field maps to one typed field of the workflow, or is refused with a 400 naming it:

    model               the workflow's name (default: `txt2img` / `img2img` when served, else the first that fits)
    prompt              the field whose role is the prompt (the positive CLIPTextEncode's text)
    n                   `batch_size` when the workflow has it (one execution), else n requests batched together
    size "WxH"          `width` and `height` ("auto": the workflow's defaults)
    quality             a sidecar preset of that name ("auto": none)
    output_format       `output_format` (png, jpeg, webp); output_compression: `output_quality` (jpeg, webp)
    image, mask         the workflow's image field; the mask's alpha becomes the image's alpha (OpenAI's convention:
                        transparent pixels are the ones to edit; ComfyUI's LoadImage reads them as its MASK)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfybento.errors import InvalidRequest
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.params import Param
from comfybento.workflows.schema import PRESET_FIELD

SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
DEFAULT_MODELS = {"generations": "txt2img", "edits": "img2img"}
# OpenAI fields with no counterpart in a workflow: the values that ask for nothing (anything else is a 400).
NEUTRAL = {"background": ("auto",), "moderation": ("auto", "low"), "style": (), "input_fidelity": ("low",),
           "stream": (False,), "partial_images": (0,)}
# The workflow fields an OpenAI field fills (to name the OpenAI field when the workflow refuses a value).
OPENAI_NAME = {"width": "size", "height": "size", "batch_size": "n", "output_format": "output_format",
               "output_quality": "output_compression", PRESET_FIELD: "quality"}


class OpenAIFieldError(InvalidRequest):
    """A 400 that names the OpenAI request field (`param`) it is about."""

    def __init__(self, param: str | None, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_code = status  # type: ignore[assignment]
        self.param = param

    def answer_fields(self) -> dict[str, Any]:
        return {"param": self.param}


@dataclass(frozen=True)
class Plan:
    """What one OpenAI request runs: `items` (one, or n when the workflow has no batch_size), and the image output read."""

    workflow: str
    items: list[dict[str, Any]]
    output: str  # the name of the image output whose images are the answer's `data`
    size: str | None


def prompt_param(spec: WorkflowSpec) -> Param | None:
    return next((p for p in spec.params if p.role == "prompt"), None) or next((p for p in spec.params if p.name == "prompt"), None)


def image_param(spec: WorkflowSpec) -> Param | None:
    return next((p for p in spec.params if p.kind == "image"), None)


def fits(spec: WorkflowSpec, api: str) -> bool:
    """Whether OpenAI's `api` ("generations" or "edits") can drive the workflow."""
    makes_images = any(o.kind == "image" for o in spec.outputs)
    if prompt_param(spec) is None or not makes_images:
        return False
    takes_image = image_param(spec) is not None
    required_files = [p for p in spec.params if p.kind in ("image", "mask", "video", "audio") and p is not image_param(spec)]
    return (takes_image if api == "edits" else not takes_image) and not required_files


def pick_workflow(catalog: Mapping[str, WorkflowSpec], model: str | None, api: str) -> WorkflowSpec:
    """The workflow `model` names (OpenAI's model names mean nothing here: a 404 naming the ones that fit)."""
    fitting = sorted(name for name, spec in catalog.items() if fits(spec, api))
    if model is None:
        name = DEFAULT_MODELS[api] if DEFAULT_MODELS[api] in fitting else (fitting[0] if fitting else None)
        if name is None:
            raise OpenAIFieldError("model", f"no served workflow fits the images {api} API (a text prompt and an image output"
                                            f"{', and an image input' if api == 'edits' else ''})", 404)
        return catalog[name]
    spec = catalog.get(model)
    if spec is None or not fits(spec, api):
        raise OpenAIFieldError("model", f"model '{model}': no such workflow for the images {api} API; models that fit: "
                                        f"{', '.join(fitting) or 'none'} (GET /v1/models)", 404)
    return spec


def plan(spec: WorkflowSpec, fields: Mapping[str, Any], images: Mapping[str, str] | None = None) -> Plan:
    """The typed values one OpenAI request asks of `spec` (before the workflow's own validation)."""
    names = {p.name for p in spec.params}
    for name, neutral in NEUTRAL.items():
        if fields.get(name) is not None and fields[name] not in neutral:
            raise OpenAIFieldError(name, f"{name}: {fields[name]!r} has no counterpart in workflow '{spec.name}' "
                                         f"(accepted: {', '.join(map(repr, neutral)) or 'none'})")
    prompt = prompt_param(spec)
    assert prompt is not None  # pick_workflow chose a workflow that fits
    values: dict[str, Any] = {prompt.name: fields["prompt"], **(images or {})}
    size = fields.get("size")
    if size not in (None, "auto"):
        match = SIZE.match(str(size))
        if match is None:
            raise OpenAIFieldError("size", f"size: {size!r} is not WIDTHxHEIGHT (e.g. 512x512) or 'auto'")
        if not {"width", "height"} <= names:
            raise OpenAIFieldError("size", f"size: workflow '{spec.name}' has no width and height fields; send 'auto'")
        values["width"], values["height"] = int(match.group(1)), int(match.group(2))
    quality = fields.get("quality")
    if quality not in (None, "auto"):
        if quality not in spec.presets:
            raise OpenAIFieldError("quality", f"quality: workflow '{spec.name}' has no preset '{quality}' (its presets: "
                                              f"{', '.join(sorted(spec.presets)) or 'none'}; or 'auto')")
        values[PRESET_FIELD] = quality
    fmt = fields.get("output_format")
    if fmt is not None:
        values["output_format"] = fmt
    if fields.get("output_compression") is not None and fmt in ("jpeg", "webp"):
        values["output_quality"] = max(1, int(fields["output_compression"]))
    n = int(fields.get("n") or 1)
    if n > spec.limits.max_images:
        raise OpenAIFieldError("n", f"n: {n} images is more than the limit of {spec.limits.max_images} (max_images)", 413)
    if "batch_size" in names:
        items = [{**values, "batch_size": n}]
    else:
        items = [dict(values) for _ in range(n)]  # each its own seed; the scheduler runs them in one batch
    output = next(o.name for o in spec.outputs if o.kind == "image")
    return Plan(spec.name, items, output, size if size not in (None, "auto") else None)


def openai_param(field: str) -> str:
    """The OpenAI field a workflow field came from (its own name when it is not one of the mapped ones)."""
    return OPENAI_NAME.get(field, field)
