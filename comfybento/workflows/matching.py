"""Match a submitted API-format graph (ComfyUI's /prompt, Comfy API v2) to a served workflow.

A submission matches a workflow when it has the same nodes (class types) and
the same links, whatever its node ids: a client may build the graph from
scratch or re-export it. Its literal values may differ only at the inputs that
are the workflow's request fields (params) and at cosmetic inputs that do not
change results (an output node's `filename_prefix`). The match is then an
ordinary request of that workflow: its field values, which run through the
workflow's scheduler and share its batches with typed-endpoint traffic.

Node ids are matched by following links back from the graph's sinks (nodes no
link reads): once two sinks are paired, every ancestor's pair is forced. Only
sinks of the same class are tried in turn, and the search is bounded
(`SEARCH_STEPS`), so a graph of a few dozen nodes matches in about a millisecond.

A submission that matches nothing is refused with a `GraphMismatch` naming the
first difference from the closest served workflow, unless the service runs
unmatched graphs (COMFYBENTO_SUBMITTED_GRAPHS=any, workflows/free_graph.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfybento.errors import InvalidRequest
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.graph import is_link, sorted_ids
from comfybento.workflows.params import UPLOAD_KINDS, Param

# The reserved workflow name of an unmatched graph's job (NAME_RE makes it no endpoint's; workflows/free_graph.py).
FREE_GRAPH = "_graph"
# (field kind, the literal the graph holds, e.g. an uploaded file's name) -> the field's value (bytes, base64, URL ...)
ResolveFile = Callable[[str, Any], Any]
# Inputs of output nodes that only name or place the files they write: the service names outputs itself.
COSMETIC_INPUTS = frozenset({"filename_prefix"})
# Partial matches tried per workflow before the search gives up (each is one link-following pass).
SEARCH_STEPS = 2000
# Complete matches compared (symmetric graphs: two identical branches) for the one with the fewest value differences.
MAX_MATCHES = 16

Mapping_ = dict[str, str]  # the workflow's node id -> the submitted graph's node id


class GraphMismatch(InvalidRequest):
    """The submitted graph is not one of the served workflows (422); the message names the first difference."""


@dataclass(frozen=True)
class GraphRun:
    workflow: str
    values: dict[str, Any]  # the workflow's request fields, as its typed endpoint takes them
    # The workflow's node id -> the submitted graph's, where they differ (results are sent under the caller's ids).
    node_ids: dict[str, str] = field(default_factory=dict)


def match_graph(
    catalog: Mapping[str, WorkflowSpec], graph: Any, resolve_file: ResolveFile | None = None, allow_unmatched: bool = False
) -> GraphRun:
    """The served workflow `graph` matches, with its field values; raises GraphMismatch (the closest workflow's first difference).

    allow_unmatched (COMFYBENTO_SUBMITTED_GRAPHS=any): a graph that matches nothing runs on its own, unbatched, as
    the reserved workflow FREE_GRAPH (workflows/free_graph.py); the job service validates it against the node
    registry and models.lock when it is submitted.
    """
    check_shape(graph)
    if not catalog and not allow_unmatched:
        raise GraphMismatch("prompt: this service serves no workflow")
    found: list[tuple[int, str, WorkflowSpec]] = []
    for name in sorted(catalog):
        spec = catalog[name]
        mapping, diffs = closest(spec, graph)
        if not diffs:
            renamed = {mine: theirs for mine, theirs in mapping.items() if mine != theirs}
            return GraphRun(spec.name, field_values(spec, graph, resolve_file, mapping), renamed)
        found.append((len(diffs), diffs[0], spec))
    if allow_unmatched:  # the job item of a graph that matches no served workflow (checked in full when submitted)
        return GraphRun(FREE_GRAPH, {"graph": graph})
    count, first, spec = min(found, key=lambda f: f[0])
    more = f" ({count - 1} more)" if count > 1 else ""
    raise GraphMismatch(f"prompt: the graph matches no served workflow; closest is '{spec.name}': {first}{more}")


def check_shape(graph: Any) -> None:
    if not isinstance(graph, dict) or not graph or not all(isinstance(n, dict) for n in graph.values()):
        raise GraphMismatch("prompt: expected an API-format graph, an object of node id -> {class_type, inputs}")


def closest(spec: WorkflowSpec, graph: dict[str, Any]) -> tuple[Mapping_, list[str]]:
    """The pairing of the workflow's nodes with the graph's that differs least, and its differences (none: a match)."""
    complete, partial = node_mappings(spec.graph, graph)
    candidates = complete or [partial, _same_ids(spec.graph, graph)]
    scored = [(m, differences(spec, graph, m)) for m in candidates]
    return min(scored, key=lambda s: len(s[1]))


def _same_ids(served: dict[str, Any], graph: dict[str, Any]) -> Mapping_:
    return {i: i for i in served if i in graph and _class(graph[i]) == served[i]["class_type"]}


def _inputs(node: Any) -> dict[str, Any]:
    given = node.get("inputs") if isinstance(node, dict) else None
    return given if isinstance(given, dict) else {}


def _sinks(graph: dict[str, Any]) -> list[str]:
    read = {str(v[0]) for node in graph.values() for v in _inputs(node).values() if is_link(v)}
    return [i for i in sorted_ids(graph) if i not in read]


def _pair(served: dict[str, Any], graph: dict[str, Any], mapping: Mapping_, start: tuple[str, str]) -> Mapping_ | None:
    """`mapping` with served node start[0] paired to the graph's start[1] and every pair its links force; None on a conflict."""
    pairs, used = dict(mapping), set(mapping.values())
    stack = [start]
    while stack:
        mine, theirs = stack.pop()
        if mine in pairs or theirs in used:
            if pairs.get(mine) != theirs:
                return None
            continue
        if mine not in served or theirs not in graph or _class(graph[theirs]) != served[mine]["class_type"]:
            return None
        pairs[mine] = theirs
        used.add(theirs)
        their_inputs = _inputs(graph[theirs])
        for name, value in _inputs(served[mine]).items():
            if is_link(value):
                other: Any = their_inputs.get(name)
                if not is_link(other) or other[1] != value[1]:
                    return None
                stack.append((str(value[0]), str(other[0])))
        if any(is_link(v) and not is_link(_inputs(served[mine]).get(k)) for k, v in their_inputs.items()):
            return None
    return pairs


def node_mappings(served: dict[str, Any], graph: dict[str, Any]) -> tuple[list[Mapping_], Mapping_]:
    """Every pairing (up to MAX_MATCHES) under which `graph` has the workflow's nodes and links, and the largest
    partial pairing seen (for the message when there is none). Same ids are tried first."""
    sinks = _sinks(served)
    order = sinks + [i for i in sorted_ids(served) if i not in set(sinks)]
    complete: list[Mapping_] = []
    best: Mapping_ = {}
    steps = 0

    def search(mapping: Mapping_) -> Iterator[Mapping_]:
        nonlocal steps, best
        if len(mapping) > len(best):
            best = mapping
        mine = next((i for i in order if i not in mapping), None)
        if mine is None:
            if len(mapping) == len(graph):
                yield mapping
            return
        used = set(mapping.values())
        options = [i for i in sorted_ids(graph) if i not in used and _class(graph[i]) == served[mine]["class_type"]]
        options.sort(key=lambda i: i != mine)  # the same id first
        for theirs in options:
            steps += 1
            if steps > SEARCH_STEPS:
                return
            extended = _pair(served, graph, mapping, (mine, theirs))
            if extended is not None:
                yield from search(extended)

    for found in search({}):
        complete.append(found)
        if len(complete) >= MAX_MATCHES:
            break
    return complete, _complete_greedily(served, graph, best, order)


def _complete_greedily(served: dict[str, Any], graph: dict[str, Any], mapping: Mapping_, order: list[str]) -> Mapping_:
    """A partial pairing extended past the nodes the search could not pair (for a message that names the real differences)."""
    for mine in order:
        if mine in mapping:
            continue
        used = set(mapping.values())
        for theirs in (i for i in sorted_ids(graph) if i not in used and _class(graph[i]) == served[mine]["class_type"]):
            extended = _pair(served, graph, mapping, (mine, theirs))
            if extended is not None:
                mapping = extended
                break
    return mapping


def differences(spec: WorkflowSpec, graph: dict[str, Any], mapping: Mapping_ | None = None) -> list[str]:
    """Every way `graph` differs from the workflow under a pairing of nodes (default: same ids), first difference first."""
    served = spec.graph
    pairs = _same_ids(served, graph) if mapping is None else mapping
    paired = set(pairs.values())
    fields = {(p.node_id, p.input_name) for p in spec.params}
    cosmetic = {o.node_id for o in spec.outputs}
    diffs = [f"node '{i}' ({_class(graph[i])}) is not in the workflow" for i in sorted_ids(graph) if i not in paired]
    missing = [i for i in sorted_ids(served) if pairs.get(i) is None]
    for node_id in missing:  # before input differences: the links into a missing node differ too, as a consequence
        clash = graph.get(node_id)
        what = f", the graph's is {_class(clash)}" if clash is not None else ""
        diffs.append(f"node '{node_id}' ({served[node_id]['class_type']}) is missing{what}")
    for node_id in sorted_ids(served):
        node = served[node_id]
        theirs = pairs.get(node_id)
        if theirs is None:
            continue
        skip = fields | {(node_id, k) for k in COSMETIC_INPUTS if node_id in cosmetic}
        diffs += _input_differences(node_id, node, theirs, _inputs(graph[theirs]), skip, pairs)
    return diffs


def _input_differences(
    node_id: str, node: dict[str, Any], theirs_id: str, inputs: dict[str, Any], skip: set[tuple[str, str]], pairs: Mapping_
) -> list[str]:
    where = f"node '{theirs_id}' ({node['class_type']})" + (f" (the workflow's '{node_id}')" if theirs_id != node_id else "")
    diffs = [f"{where} input '{k}' is not in the workflow" for k in sorted(inputs) if k not in node.get("inputs", {})]
    for name, value in node.get("inputs", {}).items():
        if name not in inputs:
            continue  # an input left out keeps the workflow's value
        theirs = inputs[name]
        if is_link(value) or is_link(theirs):
            expected = [pairs.get(str(value[0])), value[1]] if is_link(value) else None
            if not (is_link(theirs) and [str(theirs[0]), theirs[1]] == expected):
                diffs.append(f"{where} input '{name}' is linked differently ({_show(theirs)}; the workflow's: {_show(value)})")
        elif theirs != value and (node_id, name) not in skip:
            diffs.append(f"{where} input '{name}' is {_show(theirs)}, the workflow's is {_show(value)}, and it is not a request field")
    return diffs


def field_values(
    spec: WorkflowSpec, graph: dict[str, Any], resolve_file: ResolveFile | None, mapping: Mapping_ | None = None
) -> dict[str, Any]:
    """The workflow's request fields as the matched graph sets them (inputs it leaves out keep the fields' defaults)."""
    values: dict[str, Any] = {}
    for param in spec.params:
        theirs = param.node_id if mapping is None else mapping.get(param.node_id, param.node_id)
        inputs = _inputs(graph.get(theirs))
        if param.input_name not in inputs:
            continue
        values[param.name] = _field_value(param, theirs, inputs[param.input_name], resolve_file)
    return values


def _field_value(param: Param, node_id: str, literal: Any, resolve_file: ResolveFile | None) -> Any:
    if param.kind in UPLOAD_KINDS:
        if resolve_file is None:
            raise GraphMismatch(f"prompt: node '{node_id}' input '{param.input_name}' names a file, and files are not taken here")
        return resolve_file(param.kind, literal)
    return literal


def _class(node: Any) -> str:
    return str(node.get("class_type", "?")) if isinstance(node, dict) else "?"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
