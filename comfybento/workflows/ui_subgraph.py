"""Subgraphs in UI-format workflows (`definitions.subgraphs`), flattened into one graph.

A subgraph instance is a node whose `type` is a subgraph id. Its inner nodes
replace it, with ids `<instance id>:<inner id>` (nested: `a:b:c`), as ComfyUI's
front-end numbers them when it queues a workflow. Inner links from the
subgraph's input node take the instance's outer link, or, where the input is a
promoted widget, the instance's widget value; outer links from the instance's
outputs start at the inner node that feeds the subgraph's output node. A muted
instance mutes everything inside; a bypassed one is left as a bypassed node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfybento.errors import WorkflowError
from comfybento.workflows.ui_graph import MODE_BYPASS, MODE_NEVER, UIGraph, UILink, UINode, input_name, read_graph

MAX_DEPTH = 16
INPUT_NODE_ID = -10  # the ids ComfyUI gives a subgraph's input and output nodes
OUTPUT_NODE_ID = -20


def flatten(data: Mapping[str, Any], where: str) -> UIGraph:
    """The workflow's top-level graph with every subgraph instance replaced by its inner nodes."""
    definitions = data.get("definitions") if isinstance(data.get("definitions"), dict) else {}
    subgraphs = {str(s.get("id")): s for s in (definitions or {}).get("subgraphs") or [] if isinstance(s, dict)}
    graph = read_graph(data.get("nodes"), data.get("links"), where)
    while True:
        # A bypassed instance stays as one bypassed node: its consumers take its inputs, nothing inside runs.
        instance = next((n for n in graph.nodes.values() if n.type in subgraphs and n.mode != MODE_BYPASS), None)
        if instance is None:
            return graph
        if instance.id.count(":") >= MAX_DEPTH:
            raise WorkflowError(f"{instance.label}: subgraphs nest deeper than {MAX_DEPTH} levels (a subgraph that contains itself?)")
        inline(graph, instance, subgraphs[instance.type], where)


def inline(graph: UIGraph, instance: UINode, subgraph: Mapping[str, Any], where: str) -> None:
    name = subgraph.get("name") or instance.type
    prefix = f"{instance.id}:"
    inner = read_graph(subgraph.get("nodes") or [], subgraph.get("links") or [], f"{where} subgraph '{name}'", prefix)
    in_id = f"{prefix}{(subgraph.get('inputNode') or {}).get('id', INPUT_NODE_ID)}"
    out_id = f"{prefix}{(subgraph.get('outputNode') or {}).get('id', OUTPUT_NODE_ID)}"
    if instance.mode == MODE_NEVER:
        for node in inner.nodes.values():
            node.mode = MODE_NEVER
    sub_inputs = [s for s in subgraph.get("inputs") or [] if isinstance(s, dict)]
    promoted = promoted_values(instance, sub_inputs, inner, in_id)
    for key, link in list(inner.links.items()):
        if link.origin_id == in_id:
            connect_input(graph, inner, key, link, outer_input(instance, sub_inputs, link.origin_slot), promoted)
    outputs = {link.target_slot: link for link in inner.links.values() if link.target_id == out_id}
    for key, link in list(graph.links.items()):
        if link.origin_id != instance.id:
            continue
        source = outputs.get(link.origin_slot)
        if source is None or source.origin_id == in_id:
            drop_link(graph, key)  # an output nothing inside feeds (or a pass-through input: not supported)
        else:
            link.origin_id, link.origin_slot = source.origin_id, source.origin_slot
    del graph.nodes[instance.id]
    graph.nodes.update(inner.nodes)
    graph.links.update({k: v for k, v in inner.links.items() if v.target_id != out_id and v.origin_id != in_id})


def outer_input(instance: UINode, sub_inputs: list[dict[str, Any]], slot: int) -> dict[str, Any] | None:
    """The instance's input slot for the subgraph's input `slot` (matched by position, else by name)."""
    if slot >= len(sub_inputs):
        raise WorkflowError(f"{instance.label}: an inner link uses subgraph input {slot}, which the subgraph does not declare")
    if len(instance.inputs) == len(sub_inputs):
        return instance.inputs[slot]
    wanted = sub_inputs[slot].get("name")
    return next((i for i in instance.inputs if i.get("name") == wanted), None)


def promoted_values(instance: UINode, sub_inputs: list[dict[str, Any]], inner: UIGraph, in_id: str) -> dict[int, Any]:
    """{subgraph input index: value} for inputs shown as widgets on the instance node."""
    widget_slots = []
    for index in range(len(sub_inputs)):
        targets = [link for link in inner.links.values() if link.origin_id == in_id and link.origin_slot == index]
        if any(_target_slot(inner, link).get("widget") for link in targets):
            widget_slots.append(index)
    values = instance.widgets_values
    if isinstance(values, dict):
        return {i: values[sub_inputs[i].get("name")] for i in widget_slots if sub_inputs[i].get("name") in values}
    if isinstance(values, list) and len(values) == len(widget_slots):
        return dict(zip(widget_slots, values, strict=True))
    return {}  # no usable widget values: the inner widgets keep their own values


def _target_slot(graph: UIGraph, link: UILink) -> dict[str, Any]:
    node = graph.nodes.get(link.target_id)
    if node is None or link.target_slot >= len(node.inputs):
        return {}
    return node.inputs[link.target_slot]


def connect_input(graph: UIGraph, inner: UIGraph, key: str, link: UILink, outer: dict[str, Any] | None, promoted: dict[int, Any]) -> None:
    """Point an inner link from the subgraph's input node at what feeds the instance, or set the widget value."""
    outer_key = None if outer is None else outer.get("link")
    if outer_key is not None and str(outer_key) in graph.links:
        source = graph.links[str(outer_key)]
        link.origin_id, link.origin_slot = source.origin_id, source.origin_slot
        graph.links[key] = link
        return
    target = _target_slot(inner, link)
    if target:
        target["link"] = None
        if link.origin_slot in promoted:
            inner.nodes[link.target_id].overrides[input_name(target)] = promoted[link.origin_slot]


def drop_link(graph: UIGraph, key: str) -> None:
    link = graph.links.pop(key)
    node = graph.nodes.get(link.target_id)
    if node is not None and link.target_slot < len(node.inputs) and str(node.inputs[link.target_slot].get("link")) == key:
        node.inputs[link.target_slot]["link"] = None
