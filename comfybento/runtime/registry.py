"""ComfyUI's node registry as JSON: the node-definition snapshot the front and arbiter read.

`object_info()` describes every registered node class as ComfyUI's own
`/object_info` route does (inputs with types, bounds and choices; outputs;
whether it is an output node). `comfybento.workflows.node_info` writes it to a
file in a child process and parses it back into `NodeDef`s, so processes that
must not import torch still type every workflow exactly as the engine does.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    """Tuples to lists, anything exotic (types, callables) to its string form."""
    return json.loads(json.dumps(value, default=str))


def class_info(cls: Any, display_name: str = "") -> dict[str, Any]:
    spec = cls.INPUT_TYPES()
    inputs: dict[str, dict[str, Any]] = {}
    for section in ("required", "optional"):
        table = spec.get(section) or {}
        names = list(dict.keys(table)) if isinstance(table, dict) else []
        inputs[section] = {name: _jsonable(dict.__getitem__(table, name)) for name in names}
    return {
        "input": inputs,
        "output": [str(t) for t in getattr(cls, "RETURN_TYPES", ()) or ()],
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "description": str(getattr(cls, "DESCRIPTION", "") or ""),
        "display_name": display_name or str(getattr(cls, "DISPLAY_NAME", "") or ""),
    }


def object_info() -> dict[str, dict[str, Any]]:
    """Every registered node class; classes whose INPUT_TYPES fails are skipped and logged."""
    import nodes

    info = {}
    for class_type, cls in list(nodes.NODE_CLASS_MAPPINGS.items()):
        try:
            info[class_type] = class_info(cls, nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, ""))
        except Exception as exc:
            log.warning("node %s: INPUT_TYPES failed (%s); workflows using it will not load", class_type, exc)
    return info
