"""Infer a workflow's typed parameters from its graph and ComfyUI's node definitions.

Two sources, in this order of preference:
  (a) comfy-pack annotations: CPackInput* nodes, named after their titles;
  (b) a plain export: prompt/negative_prompt from the encoders feeding the
      sampler, the sampler's seed/steps/cfg/sampler_name/scheduler/denoise,
      the latent's width/height/batch_size, and an image input per LoadImage.
A sidecar file (see sidecar.py) can then rename, hide or add parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from comfybento.errors import WorkflowError
from comfybento.workflows.graph import Graph, InputDef, NodeDefs, is_link, links_into, node_title, sorted_ids

Kind = Literal["int", "float", "string", "bool", "enum", "image", "any"]

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
IMAGE_LOADERS = {"LoadImage": "image", "CPackInputImage": "image"}
OUTPUT_IMAGE_CLASSES = ("SaveImage", "PreviewImage", "CPackOutputImage")
MAX_SEED = 0xFFFFFFFFFFFFFFFF


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


@dataclass(frozen=True)
class OutputSpec:
    """One image-producing output node."""

    name: str
    node_id: str
    class_type: str


def identifier(text: str, fallback: str = "param") -> str:
    """A snake_case Python identifier made from a title."""
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text:
        return fallback
    return f"_{text}" if text[0].isdigit() else text


def param_from_input(
    name: str, node_id: str, class_type: str, input_def: InputDef, default: Any, role: str = ""
) -> Param:
    """A Param typed after ComfyUI's own input definition (type, bounds, choices)."""
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
        params = _cpack_params(graph, node_defs)
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


def _cpack_params(graph: Graph, node_defs: NodeDefs) -> list[Param]:
    fed = _fed_inputs(graph)
    params = []
    for node_id in sorted_ids(graph):
        class_type = graph[node_id]["class_type"]
        input_name = CPACK_INPUTS.get(class_type)
        if input_name is None:
            continue
        name = _cpack_name(graph, node_id, fed)
        node_def = node_defs[class_type]
        value = graph[node_id]["inputs"].get(input_name)
        if class_type == "CPackInputImage":
            params.append(_image_param(name, node_id, class_type))
            continue
        param = param_from_input(name, node_id, class_type, node_def.inputs[input_name], value)
        if class_type == "CPackInputInt":
            param = _cpack_int_bounds(param, graph[node_id]["inputs"])
        if class_type == "CPackInputAny":
            param = replace(param, kind="any")
        params.append(param)
    return params


def _cpack_int_bounds(param: Param, inputs: dict[str, Any]) -> Param:
    lo, hi = inputs.get("min"), inputs.get("max")
    lo = lo if isinstance(lo, int) and lo > -(2**63) else None
    hi = hi if isinstance(hi, int) and hi < 2**63 - 1 else None
    return replace(param, minimum=lo, maximum=hi)


def _fed_inputs(graph: Graph) -> dict[str, str]:
    """node id -> name of the first input its output 0 feeds (in node id order)."""
    fed: dict[str, str] = {}
    for consumer in sorted_ids(graph):
        for input_name, source, slot in links_into(graph, consumer):
            if slot == 0:
                fed.setdefault(source, input_name)
    return fed


def _cpack_name(graph: Graph, node_id: str, fed: dict[str, str]) -> str:
    """comfy-pack's naming: the title if it is an identifier, else the input it feeds."""
    title = node_title(graph, node_id)
    if title.isidentifier():
        return title
    if node_id in fed:
        return identifier(fed[node_id])
    if title:
        return identifier(title)
    class_type = graph[node_id]["class_type"]
    return identifier(class_type.removeprefix("CPackInput"), "input")


def _image_param(name: str, node_id: str, class_type: str) -> Param:
    return Param(
        name=name,
        node_id=node_id,
        input_name=IMAGE_LOADERS[class_type],
        kind="image",
        default=None,
        description=f"Input image (PNG/JPEG/WebP upload) for node {node_id} {class_type}.",
    )


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
        class_type = graph[node_id]["class_type"]
        if class_type in IMAGE_LOADERS and not is_link(graph[node_id]["inputs"].get("image")):
            params.append(_image_param("image", node_id, class_type))
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


def infer_outputs(graph: Graph) -> list[OutputSpec]:
    """Every image-saving node, named after its title (or class and id), in node id order."""
    outputs = []
    used: set[str] = set()
    for node_id in sorted_ids(graph):
        class_type = graph[node_id]["class_type"]
        if class_type not in OUTPUT_IMAGE_CLASSES:
            continue
        name = identifier(node_title(graph, node_id) or class_type, "output")
        if name in used:
            name = f"{name}_{identifier(node_id)}"
        used.add(name)
        outputs.append(OutputSpec(name=name, node_id=node_id, class_type=class_type))
    return outputs
