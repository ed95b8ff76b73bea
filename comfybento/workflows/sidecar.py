"""Optional per-workflow sidecar: `workflows/<name>.yaml` next to `<name>.json`.

    max_batch_size: 8        # the largest batch the scheduler forms for this workflow
    max_latency_ms: 2000     # (used only with COMFYBENTO_ENGINE_ENTRY=bentoml)
    output_format: webp      # default image format: png (default), webp or jpeg
    output_quality: 90       # WebP/JPEG quality, 1-100
    png_compress_level: 4    # PNG zlib level, 0-9
    limits:                  # server-side limits for this workflow (see workflows/limits.py)
      max_steps: 60
      max_image_pixels: 4194304
    params:                  # by node id and input name
      - {node: "6", input: text, name: positive}          # rename
      - {node: "3", input: denoise, hide: true}           # hide (graph value is used)
      - {node: "4", input: ckpt_name, name: checkpoint}   # add an input not inferred; a model input
                                                          # (workflows/catalog.py LOADER_FOLDERS) is an enum of
                                                          # the models.lock entries of its folder, nothing else
      - {node: "10", input: lora_name, urls: true}        # ... or also a model by URL, {url, sha256}, from
                                                          # COMFYBENTO_MODEL_URL_HOSTS (or `urls: [hosts]`)
      - {node: "3", input: steps, max: 50, default: 12, description: "..."}
    presets:                 # named sets of request fields a request or job picks with `preset`
      fast: {steps: 4, cfg: 5.0}                          # (explicit fields override them; checked against
      quality: {steps: 30, cfg: 7.5, width: 768}          #  the fields' bounds and the limits at startup)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from comfybento.errors import WorkflowError
from comfybento.outputs.encoding import FORMATS, Encoding
from comfybento.workflows.graph import Graph, NodeDefs, is_link
from comfybento.workflows.params import Param, identifier, param_from_input

ENTRY_KEYS = {"node", "input", "name", "hide", "description", "default", "min", "max", "urls"}


TOP_KEYS = {"params", "max_batch_size", "max_latency_ms", "output_format", "output_quality", "png_compress_level", "limits",
            "presets"}
PRESET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Sidecar:
    max_batch_size: int | None = None
    max_latency_ms: int | None = None
    encoding: Encoding = field(default_factory=Encoding)
    entries: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    limits: dict[str, Any] = field(default_factory=dict)
    # name -> request field values (checked against the workflow's fields in catalog.py, once they are known)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_sidecar(path: Path) -> Sidecar:
    if not path.exists():
        return Sidecar()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{path}: expected a mapping with {sorted(TOP_KEYS)}")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise WorkflowError(f"{path}: unknown keys {sorted(unknown)}")
    entries = data.get("params") or []
    if not isinstance(entries, list):
        raise WorkflowError(f"{path}: 'params' must be a list")
    for index, entry in enumerate(entries):
        _check_entry(path, index, entry)
    limits = data.get("limits") or {}
    if not isinstance(limits, dict):
        raise WorkflowError(f"{path}: 'limits' must be a mapping, e.g. {{max_steps: 60}}")
    return Sidecar(
        limits=limits,
        max_batch_size=_positive(path, data, "max_batch_size"),
        max_latency_ms=_positive(path, data, "max_latency_ms"),
        encoding=_encoding(path, data),
        entries=tuple(entries),
        presets=_presets(path, data.get("presets")),
    )


def _presets(path: Path, raw: Any) -> dict[str, dict[str, Any]]:
    """The sidecar's `presets:`: names (lowercase identifiers) -> a mapping of request fields to values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WorkflowError(f"{path}: 'presets' must be a mapping of names to fields, e.g. {{fast: {{steps: 4}}}}")
    presets = {}
    for name, values in raw.items():
        if not isinstance(name, str) or not PRESET_NAME.match(name):
            raise WorkflowError(f"{path}: preset name {name!r} must be lowercase letters, digits, '_' or '-', starting with a letter")
        if not isinstance(values, dict) or not values:
            raise WorkflowError(f"{path}: presets.{name} must be a non-empty mapping of request fields to values, e.g. {{steps: 4}}")
        presets[name] = {str(k): v for k, v in values.items()}
    return presets


def _encoding(path: Path, data: dict[str, Any]) -> Encoding:
    fmt = data.get("output_format", "png")
    if fmt not in FORMATS:
        raise WorkflowError(f"{path}: 'output_format' must be one of {sorted(FORMATS)}, got {fmt!r}")
    limits = {"output_quality": (1, 100, 90), "png_compress_level": (0, 9, 4)}
    values = {}
    for key, (lo, hi, default) in limits.items():
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise WorkflowError(f"{path}: '{key}' must be an integer from {lo} to {hi}, got {value!r}")
        values[key] = value
    return Encoding(format=fmt, quality=values["output_quality"], png_compress_level=values["png_compress_level"])


def _positive(path: Path, data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WorkflowError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return value


def _check_entry(path: Path, index: int, entry: Any) -> None:
    if not isinstance(entry, dict) or "node" not in entry or "input" not in entry:
        raise WorkflowError(f"{path}: params[{index}] needs 'node' and 'input'")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise WorkflowError(f"{path}: params[{index}] has unknown keys {sorted(unknown)}")
    if "name" in entry and not str(entry["name"]).isidentifier():
        raise WorkflowError(f"{path}: params[{index}] name {entry['name']!r} is not a valid identifier")
    urls = entry.get("urls", False)
    if not (isinstance(urls, bool) or (isinstance(urls, list) and urls and all(isinstance(h, str) and h for h in urls))):
        raise WorkflowError(f"{path}: params[{index}] urls must be true, false or a list of hosts "
                            f"(e.g. [huggingface.co, '*.hf.co']), got {urls!r}")


def apply_sidecar(where: str, sidecar: Sidecar, graph: Graph, node_defs: NodeDefs, params: list[Param]) -> list[Param]:
    """Rename, hide, override or add parameters as the sidecar says."""
    by_key = {(p.node_id, p.input_name): p for p in params}
    order = [(p.node_id, p.input_name) for p in params]
    for index, entry in enumerate(sidecar.entries):
        key = (str(entry["node"]), str(entry["input"]))
        param = by_key.get(key) or _new_param(where, index, key, graph, node_defs)
        if key not in by_key:
            order.append(key)
        if entry.get("hide"):
            by_key.pop(key, None)
            continue
        by_key[key] = _override(param, entry)
    result = [by_key[k] for k in order if k in by_key]
    names = [p.name for p in result]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise WorkflowError(f"{where}: sidecar leaves duplicate parameter names {sorted(duplicates)}")
    return result


def _new_param(where: str, index: int, key: tuple[str, str], graph: Graph, node_defs: NodeDefs) -> Param:
    node_id, input_name = key
    node = graph.get(node_id)
    if node is None:
        raise WorkflowError(f"{where}: sidecar params[{index}] names node {node_id}, which is not in the graph")
    input_def = node_defs[node["class_type"]].inputs.get(input_name)
    if input_def is None:
        raise WorkflowError(
            f"{where}: sidecar params[{index}]: node {node_id} ({node['class_type']}) has no input '{input_name}'"
        )
    value = node["inputs"].get(input_name)
    if is_link(value):
        raise WorkflowError(
            f"{where}: sidecar params[{index}]: input '{input_name}' of node {node_id} is a link, not a value"
        )
    return param_from_input(identifier(input_name), node_id, node["class_type"], input_def, value)


def _override(param: Param, entry: dict[str, Any]) -> Param:
    changes: dict[str, Any] = {}
    for src, dst in (("name", "name"), ("description", "description"), ("default", "default"), ("min", "minimum"), ("max", "maximum")):
        if src in entry:
            changes[dst] = entry[src]
    if "urls" in entry:
        changes["urls"] = entry["urls"] if isinstance(entry["urls"], bool) else tuple(entry["urls"])
    return replace(param, **changes)
