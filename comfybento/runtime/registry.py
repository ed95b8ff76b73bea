"""ComfyUI's node registry as JSON: the node-definition snapshot the front and arbiter read.

`object_info()` describes every registered node class with ComfyUI's own
`node_info()`, the function behind its server's `/object_info` route (inputs
with every option ComfyUI sends, `input_order`, outputs, names, category,
python_module, deprecated/experimental ...), so the front serves exactly what
ComfyUI would. `comfybento.workflows.node_info` writes it to a file in a child
process and parses it back into `NodeDef`s, so processes that must not import
torch still type every workflow exactly as the engine does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

NodeInfo = Callable[[str], dict[str, Any]]


def _jsonable(value: Any) -> Any:
    """Tuples to lists, anything exotic (types, callables) to its string form."""
    return json.loads(json.dumps(value, default=str))


def class_info(cls: Any, display_name: str = "") -> dict[str, Any]:
    """The fields comfybento types workflows with, for a ComfyUI whose server has no node_info() to borrow."""
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


def comfyui_node_info() -> NodeInfo | None:
    """ComfyUI's own node_info(node_class), from a PromptServer built for the purpose and dropped.

    node_info() is local to PromptServer.__init__ (server.py); the /object_info/{node_class} route's handler holds
    it. The stand-in stays `PromptServer.instance`, and the server's user folder is a temporary one (UserManager
    creates it), so nothing of ComfyUI's tree is written. None (and a warning) where no such function is found.
    """
    import folder_paths
    import server

    stand_in, user_dir = server.PromptServer.instance, folder_paths.get_user_directory()
    loop = asyncio.new_event_loop()
    try:
        with tempfile.TemporaryDirectory(prefix="comfybento-user-") as tmp:
            folder_paths.set_user_directory(tmp)
            real = server.PromptServer(loop)
    except Exception as exc:
        log.warning("ComfyUI's PromptServer could not be built (%s): node definitions carry comfybento's fields only", exc)
        return None
    finally:
        server.PromptServer.instance = stand_in
        folder_paths.set_user_directory(user_dir)
        loop.close()
    for route in real.routes:
        handler = getattr(route, "handler", None)
        if getattr(route, "path", None) == "/object_info/{node_class}" and handler is not None:
            cells = dict(zip(handler.__code__.co_freevars, handler.__closure__ or (), strict=False))
            if "node_info" in cells:
                fn: NodeInfo = cells["node_info"].cell_contents
                return fn
    log.warning("ComfyUI's server has no node_info(): node definitions carry comfybento's fields only")
    return None


def extension_web_dirs() -> dict[str, str]:
    """Each custom node module's web folder (its WEB_DIRECTORY) by module name, as ComfyUI recorded them on loading."""
    import nodes

    return {str(name): str(folder) for name, folder in nodes.EXTENSION_WEB_DIRS.items()}


def object_info() -> dict[str, dict[str, Any]]:
    """Every registered node class as ComfyUI's /object_info sends it; classes whose definition fails are skipped and logged."""
    import folder_paths
    import nodes

    node_info = comfyui_node_info()
    info = {}
    with folder_paths.cache_helper:
        for class_type, cls in list(nodes.NODE_CLASS_MAPPINGS.items()):
            try:
                if node_info is not None:
                    info[class_type] = _jsonable(node_info(class_type))
                else:
                    info[class_type] = class_info(cls, nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, ""))
            except Exception as exc:
                log.warning("node %s: its definition failed (%s); workflows using it will not load", class_type, exc)
    return info
