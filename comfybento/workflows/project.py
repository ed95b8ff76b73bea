"""Load the project once per process: settings, models.lock and typed workflows. No ComfyUI import.

Every process (arbiter, front, engine) declares the same endpoints from the
same catalog. Node definitions come from the snapshot in
`workflows/node_info.py`, so only the engine ever imports torch and ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from comfybento.config import Settings, get_settings
from comfybento.models.lock import ModelLock, parse_lock
from comfybento.workflows.catalog import WorkflowSpec, load_catalog
from comfybento.workflows.node_info import load_node_defs
from comfybento.workflows.versions import Alias, load_aliases


@dataclass(frozen=True)
class Project:
    settings: Settings
    lock: ModelLock
    catalog: dict[str, WorkflowSpec]
    # POST /<name> of each folder of versions (workflows/versions.py); its versions are in the catalog
    aliases: dict[str, Alias] = field(default_factory=dict)


def load_project(settings: Settings) -> Project:
    """Everything a service needs to declare its endpoints; fails fast with a named problem."""
    lock = parse_lock(settings.models_lock)
    catalog = load_catalog(settings, load_node_defs(settings), lock)
    return Project(settings=settings, lock=lock, catalog=catalog, aliases=load_aliases(settings.workflows_dir, catalog))


@lru_cache(maxsize=1)
def get_project() -> Project:
    return load_project(get_settings())
