"""ComfyUI's node registry as plain `NodeDef`s, for checks and parameter inference."""

from __future__ import annotations

import logging
from typing import Any

from comfybento.workflows.graph import InputDef, NodeDef

log = logging.getLogger(__name__)


def _input_def(name: str, spec: Any, required: bool) -> InputDef:
    if not isinstance(spec, (tuple, list)) or not spec:
        return InputDef(name=name, type=str(spec), required=required)
    typ, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(typ, (list, tuple)):
        return InputDef(name=name, type="COMBO", required=required, options=options, choices=tuple(map(str, typ)))
    if typ == "COMBO":
        choices = tuple(map(str, options.get("options", ())))
        return InputDef(name=name, type="COMBO", required=required, options=options, choices=choices)
    return InputDef(name=name, type=str(typ), required=required, options=options)


def node_def(class_type: str, cls: Any) -> NodeDef:
    spec = cls.INPUT_TYPES()
    inputs: dict[str, InputDef] = {}
    for section, required in (("required", True), ("optional", False)):
        table = spec.get(section) or {}
        for name in list(dict.keys(table)) if isinstance(table, dict) else []:
            inputs[name] = _input_def(name, dict.__getitem__(table, name), required)
    return NodeDef(
        class_type=class_type,
        inputs=inputs,
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        return_types=tuple(str(t) for t in getattr(cls, "RETURN_TYPES", ()) or ()),
        description=str(getattr(cls, "DESCRIPTION", "") or ""),
    )


def node_defs() -> dict[str, NodeDef]:
    """Every registered node class; classes whose INPUT_TYPES fails are skipped and logged."""
    import nodes

    defs = {}
    for class_type, cls in list(nodes.NODE_CLASS_MAPPINGS.items()):
        try:
            defs[class_type] = node_def(class_type, cls)
        except Exception as exc:
            log.warning("node %s: INPUT_TYPES failed (%s); workflows using it will not load", class_type, exc)
    return defs
