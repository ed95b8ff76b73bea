"""Match a submitted API-format graph (ComfyUI's /prompt, Comfy API v2) to a served workflow.

A submission matches a workflow when it has the same nodes (ids and class
types) and the same links; its literal values may differ only at the inputs
that are the workflow's request fields (params). The match is then an
ordinary request of that workflow: its field values, which run through the
workflow's scheduler and share its batches with typed-endpoint traffic.

A submission that matches nothing is refused with a `GraphMismatch` naming
the first difference from the closest served workflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comfybento.errors import InvalidRequest
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.graph import is_link, sorted_ids
from comfybento.workflows.params import UPLOAD_KINDS, Param

# (field kind, the literal the graph holds, e.g. an uploaded file's name) -> the field's value (bytes, base64, URL ...)
ResolveFile = Callable[[str, Any], Any]


class GraphMismatch(InvalidRequest):
    """The submitted graph is not one of the served workflows (422); the message names the first difference."""



@dataclass(frozen=True)
class GraphRun:
    workflow: str
    values: dict[str, Any]  # the workflow's request fields, as its typed endpoint takes them


def match_graph(catalog: Mapping[str, WorkflowSpec], graph: Any, resolve_file: ResolveFile | None = None,
                allow_unmatched: bool = False) -> GraphRun:
    """The served workflow `graph` matches, with its field values; raises GraphMismatch (the closest workflow's first difference).

    allow_unmatched (the service's explicit setting): a graph that matches nothing runs on its own, unbatched, after
    validation against the node registry and models.lock (not built yet: it is refused like any other mismatch).
    """
    if not isinstance(graph, dict) or not graph or not all(isinstance(n, dict) for n in graph.values()):
        raise GraphMismatch("prompt: expected an API-format graph, an object of node id -> {class_type, inputs}")
    if not catalog:
        raise GraphMismatch("prompt: this service serves no workflow")
    found: list[tuple[int, str, WorkflowSpec]] = []
    for name in sorted(catalog):
        spec = catalog[name]
        diffs = differences(spec, graph)
        if not diffs:
            return GraphRun(spec.name, field_values(spec, graph, resolve_file))
        found.append((len(diffs), diffs[0], spec))
    count, first, spec = min(found, key=lambda f: f[0])
    more = f" ({count - 1} more)" if count > 1 else ""
    raise GraphMismatch(f"prompt: the graph matches no served workflow; closest is '{spec.name}': {first}{more}")


def differences(spec: WorkflowSpec, graph: dict[str, Any]) -> list[str]:
    """Every way `graph` differs from the workflow, first difference first (node ids in ComfyUI's order)."""
    served = spec.graph
    fields = {(p.node_id, p.input_name) for p in spec.params}
    diffs = [f"node '{i}' ({_class(graph[i])}) is not in the workflow" for i in sorted_ids(graph) if i not in served]
    for node_id in sorted_ids(served):
        node = served[node_id]
        mine = graph.get(node_id)
        if mine is None:
            diffs.append(f"node '{node_id}' ({node['class_type']}) is missing")
            continue
        if _class(mine) != node["class_type"]:
            diffs.append(f"node '{node_id}' is {_class(mine)}, the workflow's is {node['class_type']}")
            continue
        diffs += _input_differences(node_id, node, mine, fields)
    return diffs


def _input_differences(node_id: str, node: dict[str, Any], mine: dict[str, Any], fields: set[tuple[str, str]]) -> list[str]:
    given = mine.get("inputs")
    inputs: dict[str, Any] = given if isinstance(given, dict) else {}
    where = f"node '{node_id}' ({node['class_type']})"
    diffs = [f"{where} input '{k}' is not in the workflow" for k in sorted(inputs) if k not in node.get("inputs", {})]
    for name, value in node.get("inputs", {}).items():
        if name not in inputs:
            continue  # an input left out keeps the workflow's value
        theirs = inputs[name]
        if is_link(value) or is_link(theirs):
            if not (is_link(value) and is_link(theirs) and [str(value[0]), value[1]] == [str(theirs[0]), theirs[1]]):
                diffs.append(f"{where} input '{name}' is linked differently ({_show(theirs)}; the workflow's: {_show(value)})")
        elif theirs != value and (node_id, name) not in fields:
            diffs.append(f"{where} input '{name}' is {_show(theirs)}, the workflow's is {_show(value)}, and it is not a request field")
    return diffs


def field_values(spec: WorkflowSpec, graph: dict[str, Any], resolve_file: ResolveFile | None) -> dict[str, Any]:
    """The workflow's request fields as the matched graph sets them (inputs it leaves out keep the fields' defaults)."""
    values: dict[str, Any] = {}
    for param in spec.params:
        inputs = graph.get(param.node_id, {}).get("inputs") or {}
        if param.input_name not in inputs:
            continue
        values[param.name] = _field_value(param, inputs[param.input_name], resolve_file)
    return values


def _field_value(param: Param, literal: Any, resolve_file: ResolveFile | None) -> Any:
    if param.kind in UPLOAD_KINDS:
        if resolve_file is None:
            raise GraphMismatch(f"prompt: node '{param.node_id}' input '{param.input_name}' names a file, and files are not taken here")
        return resolve_file(param.kind, literal)
    return literal


def _class(node: dict[str, Any]) -> str:
    return str(node.get("class_type", "?"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
