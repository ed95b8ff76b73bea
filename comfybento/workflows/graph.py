"""API-format ComfyUI graphs: loading, link helpers and structural checks.

A graph maps node id -> {"class_type": str, "inputs": {...}, "_meta": {...}}.
An input whose value is `[node_id, output_index]` is a link to another node.
The checks here need only `NodeDef`s (plain data), never ComfyUI itself. The graph model every other
module of workflows/ shares: it imports none of them (a UI-format file is converted above it, ui_format.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfybento.errors import WorkflowError
from comfybento.workflows.ui_graph import is_ui_format

Graph = dict[str, dict[str, Any]]

UI_FORMAT_MESSAGE = (
    "{path} is a ComfyUI UI-format workflow (it has 'nodes' and 'links'); converting it needs the node registry "
    "(load it through the workflow catalog), or export it with Workflow > Export (API) / 'Save (API Format)'"
)


@dataclass(frozen=True)
class InputDef:
    """One input of a node class, as ComfyUI's INPUT_TYPES declares it."""

    name: str
    type: str  # "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", or a link type ("MODEL", ...)
    required: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeDef:
    """What comfybento needs to know about one node class."""

    class_type: str
    inputs: Mapping[str, InputDef]
    output_node: bool = False
    return_types: tuple[str, ...] = ()
    description: str = ""
    display_name: str = ""  # the title ComfyUI gives a new node of this class


NodeDefs = Mapping[str, NodeDef]


def is_link(value: Any) -> bool:
    """True if an input value is a link `[node_id, output_index]`."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def node_title(graph: Graph, node_id: str) -> str:
    meta = graph[node_id].get("_meta") or {}
    return str(meta.get("title") or "")


def links_into(graph: Graph, node_id: str) -> Iterator[tuple[str, str, int]]:
    """(input_name, source_node_id, source_output) for each linked input of a node."""
    for name, value in graph[node_id].get("inputs", {}).items():
        if is_link(value):
            yield name, value[0], value[1]


def consumers(graph: Graph, node_id: str) -> list[tuple[str, str]]:
    """(consumer_node_id, input_name) for every input linked to any output of node_id."""
    found = []
    for other_id, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if is_link(value) and value[0] == node_id:
                found.append((other_id, name))
    return found


def sorted_ids(ids: Any) -> list[str]:
    """Node ids in a stable, human order: numeric ids numerically, then the rest."""

    def key(node_id: str) -> tuple[int, float, str]:
        head = node_id.split(":")[0]
        try:
            return (0, float(head), node_id)
        except ValueError:
            return (1, 0.0, node_id)

    return sorted((str(i) for i in ids), key=key)


def read_graph_file(path: Path) -> Any:
    """A workflow file's JSON; a malformed file is a WorkflowError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{path}: not valid JSON ({exc})") from None


def load_graph(path: Path) -> Graph:
    """Read an API-format graph file; a malformed file is a WorkflowError, and so is a UI-format one, saying what
    converting it needs (ui_format.load_workflow_graph converts it with the node registry)."""
    data = read_graph_file(path)
    if is_ui_format(data):
        raise WorkflowError(UI_FORMAT_MESSAGE.format(path=path))
    return parse_graph(data, path)


def parse_graph(data: Any, path: Path) -> Graph:
    """An API-format graph from a file's JSON (a /prompt request body saved to a file too), its nodes checked for shape."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "extra_data" in data:
        data = data["prompt"]  # a /prompt request body saved to a file
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"{path}: expected a JSON object of nodes (ComfyUI API format)")
    graph: Graph = {}
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(
                f"{path}: node {node_id} has no 'class_type'; is this an API-format export?"
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(f"{path}: node {node_id} ({node['class_type']}): 'inputs' is not an object")
        graph[str(node_id)] = {**node, "inputs": dict(inputs)}
    return graph


def check_graph(where: str, graph: Graph, node_defs: NodeDefs) -> None:
    """Raise WorkflowError naming the file, node and input for the first problem found.

    Checks: every class_type is registered, every required input is present,
    every link points at an existing node and a valid output slot, and the
    graph has at least one output node.
    """
    problems: list[str] = []
    for node_id in sorted_ids(graph):
        node = graph[node_id]
        class_type = node["class_type"]
        node_def = node_defs.get(class_type)
        if node_def is None:
            problems.append(
                f"node {node_id} ({class_type}): unknown node class '{class_type}'; "
                "install the custom node that provides it (custom_nodes/) or remove the node"
            )
            continue
        problems.extend(_input_problems(graph, node_id, node_def, node_defs))
    if not problems and not any(
        node_defs[n["class_type"]].output_node for n in graph.values()
    ):
        problems.append("the graph has no output node (SaveImage, PreviewImage, CPackOutputImage ...)")
    if problems:
        raise WorkflowError(f"{where}: " + "; ".join(problems))


def _input_problems(graph: Graph, node_id: str, node_def: NodeDef, node_defs: NodeDefs) -> list[str]:
    node = graph[node_id]
    label = f"node {node_id} ({node['class_type']})"
    problems = []
    for input_def in node_def.inputs.values():
        if input_def.required and input_def.name not in node["inputs"]:
            problems.append(f"{label}: required input '{input_def.name}' is missing")
    for name, value in node["inputs"].items():
        if not is_link(value):
            continue
        source_id, slot = value
        source = graph.get(source_id)
        if source is None:
            problems.append(f"{label}: input '{name}' links to node {source_id}, which does not exist")
            continue
        source_def = node_defs.get(source["class_type"])
        if source_def is not None and source_def.return_types and not (
            0 <= slot < len(source_def.return_types)
        ):
            problems.append(
                f"{label}: input '{name}' links to output {slot} of node {source_id} "
                f"({source['class_type']}), which has only {len(source_def.return_types)} outputs"
            )
    return problems
