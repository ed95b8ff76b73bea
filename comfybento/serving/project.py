"""Load the project once per process: ComfyUI bootstrap, node registry, models.lock, workflows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from comfybento.config import Settings, get_settings
from comfybento.models.lock import ModelLock, parse_lock
from comfybento.runtime.bootstrap import ComfyRuntime, bootstrap
from comfybento.runtime.registry import node_defs
from comfybento.workflows.catalog import WorkflowSpec, load_catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Project:
    settings: Settings
    runtime: ComfyRuntime
    lock: ModelLock
    catalog: dict[str, WorkflowSpec]


def load_project(settings: Settings) -> Project:
    """Everything a service needs to declare its endpoints; fails fast with a named problem."""
    runtime = bootstrap(settings)
    lock = parse_lock(settings.models_lock)
    if settings.fetch_models:
        _fetch_once(settings, lock)
    catalog = load_catalog(settings, node_defs(), lock)
    return Project(settings=settings, runtime=runtime, lock=lock, catalog=catalog)


def _fetch_once(settings: Settings, lock: ModelLock) -> None:
    """Fetch missing models; processes starting together take turns on a file lock."""
    import fcntl

    from comfybento.models.fetch import fetch_all

    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with (settings.models_dir / ".fetch.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        fetch_all(lock, settings.models_dir)


@lru_cache(maxsize=1)
def get_project() -> Project:
    return load_project(get_settings())
