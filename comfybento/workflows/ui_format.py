"""UI-format workflows (ComfyUI's `workflow.json`: `nodes` + `links`) converted to the API format.

The rules follow what ComfyUI's front-end does when it queues a workflow (its
`graphToPrompt`), written here from its behaviour, with our `NodeDef`s in place
of the browser's node registry:

- widget values fill a node's widget inputs in the order ComfyUI creates the
  widgets: required inputs, then the media `upload` widget (image/video/audio
  upload combos), then optional inputs; socket-only inputs (`forceInput`) have
  no widget. An INT with `control_after_generate` (or, by default, named `seed`
  or `noise_seed`) and a COMBO with `control_after_generate` are followed by the
  "control after generate" value, which is not an input. Values left over at the
  end belong to display widgets (3D viewers, text previews) and are dropped.
  `widgets_values` may also be an object keyed by widget name;
- `PrimitiveNode` gives its value to every widget input it feeds; `Reroute`
  nodes pass links through; an input converted from a widget and fed by a link
  takes the link;
- a bypassed node (mode 4) passes each consumer the input of the matching type;
  a muted node (mode 2) is dropped, and so are links from it;
- `Note`, `MarkdownNote` and groups are ignored;
- subgraphs (`definitions.subgraphs`) are flattened first (`ui_subgraph`);
  inner nodes get ids `<instance id>:<inner id>`, as ComfyUI numbers them;
- node titles go to `_meta.title`.

Anything ambiguous is a WorkflowError naming the node id and type.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfybento.errors import WorkflowError
from comfybento.workflows.graph import Graph, InputDef, NodeDef, NodeDefs, parse_graph, read_graph_file
from comfybento.workflows.ui_graph import MODE_BYPASS, MODE_NEVER, UIGraph, UINode, input_name, is_ui_format
from comfybento.workflows.ui_subgraph import flatten

IGNORED_TYPES = frozenset({"Note", "MarkdownNote"})
PRIMITIVE = "PrimitiveNode"
REROUTE = "Reroute"
# Input types the front-end shows as widgets (so they take a place in widgets_values): the basic ones, and
# those its own extensions draw (3D viewer, webcam, recorder ...). Their values are what the file saved;
# a webcam or 3D canvas capture taken when queueing cannot be reproduced here.
WIDGET_TYPES = frozenset(
    {
        "INT",
        "FLOAT",
        "STRING",
        "BOOLEAN",
        "COMBO",
        "LOAD_3D",
        "WEBCAM",
        "AUDIO_RECORD",
        "MARKDOWN",
        "COLOR",
        "IMAGECOMPARE",
        "CHART",
        "GALLERIA",
        "TEXTAREA",
    }
)
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
CONTROL = "<control after generate>"  # a widget slot that is not an input
SKIP = "<not an input>"  # a widget slot whose value is never an input (media upload button)
MAX_HOPS = 256


# ---------------------------------------------------------------- widgets


def widget_layout(node_def: NodeDef) -> list[str]:
    """Input names in ComfyUI's widget order, with CONTROL and SKIP for widget slots that are not inputs."""
    layout: list[str] = []
    required = [i for i in node_def.inputs.values() if i.required]
    optional = [i for i in node_def.inputs.values() if not i.required]
    for input_def in required:
        layout.extend(_widget_slots(input_def))
    if any(i.type == "COMBO" and any(i.options.get(k) for k in UPLOAD_OPTIONS) for i in required):
        layout.append(SKIP)
    for input_def in optional:
        layout.extend(_widget_slots(input_def))
    return layout


def _widget_slots(input_def: InputDef) -> list[str]:
    if not is_widget(input_def):
        return []
    control = input_def.options.get("control_after_generate")
    if input_def.type == "INT" and control is None:
        control = input_def.name in ("seed", "noise_seed")
    return [input_def.name, CONTROL] if control else [input_def.name]


def is_widget(input_def: InputDef) -> bool:
    options = input_def.options
    return input_def.type in WIDGET_TYPES and not options.get("forceInput") and not options.get("defaultInput")


def widget_values(node: UINode, node_def: NodeDef) -> dict[str, Any]:
    """{input name: value} for a node's widgets, from `widgets_values` (a list or an object)."""
    raw = node.widgets_values
    names = {i.name for i in node_def.inputs.values() if is_widget(i)}
    if raw is None:
        raw = []
    if isinstance(raw, dict):
        return {name: value for name, value in raw.items() if name in names}
    if not isinstance(raw, list):
        raise WorkflowError(f"{node.label}: 'widgets_values' is neither a list nor an object")
    layout = _legacy_layout(node_def, raw) or widget_layout(node_def)
    values: dict[str, Any] = {}
    index = 0
    for name in layout:
        if index >= len(raw):
            break
        if name == CONTROL:
            # Consume the control value only if it is one; a file saved without that widget goes on.
            index += 1 if raw[index] in CONTROL_VALUES or isinstance(raw[index], bool) else 0
        elif name == SKIP:
            index += 1
        else:
            values[name] = raw[index]
            index += 1
    return values


def _legacy_layout(node_def: NodeDef, raw: list[Any]) -> list[str] | None:
    """Older files also stored a value for each socket-only (forceInput) input; ComfyUI skips those when counts match."""
    if not any(i.type in WIDGET_TYPES and i.options.get("forceInput") for i in node_def.inputs.values()):
        return None
    slots: list[str] = []
    for input_def in node_def.inputs.values():
        if is_widget(input_def):
            slots.extend(_widget_slots(input_def))
        elif input_def.type in WIDGET_TYPES and input_def.options.get("forceInput"):
            slots.append(SKIP)
    return slots if len(slots) == len(raw) else None


def defaults(node_def: NodeDef) -> dict[str, Any]:
    """Values ComfyUI's front-end gives widgets the file has no value for (a node def newer than the file)."""
    values: dict[str, Any] = {}
    for input_def in node_def.inputs.values():
        if not is_widget(input_def):
            continue
        if "default" in input_def.options:
            values[input_def.name] = input_def.options["default"]
        elif input_def.type == "COMBO" and input_def.choices:
            values[input_def.name] = input_def.choices[0]
    return values


def wrap(value: Any) -> Any:
    """A list widget value is sent as {"__value__": [...]}, so it is not read as a link."""
    return {"__value__": value} if isinstance(value, list) else value


# ---------------------------------------------------------------- links


def compatible(a: str, b: str) -> bool:
    """LiteGraph's rule: equal, a wildcard, or comma-separated type lists that share a type."""
    if not a or not b or a == "*" or b == "*":
        return True
    left, right = set(a.upper().split(",")), set(b.upper().split(","))
    return bool(left & right)


class Resolver:
    """Follows a node input back through reroutes, primitives and bypassed nodes to what feeds it."""

    def __init__(self, graph: UIGraph) -> None:
        self.graph = graph

    def input(self, node: UINode, slot_index: int, wanted: str | None = None, hops: int = 0) -> tuple[str, Any] | None:
        """("link", [node id, slot]) or ("value", v) for a node's input slot; None when nothing feeds it."""
        if hops > MAX_HOPS:
            raise WorkflowError(f"{node.label}: links loop through reroutes or bypassed nodes")
        slot = node.inputs[slot_index]
        key = slot.get("link")
        if key is None:
            return None
        link = self.graph.links.get(str(key))
        if link is None:
            raise WorkflowError(f"{node.label}: input '{input_name(slot)}' uses link {key}, which the file does not have")
        origin = self.graph.nodes.get(link.origin_id)
        if origin is None:
            raise WorkflowError(f"{node.label}: input '{input_name(slot)}' links to node {link.origin_id}, which does not exist")
        return self.output(origin, link.origin_slot, wanted or str(slot.get("type") or "*"), hops + 1)

    def output(self, node: UINode, slot: int, wanted: str, hops: int) -> tuple[str, Any] | None:
        if node.type == PRIMITIVE:
            values = node.widgets_values if isinstance(node.widgets_values, list) else []
            if not values:
                raise WorkflowError(f"{node.label}: the primitive has no value")
            return ("value", values[0])
        if node.type == REROUTE:
            return self.input(node, 0, wanted, hops) if node.inputs else None
        if node.mode == MODE_BYPASS:
            index = bypass_input(node, slot, wanted)
            return None if index is None else self.input(node, index, None, hops)
        return ("link", [node.id, slot])


def bypass_input(node: UINode, slot: int, wanted: str) -> int | None:
    """The input a bypassed node passes to output `slot` (as ComfyUI's front-end picks it)."""
    inputs = node.inputs
    if wanted in ("*", ""):
        return slot if len(inputs) > slot else (0 if inputs else None)
    out_type = str(node.outputs[slot].get("type") or "*") if slot < len(node.outputs) else "*"
    if slot < len(inputs):
        own = str(inputs[slot].get("type") or "*")
        if compatible(own, out_type) and compatible(own, wanted):
            return slot
    for index, candidate in enumerate(inputs):
        if candidate.get("type") == wanted:
            return index
    for index, candidate in enumerate(inputs):
        own = str(candidate.get("type") or "*")
        if compatible(own, out_type) and compatible(own, wanted):
            return index
    return None


# ---------------------------------------------------------------- conversion


def is_emitted(node: UINode) -> bool:
    """Nodes that become API nodes: not virtual, not muted, not bypassed."""
    return node.type not in IGNORED_TYPES and node.type not in (PRIMITIVE, REROUTE) and node.mode not in (MODE_NEVER, MODE_BYPASS)


def convert_node(node: UINode, node_def: NodeDef, resolver: Resolver) -> dict[str, Any]:
    widgets = {**defaults(node_def), **widget_values(node, node_def), **node.overrides}
    inputs: dict[str, Any] = {name: wrap(value) for name, value in widgets.items()}
    for index, slot in enumerate(node.inputs):
        name = input_name(slot)
        if name not in node_def.inputs:
            continue  # a socket the node def no longer has; ComfyUI's validator would ignore it too
        fed = resolver.input(node, index)
        if fed is None:
            continue
        kind, value = fed
        inputs[name] = value if kind == "link" else wrap(value)
    return {"inputs": inputs, "class_type": node.type, "_meta": {"title": node.title or node_def.display_name or node.type}}


def convert_graph(graph: UIGraph, node_defs: NodeDefs) -> Graph:
    resolver = Resolver(graph)
    api: Graph = {}
    for node in graph.nodes.values():
        if not is_emitted(node):
            continue
        node_def = node_defs.get(node.type)
        if node_def is None:
            raise WorkflowError(
                f"{node.label}: unknown node class '{node.type}'; install the custom node that provides it "
                "(custom_nodes/), or remove, mute or bypass the node"
            )
        api[node.id] = convert_node(node, node_def, resolver)
    for api_node in api.values():  # links from muted nodes go, as ComfyUI drops them
        for name, value in list(api_node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in api:
                del api_node["inputs"][name]
    return api


def ui_to_api(data: Mapping[str, Any], node_defs: NodeDefs, where: str) -> Graph:
    """Convert a UI-format workflow to an API-format graph; WorkflowError naming the node when it cannot."""
    extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
    if extra and extra.get("groupNodes"):
        names = ", ".join(sorted(map(str, extra["groupNodes"])))
        raise WorkflowError(
            f"{where}: the workflow uses legacy group nodes ({names}); convert them to subgraphs or ungroup them in ComfyUI"
        )
    try:
        graph = flatten(data, where)
        api = convert_graph(graph, node_defs)
    except WorkflowError as exc:
        message = str(exc)
        raise WorkflowError(message if message.startswith(where) else f"{where}: {message}") from None
    if not api:
        raise WorkflowError(f"{where}: the UI-format workflow has no node to run (all muted, bypassed or notes)")
    return api


def load_workflow_graph(path: Path, node_defs: NodeDefs) -> Graph:
    """A workflow file as an API-format graph: an API-format export as it is, a UI-format one converted with node_defs."""
    data = read_graph_file(path)
    if is_ui_format(data):
        data = ui_to_api(data, node_defs, str(path))
    return parse_graph(data, path)
