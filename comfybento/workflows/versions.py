"""Versions of one workflow served side by side, and the alias that picks one of them per request.

    workflows/txt2img/v1.json      POST /txt2img/v1   (each version its own typed route; v1.yaml its sidecar)
    workflows/txt2img/v2.json      POST /txt2img/v2
    workflows/txt2img/versions.yaml
        default: v1                # what POST /txt2img (the alias) runs; its schema is this version's
        weights: {v1: 90, v2: 10}  # optional: a weighted random choice per request instead (a version left out: 0)

The catalog (workflows/catalog.py) loads each version as its own workflow, `txt2img_v1`. An `Alias` holds the routing
of one folder: versions.yaml is read at startup (a bad one fails it, naming the file) and read again when its
modification time changes, checked at most once per RECHECK_S on the request path, so a new default or new weights
need no restart. A request already routed keeps its version; a bad file on reload keeps the old routing, logged.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from comfybento import lifecycle
from comfybento.errors import WorkflowError
from comfybento.workflows.catalog import VERSIONS_FILE, WorkflowSpec

log = logging.getLogger(__name__)
RECHECK_S = 1.0  # at most this often a request looks at versions.yaml's modification time
TOP_KEYS = {"default", "weights"}
ROUTE_WORDS = {"stream", "png"}  # /<name>/stream and /<name>/png are the alias's own


@dataclass(frozen=True)
class Routing:
    """Which version a request to the alias runs: by `weights` when given (a weighted random choice), else `default`."""

    default: str
    weights: dict[str, int] = field(default_factory=dict)

    def pick(self, rng: random.Random | None = None) -> str:
        if not self.weights:
            return self.default
        names = list(self.weights)
        return (rng or random).choices(names, weights=[self.weights[n] for n in names])[0]


def parse_routing(path: Path, versions: list[str]) -> Routing:
    """versions.yaml as a Routing, or a WorkflowError naming the file and what is wrong with it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise WorkflowError(f"{path}: cannot be read as YAML ({exc})") from None
    if not isinstance(data, dict) or "default" not in data:
        raise WorkflowError(f"{path}: expected a mapping with `default: <version>` (and optional `weights:`); versions: {versions}")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise WorkflowError(f"{path}: unknown keys {unknown}; known: {sorted(TOP_KEYS)}")
    default = str(data["default"])
    if default not in versions:
        raise WorkflowError(f"{path}: default: {default!r} is not a version of this workflow; its versions: {versions}")
    raw = data.get("weights") or {}
    if not isinstance(raw, dict):
        raise WorkflowError(f"{path}: weights must be a mapping of versions to whole numbers, e.g. {{v1: 90, v2: 10}}")
    weights: dict[str, int] = {}
    for name, weight in raw.items():
        if str(name) not in versions:
            raise WorkflowError(f"{path}: weights: {name!r} is not a version of this workflow; its versions: {versions}")
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise WorkflowError(f"{path}: weights.{name} must be a whole number, 0 or more (got {weight!r})")
        weights[str(name)] = weight
    if weights and not any(weights.values()):
        raise WorkflowError(f"{path}: weights are all 0; give at least one version a weight above 0, or leave weights out")
    return Routing(default=default, weights={k: v for k, v in weights.items() if v > 0})


class Alias:
    """POST /<name>: the versions of one workflow and the routing between them, kept up to date with versions.yaml."""

    def __init__(self, name: str, path: Path, versions: Mapping[str, WorkflowSpec],
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.name, self.path, self.versions = name, path, dict(versions)
        self._clock, self._rng = clock, rng or random.Random()
        self._lock = threading.Lock()
        self._mtime = _mtime(path)
        self.routing = parse_routing(path, sorted(self.versions))  # at startup: a bad file stops it
        self._checked_at = clock()
        # The schema of /<name>: its default version's at startup (the routes are declared once).
        self.schema = self.versions[self.routing.default]
        self._check_routes()

    def pick(self) -> WorkflowSpec:
        """The version this request runs (versions.yaml looked at again if RECHECK_S has passed)."""
        return self.versions[self.current().pick(self._rng)]

    def current(self) -> Routing:
        now = self._clock()
        if now - self._checked_at < RECHECK_S:
            return self.routing
        with self._lock:
            if now - self._checked_at >= RECHECK_S:
                self._checked_at = now
                self._reload()
        return self.routing

    def _reload(self) -> None:
        mtime = _mtime(self.path)
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            routing = parse_routing(self.path, sorted(self.versions))
        except WorkflowError as exc:
            log.error("versions of %s not changed: %s", self.name, exc)
            return
        if routing != self.routing:
            log.info("versions of %s: default %s, weights %s (was default %s, weights %s)", self.name, routing.default,
                     routing.weights or "none", self.routing.default, self.routing.weights or "none")
        self.routing = routing

    def _check_routes(self) -> None:
        """A version named like one of the alias's own routes (/<name>/stream, /png, /<output>) cannot be served."""
        taken = ROUTE_WORDS | {o.name for o in self.schema.outputs}
        clash = sorted(set(self.versions) & taken)
        if clash:
            raise WorkflowError(f"{self.path.parent}: version(s) {clash} would share a path with /{self.name}/<route> "
                                f"({sorted(taken)}); rename the version files")


def _mtime(path: Path) -> tuple[int, int] | None:
    """When versions.yaml last changed (and its size, for a change within the clock's resolution); None if gone."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


def load_aliases(workflows_dir: Path, catalog: Mapping[str, WorkflowSpec]) -> dict[str, Alias]:
    """One Alias per folder of versions in the catalog, by its name (a bad versions.yaml is a WorkflowError)."""
    families: dict[str, dict[str, WorkflowSpec]] = {}
    for spec in catalog.values():
        if spec.family is not None and spec.version is not None:
            families.setdefault(spec.family, {})[spec.version] = spec
    aliases = {name: Alias(name, workflows_dir / name / VERSIONS_FILE, versions) for name, versions in sorted(families.items())}
    for name, alias in aliases.items():  # said once, by the arbiter, like the catalog's lines
        log.log(logging.DEBUG if lifecycle.in_worker() else logging.INFO, "workflow %s: POST /%s runs %s, weights %s; versions %s",
                name, name, alias.routing.default, alias.routing.weights or "none", ", ".join(sorted(alias.versions)))
    return aliases


def resolve(catalog: Mapping[str, WorkflowSpec], aliases: Mapping[str, Alias], name: str) -> WorkflowSpec | None:
    """The workflow a client names: a catalog name (`txt2img_v1`), a version (`txt2img/v1`) or an alias (`txt2img`,
    picked by its routing now); None if none."""
    if name in aliases:
        return aliases[name].pick()
    family, _, version = name.partition("/")
    alias = aliases.get(family)
    if version and alias is not None:
        return alias.versions.get(version)
    return catalog.get(name)
