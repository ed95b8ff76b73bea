"""Put a request's values into a copy of a workflow graph."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Mapping
from typing import Any

from comfybento.workflows.graph import Graph
from comfybento.workflows.params import Param


def random_seed() -> int:
    """A seed as ComfyUI's own UI draws them: up to 2**53, so it survives JSON in any client."""
    return secrets.randbelow(2**53)


def resolve_seed(params: tuple[Param, ...], values: Mapping[str, Any]) -> int | None:
    """The request's seed, or a fresh random one if the workflow has a seed and it was omitted."""
    for param in params:
        if param.role == "seed":
            value = values.get(param.name)
            return int(value) if value is not None else random_seed()
    return None


def bind(graph: Graph, params: tuple[Param, ...], values: Mapping[str, Any], seed: int | None) -> Graph:
    """A deep copy of the graph with every parameter's value (or default) in place."""
    bound = copy.deepcopy(graph)
    for param in params:
        if param.role == "seed":
            value: Any = seed
        else:
            value = values.get(param.name, param.default)
        if value is None:
            continue
        if param.kind == "float":
            value = float(value)
        bound[param.node_id]["inputs"][param.input_name] = value
    return bound


def shape_key(params: tuple[Param, ...], values: Mapping[str, Any], batchable: frozenset[str]) -> str:
    """Requests with equal keys differ only in the batchable fields (by name) and can share one execution."""
    parts = []
    for param in params:
        if param.name in batchable:
            continue
        value = values.get(param.name, param.default)
        parts.append(f"{param.name}={value!r}")
    return "|".join(parts)

