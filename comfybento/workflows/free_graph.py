"""Submitted graphs that match no served workflow (COMFYBENTO_SUBMITTED_GRAPHS=any): checked, then run alone.

Such a graph is a job item of the reserved workflow `FREE_GRAPH` ("_graph": no
endpoint can have that name) whose one field is the graph. The job service
checks it when it is submitted (`free_spec`), the engine again before it runs
(and ComfyUI's own validate_prompt then): every node class in the node registry,
every required input present and every link to a real output, every literal of
the right type and within its bounds or choices, every model file a models.lock
entry (the engine hash-checks it on first use), no input files, at least one
output node, only node types and paths the sandbox allows (workflows/sandbox.py:
its path inputs are moved into the request's own folder, `scratch_folder`). It
never shares a batch: it runs solo, and returns every output.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from comfybento.config import Settings
from comfybento.errors import InvalidRequest, WorkflowError
from comfybento.models.lock import ModelLock
from comfybento.outputs.encoding import Encoding
from comfybento.workflows.catalog import WorkflowSpec, check_models
from comfybento.workflows.graph import Graph, InputDef, NodeDefs, check_graph, is_link, sorted_ids
from comfybento.workflows.limits import check_graph_limits
from comfybento.workflows.matching import FREE_GRAPH
from comfybento.workflows.params import UPLOAD_KINDS, infer_outputs, infer_params
from comfybento.workflows.sandbox import NodeRules, confine, is_path_input, sandbox_problems
from comfybento.workflows.schema import build_input_model

NUMBERS: dict[str, type | tuple[type, ...]] = {"INT": int, "FLOAT": (int, float)}


class GraphRefused(InvalidRequest):
    """An unmatched graph failed its checks (422): the message names the node, input, value or model."""


def graph_of(values: Any) -> Graph:
    """The graph of a FREE_GRAPH item ({"graph": {...}}), or GraphRefused."""
    if not isinstance(values, dict) or set(values) != {"graph"}:
        raise GraphRefused(f"workflow '{FREE_GRAPH}': an item is {{\"graph\": <API-format graph>}} and nothing else")
    graph = values["graph"]
    if (
        not isinstance(graph, dict)
        or not graph
        or not all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs", {}), dict) for n in graph.values()
        )
    ):
        raise GraphRefused("graph: expected an API-format graph, an object of node id -> {class_type, inputs}")
    return {str(i): {"class_type": n["class_type"], "inputs": dict(n.get("inputs") or {})} for i, n in graph.items()}


def free_spec(graph: Graph, node_defs: NodeDefs, lock: ModelLock, settings: Settings) -> WorkflowSpec:
    """The graph as a one-off workflow with no request fields (its own values run), or GraphRefused naming the problem."""
    where = "graph"
    try:
        check_graph(where, graph, node_defs)
        models = check_models(where, graph, lock)  # first: a model file outside models.lock is named as such
        problems = [p for node_id in sorted_ids(graph) for p in _literal_problems(node_id, graph[node_id], node_defs)]
        if problems:
            raise GraphRefused(f"{where}: " + "; ".join(problems[:10]))
        files = [p for p in infer_params(where, graph, node_defs) if p.kind in UPLOAD_KINDS]
        if files:
            raise GraphRefused(
                f"{where}: node {files[0].node_id} ({graph[files[0].node_id]['class_type']}) input "
                f"'{files[0].input_name}' reads an input file; a graph that matches no served workflow takes "
                "no files (serve a workflow for it)"
            )
        problems = sandbox_problems(graph, node_defs, NodeRules.from_names(settings.graph_nodes))
        if problems:
            raise GraphRefused(f"{where}: " + "; ".join(problems[:10]))
        outputs = tuple(infer_outputs(graph, node_defs))
        check_graph_limits(where, graph, settings.limits)
    except WorkflowError as exc:
        raise GraphRefused(str(exc)) from None
    if not outputs:
        raise GraphRefused(f"{where}: no output node that comfybento returns (SaveImage, SaveAudio, PreviewAny ...)")
    return WorkflowSpec(
        name=FREE_GRAPH,
        path=Path(f"{FREE_GRAPH}-{uuid.uuid4().hex}.json"),
        graph=graph,
        params=(),
        outputs=outputs,
        input_model=build_input_model(FREE_GRAPH, [], limits=settings.limits),
        models=models,
        max_batch_size=1,
        max_latency_ms=1,
        batch_plan=None,
        batch_reason="an unmatched submitted graph runs alone",
        encoding=Encoding(),
        limits=settings.limits,
    )


def scratch_folder(spec: WorkflowSpec) -> str:
    """The request's own folder of an unmatched graph, inside ComfyUI's input, output and temp folders."""
    return spec.path.stem


def _literal_problems(node_id: str, node: dict[str, Any], node_defs: NodeDefs) -> list[str]:
    node_def = node_defs[node["class_type"]]
    label = f"node {node_id} ({node['class_type']})"
    problems = []
    for name, value in node["inputs"].items():
        input_def = node_def.inputs.get(name)
        if input_def is None:
            problems.append(f"{label}: input '{name}' is not an input of {node['class_type']}")
        elif is_path_input(node["class_type"], name, node_defs):
            continue  # a file or folder name: the sandbox checks it
        elif not is_link(value):
            problem = _value_problem(input_def, value)
            if problem:
                problems.append(f"{label}: input '{name}' {problem}")
    return problems


def _value_problem(input_def: InputDef, value: Any) -> str | None:
    """Why a literal does not fit its input (type, bounds, choices), or None."""
    kind, options = input_def.type, input_def.options
    if kind in NUMBERS:
        if isinstance(value, bool) or not isinstance(value, NUMBERS[kind]):
            return f"is {value!r}, not {'an integer' if kind == 'INT' else 'a number'}"
        if not math.isfinite(cast(float, value)):
            return f"is {value!r}, not a finite number"
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"is {value!r}, outside [{low}, {high}]"
    elif kind == "STRING" and not isinstance(value, str):
        return f"is {value!r}, not a string"
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        return f"is {value!r}, not true or false"
    elif kind == "COMBO" and input_def.choices and value not in input_def.choices:
        shown = list(input_def.choices[:8]) + (["..."] if len(input_def.choices) > 8 else [])
        return f"is {value!r}, not one of {shown}"
    elif kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
        return f"is {value!r}: it takes a link from a {kind} output, not a value"
    return None


class FreeGraphs:
    """Checks unmatched graphs against the node-definition snapshot and models.lock (loaded on first use)."""

    def __init__(self, settings: Settings, node_defs: NodeDefs | None = None, lock: ModelLock | None = None) -> None:
        self.settings = settings
        if node_defs is not None:
            self.node_defs = node_defs
        if lock is not None:
            self.lock = lock

    @cached_property
    def node_defs(self) -> NodeDefs:
        from comfybento.workflows.node_info import load_node_defs

        return load_node_defs(self.settings)

    @cached_property
    def lock(self) -> ModelLock:
        from comfybento.models.lock import parse_lock

        return parse_lock(self.settings.models_lock)

    def spec(self, values: Any) -> WorkflowSpec:
        """The one-off workflow of a FREE_GRAPH item's values ({"graph": ...}), or GraphRefused / TooLarge."""
        return free_spec(graph_of(values), self.node_defs, self.lock, self.settings)

    def runnable(self, values: Any) -> WorkflowSpec:
        """`spec`, its path inputs moved into its own folder (`scratch_folder`): what the engine runs."""
        spec = self.spec(values)
        return replace(spec, graph=confine(spec.graph, self.node_defs, scratch_folder(spec)))
