"""Infer a workflow's typed parameters from its graph and ComfyUI's node definitions.

Two sources, in this order of preference:
  (a) comfy-pack annotations: CPackInput* nodes, named after their titles;
  (b) a plain export: prompt/negative_prompt from the encoders feeding the
      sampler, the sampler's seed/steps/cfg/sampler_name/scheduler/denoise,
      the latent's width/height/batch_size, and an input file per loader:
      LoadImage (an image; its alpha is the MASK output), LoadImageMask (a
      mask), LoadVideo, LoadAudio, and any node input with ComfyUI's
      image/video/audio upload widget.
A sidecar file (see sidecar.py) can then rename, hide or add parameters.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from typing import Any, Literal

from comfybento.errors import WorkflowError
from comfybento.outputs.media import KNOWN_OUTPUTS, OUTPUT_IMAGE_CLASSES, OutputKind
from comfybento.workflows.graph import Graph, InputDef, NodeDefs, is_link, links_into, node_title, sorted_ids

Kind = Literal["int", "float", "string", "bool", "enum", "image", "mask", "video", "audio", "file", "any"]

# Input files: the node gets a file name in ComfyUI's input folder (images, masks, video, audio) or a path (files).
NAMED_UPLOADS: tuple[Kind, ...] = ("image", "mask", "video", "audio")
UPLOAD_KINDS: tuple[Kind, ...] = (*NAMED_UPLOADS, "file")

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced")
SEED_INPUTS = ("seed", "noise_seed")
TEXT_ENCODERS = {"CLIPTextEncode": "text"}
CPACK_INPUTS = {
    "CPackInputString": "value",
    "CPackInputInt": "value",
    "CPackInputImage": "image",
    "CPackInputAny": "input",
    "CPackInputFile": "path",
}
# Loader inputs that take a file of the input folder: (class, input) -> what the file is.
FILE_LOADERS: dict[tuple[str, str], Kind] = {
    ("LoadImage", "image"): "image",
    ("CPackInputImage", "image"): "image",
    ("LoadImageMask", "image"): "mask",
    ("LoadVideo", "file"): "video",
    ("LoadAudio", "audio"): "audio",
}
# ComfyUI's upload widgets (an input's options), for loaders not listed above (custom nodes).
UPLOAD_WIDGETS: dict[str, Kind] = {"image_upload": "image", "video_upload": "video", "audio_upload": "audio"}
UPLOAD_WHAT: dict[str, str] = {
    "image": "Input image (PNG, JPEG or WebP)",
    "mask": "Input mask (a PNG, JPEG or WebP image; the node reads the channel it is set to)",
    "video": "Input video (MP4, WebM, MKV, MOV, AVI...)",
    "audio": "Input audio (WAV, FLAC, MP3, OGG, M4A...; or a video's sound)",
    "file": "Input file, stored in ComfyUI's input folder under a fresh name, whose path the node gets,",
}
# Output names that are routes of their own (`/<workflow>/png`, `/<workflow>/stream`).
RESERVED_OUTPUT_NAMES = frozenset({"png", "stream"})
MAX_SEED = 0xFFFFFFFFFFFFFFFF
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class Param:
    """One request field, bound to one input of one node."""

    name: str
    node_id: str
    input_name: str
    kind: Kind
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    multiline: bool = False
    role: str = ""  # "seed", "prompt", "negative_prompt", ...: what batching keys on
    # A model choice that also takes a model by URL (a sidecar's `urls:`): True (the service's hosts) or the hosts
    # allowed, until the catalog resolves it to the hosts (workflows/catalog.py); False: models.lock names only.
    urls: bool | tuple[str, ...] = False


@dataclass(frozen=True)
class OutputSpec:
    """One output node: what it makes (outputs/media.py) and its media type (None: the request's image format, or the file's)."""

    name: str
    node_id: str
    class_type: str
    kind: OutputKind = "image"
    media_type: str | None = None

    @property
    def encoded_by_us(self) -> bool:
        """Images comfybento collects as tensors and encodes itself (PNG/WebP/JPEG, the request's output_format)."""
        return self.class_type in OUTPUT_IMAGE_CLASSES


def identifier(text: str, fallback: str = "param") -> str:
    """A snake_case Python identifier made from a title."""
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text:
        return fallback
    return f"_{text}" if text[0].isdigit() else text


def upload_kind(class_type: str, input_def: InputDef) -> Kind | None:
    """What file a loader input takes (image, mask, video, audio), or None if it is not a file input."""
    known = FILE_LOADERS.get((class_type, input_def.name))
    if known is not None:
        return known
    return next((kind for key, kind in UPLOAD_WIDGETS.items() if input_def.options.get(key)), None)


def param_from_input(
    name: str, node_id: str, class_type: str, input_def: InputDef, default: Any, role: str = ""
) -> Param:
    """A Param typed after ComfyUI's own input definition (type, bounds, choices); a loader's file is an upload."""
    upload = upload_kind(class_type, input_def)
    if upload is not None:
        return _upload_param(name, node_id, class_type, upload, input_def.name)
    opts = input_def.options
    tooltip = str(opts.get("tooltip") or "").strip()
    description = f"{tooltip} " if tooltip else ""
    description += f"(node {node_id} {class_type}, input '{input_def.name}')"
    kind, lo, hi, step = _kind_and_bounds(input_def)
    if kind == "enum" and default not in input_def.choices and input_def.choices:
        default = input_def.choices[0]
    return Param(
        name=name,
        node_id=node_id,
        input_name=input_def.name,
        kind=kind,
        default=default,
        description=description,
        minimum=lo,
        maximum=hi,
        step=step,
        choices=input_def.choices,
        multiline=bool(opts.get("multiline")),
        role=role,
    )


def _kind_and_bounds(input_def: InputDef) -> tuple[Kind, float | None, float | None, float | None]:
    opts = input_def.options
    typ = input_def.type
    if input_def.choices or typ == "COMBO":
        return "enum", None, None, None
    if typ in ("INT", "FLOAT"):
        kind: Kind = "int" if typ == "INT" else "float"
        lo, hi, step = opts.get("min"), opts.get("max"), opts.get("step")
        return kind, lo, hi, step
    if typ == "STRING":
        return "string", None, None, None
    if typ == "BOOLEAN":
        return "bool", None, None, None
    if typ == "IMAGE":
        return "image", None, None, None
    return "any", None, None, None


def infer_params(where: str, graph: Graph, node_defs: NodeDefs) -> list[Param]:
    """Parameters for a graph: comfy-pack annotations if any, else the plain-graph rules."""
    if any(node["class_type"].startswith("CPackInput") for node in graph.values()):
        params = _cpack_params(where, graph, node_defs)
    else:
        params = _plain_params(graph, node_defs)
    return _dedupe(where, params)


def _dedupe(where: str, params: list[Param]) -> list[Param]:
    seen: dict[str, Param] = {}
    out = []
    for param in params:
        name = param.name
        if name in seen:
            name = f"{param.name}_{identifier(param.node_id)}"
        if name in seen:
            raise WorkflowError(f"{where}: two parameters are named '{name}'; rename one in the sidecar")
        param = replace(param, name=name)
        seen[name] = param
        out.append(param)
    return out


# ---------------------------------------------------------------- comfy-pack
#
# comfy-pack (github.com/bentoml/comfy-pack) types its request fields so:
#   CPackInputString  str, the node's value as default
#   CPackInputInt     int, bounded by the node's own min and max inputs (+-sys.maxsize and beyond: unbounded)
#   CPackInputImage   an image upload; CPackInputFile: a file upload, whose path the node gets
#   CPackInputAny     from _meta.options, the widget options its UI copies from the input it feeds:
#                     "values" -> an enum; min/max/round/precision/step -> a number (a float if round < 1);
#                     no options -> the type of the node's value
# Here too; and, where comfy-pack is silent, ComfyUI's definition of the input the node feeds decides:
# an Any without options takes its type, numbers are kept within its bounds, and an int feeding a
# sampler's seed is the request's seed (drawn at random when omitted, returned in the response).


def _cpack_params(where: str, graph: Graph, node_defs: NodeDefs) -> list[Param]:
    feeds = _feeds(graph)
    params = []
    has_seed = False
    for node_id in sorted_ids(graph):
        class_type = graph[node_id]["class_type"]
        if class_type not in CPACK_INPUTS:
            continue
        name = _cpack_name(graph, node_id, feeds)
        fed_defs = [d for c, i in feeds.get(node_id, []) if (d := _input_def(node_defs, graph[c]["class_type"], i))]
        param = _cpack_param(where, name, node_id, graph[node_id], node_defs, fed_defs)
        if class_type == "CPackInputImage" and mask_output_used(graph, node_id):
            param = _upload_param(param.name, node_id, class_type, "image", param.input_name, mask_used=True)
        if not has_seed and param.kind == "int" and any(i in SEED_INPUTS for _, i in feeds.get(node_id, [])):
            param = replace(param, role="seed", description="Random seed; omit it to draw a random seed, which the "
                            f"response returns. (node {node_id} {class_type}, input '{param.input_name}')")
            has_seed = True
        params.append(param)
    return params


def _cpack_param(where: str, name: str, node_id: str, node: dict[str, Any], node_defs: NodeDefs, fed: list[InputDef]) -> Param:
    class_type = node["class_type"]
    input_name = CPACK_INPUTS[class_type]
    value = node["inputs"].get(input_name)
    if class_type == "CPackInputImage":
        return _upload_param(name, node_id, class_type, "image", input_name)
    if class_type == "CPackInputFile":
        return _upload_param(name, node_id, class_type, "file", input_name)
    if class_type == "CPackInputString":
        return param_from_input(name, node_id, class_type, node_defs[class_type].inputs[input_name], value)
    if class_type == "CPackInputInt":
        lo, hi = _int_bound(node["inputs"].get("min")), _int_bound(node["inputs"].get("max"))
        if lo is not None and hi is not None and lo > hi:
            raise WorkflowError(f"{where}: node {node_id} ({class_type}): its min {lo} is greater than its max {hi}")
        base = Param(name, node_id, input_name, "int", value, f"(node {node_id} {class_type}, input '{input_name}')",
                     minimum=lo, maximum=hi)
        return _within(base, fed)
    return _within(_any_param(name, node_id, node, fed), fed)


def _any_param(name: str, node_id: str, node: dict[str, Any], fed: list[InputDef]) -> Param:
    """CPackInputAny: typed by its _meta.options as comfy-pack reads them, else by the input it feeds."""
    class_type = node["class_type"]
    value = node["inputs"].get("input")
    default = None if is_link(value) else value  # omitted: the node keeps its link
    options = (node.get("_meta") or {}).get("options") or {}
    label = f"(node {node_id} {class_type}, input 'input')"
    if isinstance(options.get("values"), list) and options["values"]:
        choices = tuple(str(v) for v in options["values"])
        default = choices[0] if default is not None and default not in choices else default
        return Param(name, node_id, "input", "enum", default, label, choices=choices)
    if any(k in options for k in ("min", "max", "round", "precision", "step")):
        round_ = options.get("round", 1)
        is_float = (isinstance(round_, (int, float)) and round_ < 1) or (isinstance(default, float) and not default.is_integer())
        lo, hi = _number(options.get("min")), _number(options.get("max"))
        if not is_float:
            lo, hi = _int_bound(lo), _int_bound(hi)
        return Param(name, node_id, "input", "float" if is_float else "int", default, label, minimum=lo, maximum=hi)
    widget = next((d for d in fed if d.type in WIDGET_TYPES or d.choices), None)
    if widget is not None:
        return replace(param_from_input(name, node_id, class_type, widget, default), input_name="input", description=label)
    kind: Kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else \
        "float" if isinstance(value, float) else "string"
    return Param(name, node_id, "input", kind, default, label)


def _within(param: Param, fed: list[InputDef]) -> Param:
    """A number kept within the declared bounds of every input it feeds (ComfyUI checks no linked value)."""
    if param.kind not in ("int", "float"):
        return param
    lo, hi = param.minimum, param.maximum
    for input_def in fed:
        if input_def.type in ("INT", "FLOAT"):
            low, high = _number(input_def.options.get("min")), _number(input_def.options.get("max"))
            lo = low if lo is None else lo if low is None else max(lo, low)
            hi = high if hi is None else hi if high is None else min(hi, high)
    return replace(param, minimum=lo, maximum=hi)


def _input_def(node_defs: NodeDefs, class_type: str, input_name: str) -> InputDef | None:
    node_def = node_defs.get(class_type)
    return node_def.inputs.get(input_name) if node_def is not None else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int_bound(value: Any) -> int | None:
    """An int bound; comfy-pack's -sys.maxsize / sys.maxsize defaults (and beyond) mean none."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not -sys.maxsize < value < sys.maxsize:
        return None
    return int(value)


def _feeds(graph: Graph) -> dict[str, list[tuple[str, str]]]:
    """node id -> (consumer, input name) for every input its output 0 feeds, in node id order."""
    feeds: dict[str, list[tuple[str, str]]] = {}
    for consumer in sorted_ids(graph):
        for input_name, source, slot in links_into(graph, consumer):
            if slot == 0:
                feeds.setdefault(source, []).append((consumer, input_name))
    return feeds


def _cpack_name(graph: Graph, node_id: str, feeds: dict[str, list[tuple[str, str]]]) -> str:
    """comfy-pack's naming: the title if it is an identifier, else the input it feeds."""
    title = node_title(graph, node_id)
    if title.isidentifier():
        return title
    if node_id in feeds:
        return identifier(feeds[node_id][0][1])
    if title:
        return identifier(title)
    class_type = graph[node_id]["class_type"]
    return identifier(class_type.removeprefix("CPackInput"), "input")


def _upload_param(name: str, node_id: str, class_type: str, kind: Kind, input_name: str, mask_used: bool = False) -> Param:
    """An input file (image, mask, video, audio, or a comfy-pack file): a multipart upload, base64 or an http(s) URL."""
    what = UPLOAD_WHAT[kind]
    if mask_used:
        what += "; its alpha channel is the node's MASK output (transparent = masked)"
    return Param(name=name, node_id=node_id, input_name=input_name, kind=kind, default=None,
                 description=f"{what} for node {node_id} {class_type}.")


def mask_output_used(graph: Graph, node_id: str) -> bool:
    """Whether a LoadImage-like node's MASK output (slot 1) feeds another node."""
    return any(source == node_id and slot == 1 for consumer in graph for _, source, slot in links_into(graph, consumer))


# ---------------------------------------------------------------- plain graphs


def primary_sampler(graph: Graph) -> str | None:
    """The sampler whose parameters are exposed: the first by node id."""
    samplers = [n for n in sorted_ids(graph) if graph[n]["class_type"] in SAMPLER_CLASSES]
    return samplers[0] if samplers else None


def text_source(graph: Graph, sampler_id: str, input_name: str) -> str | None:
    """The text encoder feeding a sampler's positive/negative input, through pass-through nodes."""
    value = graph[sampler_id]["inputs"].get(input_name)
    seen = set()
    while is_link(value) and value[0] not in seen:
        node_id = value[0]
        seen.add(node_id)
        node = graph.get(node_id)
        if node is None:
            return None
        if node["class_type"] in TEXT_ENCODERS:
            return node_id
        conditioning = [v for k, v in node["inputs"].items() if is_link(v) and "cond" in k.lower()]
        value = conditioning[0] if len(conditioning) == 1 else None
    return None


def latent_source(graph: Graph, sampler_id: str) -> str | None:
    value = graph[sampler_id]["inputs"].get("latent_image")
    if not is_link(value) or value[0] not in graph:
        return None
    inputs = graph[value[0]]["inputs"]
    if all(k in inputs and not is_link(inputs[k]) for k in ("width", "height", "batch_size")):
        return value[0]
    return None


def _plain_params(graph: Graph, node_defs: NodeDefs) -> list[Param]:
    params: list[Param] = []
    sampler = primary_sampler(graph)
    if sampler is not None:
        params += _text_params(graph, node_defs, sampler)
        params += _sampler_params(graph, node_defs, sampler)
        latent = latent_source(graph, sampler)
        if latent is not None:
            params += _literal_params(graph, node_defs, latent, ("width", "height", "batch_size"))
    for node_id in sorted_ids(graph):
        params += _file_params(graph, node_defs, node_id)
    return params


def _file_params(graph: Graph, node_defs: NodeDefs, node_id: str) -> list[Param]:
    """An upload per loader input of a node (LoadImage, LoadImageMask, LoadVideo, LoadAudio, upload widgets)."""
    node = graph[node_id]
    class_type = node["class_type"]
    node_def = node_defs.get(class_type)
    names = list(node_def.inputs) if node_def is not None else [i for c, i in FILE_LOADERS if c == class_type]
    params = []
    for input_name in names:
        input_def = node_def.inputs[input_name] if node_def is not None else InputDef(input_name, "COMBO", True)
        kind = upload_kind(class_type, input_def)
        if kind is None or is_link(node["inputs"].get(input_name)):
            continue
        mask_used = kind == "image" and mask_output_used(graph, node_id)
        params.append(_upload_param(kind, node_id, class_type, kind, input_name, mask_used))
    return params


def _text_params(graph: Graph, node_defs: NodeDefs, sampler: str) -> list[Param]:
    params = []
    for name, sampler_input in (("prompt", "positive"), ("negative_prompt", "negative")):
        encoder = text_source(graph, sampler, sampler_input)
        if encoder is None:
            continue
        class_type = graph[encoder]["class_type"]
        text_input = TEXT_ENCODERS[class_type]
        value = graph[encoder]["inputs"].get(text_input)
        if is_link(value) or text_input not in node_defs[class_type].inputs:
            continue
        params.append(
            param_from_input(name, encoder, class_type, node_defs[class_type].inputs[text_input], value, role=name)
        )
    return params


def _sampler_params(graph: Graph, node_defs: NodeDefs, sampler: str) -> list[Param]:
    names = ("seed", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
    params = _literal_params(graph, node_defs, sampler, names)
    out = []
    for param in params:
        if param.input_name in SEED_INPUTS:
            param = replace(
                param,
                name="seed",
                role="seed",
                description="Random seed for the noise; omit it to draw a random seed, "
                f"which the response returns. (node {sampler} {graph[sampler]['class_type']}, "
                f"input '{param.input_name}')",
            )
        out.append(param)
    return out


def _literal_params(graph: Graph, node_defs: NodeDefs, node_id: str, names: tuple[str, ...]) -> list[Param]:
    node = graph[node_id]
    node_def = node_defs[node["class_type"]]
    params = []
    for input_name in names:
        if input_name not in node["inputs"] or is_link(node["inputs"][input_name]):
            continue
        input_def = node_def.inputs.get(input_name)
        if input_def is None:
            continue
        params.append(
            param_from_input(input_name, node_id, node["class_type"], input_def, node["inputs"][input_name], role=input_name)
        )
    return params


def infer_outputs(graph: Graph, node_defs: NodeDefs) -> list[OutputSpec]:
    """Every output node (OUTPUT_NODE in ComfyUI's registry), named after its title (or class and id), in node id order."""
    outputs = []
    used: set[str] = set(RESERVED_OUTPUT_NAMES)
    for node_id in sorted_ids(graph):
        class_type = graph[node_id]["class_type"]
        node_def = node_defs.get(class_type)
        if class_type not in OUTPUT_IMAGE_CLASSES and (node_def is None or not node_def.output_node):
            continue
        name = identifier(node_title(graph, node_id) or class_type, "output")
        if name in used:
            name = f"{name}_{identifier(node_id)}"
        used.add(name)
        kind, media_type = KNOWN_OUTPUTS.get(class_type, ("file", None))
        if class_type == "SaveVideo":  # its format input picks the container ("auto" is MP4)
            media_type = "video/webm" if graph[node_id]["inputs"].get("format") == "webm" else "video/mp4"
        outputs.append(OutputSpec(name=name, node_id=node_id, class_type=class_type, kind=kind, media_type=media_type))
    return outputs
