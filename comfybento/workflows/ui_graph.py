"""The UI-format workflow graph (ComfyUI's `workflow.json`: `nodes` + `links`) as read, before any conversion.

Plain data shared by the subgraph flattening (ui_subgraph.py) and the conversion to the API format
(ui_format.py), which import it; it imports neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfybento.errors import WorkflowError

MODE_NEVER = 2  # "muted"
MODE_BYPASS = 4


def is_ui_format(data: Any) -> bool:
    return isinstance(data, dict) and "nodes" in data and "links" in data


@dataclass
class UILink:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str


@dataclass
class UINode:
    """One node of a flattened UI graph; `inputs`/`outputs` are the UI slot lists."""

    id: str
    type: str
    mode: int
    title: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    widgets_values: Any
    overrides: dict[str, Any] = field(default_factory=dict)  # widget name -> value set from outside (subgraph widgets)

    @property
    def label(self) -> str:
        return f"node {self.id} ({self.type})"


@dataclass
class UIGraph:
    nodes: dict[str, UINode]
    links: dict[str, UILink]  # link key -> link; a node input's "link" holds its key


# ---------------------------------------------------------------- reading


def parse_link(raw: Any, where: str) -> tuple[str, UILink]:
    """A link in either form: `[id, origin, origin_slot, target, target_slot, type]` or an object."""
    if isinstance(raw, (list, tuple)) and len(raw) >= 6:
        key, origin, oslot, target, tslot, typ = raw[:6]
    elif isinstance(raw, dict) and {"id", "origin_id", "origin_slot", "target_id", "target_slot"} <= raw.keys():
        key, origin, oslot, target, tslot, typ = (raw[k] for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"))
    else:
        raise WorkflowError(f"{where}: a link is neither [id, origin, slot, target, slot, type] nor an object: {str(raw)[:80]}")
    return str(key), UILink(str(origin), int(oslot), str(target), int(tslot), str(typ or "*"))


def parse_node(raw: Any, where: str, prefix: str = "") -> UINode:
    if not isinstance(raw, dict) or "id" not in raw or not isinstance(raw.get("type"), str):
        raise WorkflowError(f"{where}: a node has no 'id' or 'type': {str(raw)[:80]}")
    return UINode(
        id=f"{prefix}{raw['id']}",
        type=raw["type"],
        mode=int(raw.get("mode") or 0),
        title=str(raw.get("title") or ""),
        inputs=[dict(i) for i in raw.get("inputs") or [] if isinstance(i, dict)],
        outputs=[dict(o) for o in raw.get("outputs") or [] if isinstance(o, dict)],
        widgets_values=raw.get("widgets_values"),
    )


def read_graph(nodes: Any, links: Any, where: str, prefix: str = "") -> UIGraph:
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise WorkflowError(f"{where}: 'nodes' and 'links' must be lists")
    graph = UIGraph(nodes={}, links={})
    for raw in links:
        if raw is None:
            continue
        key, link = parse_link(raw, where)
        link.origin_id, link.target_id = prefix + link.origin_id, prefix + link.target_id
        graph.links[prefix + key] = link
    for raw in nodes:
        node = parse_node(raw, where, prefix)
        for slot in node.inputs:
            if slot.get("link") is not None:
                slot["link"] = prefix + str(slot["link"])
        graph.nodes[node.id] = node
    return graph


def input_name(slot: Mapping[str, Any]) -> str:
    widget = slot.get("widget")
    if isinstance(widget, dict) and isinstance(widget.get("name"), str):
        return str(widget["name"])
    return str(slot.get("name") or "")
