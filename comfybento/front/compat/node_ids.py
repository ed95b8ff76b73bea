"""Node ids as the caller's graph names them: the one place results are mapped back from the served workflow's ids.

A graph submitted to ComfyUI's /prompt or to Comfy API v2 may match a served workflow under other node ids (a
client that built or renumbered it: `n3x ... n9x`). The job runs the served workflow, whose events and outputs name
its own ids; every event, history entry, output reference and error the compatibility APIs send names the
caller's instead. The pairing (workflows/matching.py, GraphRun.node_ids) is kept beside the job's outputs in the
job storage (`<job id>/node-ids.json`: it expires with the job and every replica reads it), written only when it
renames something.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from comfybento.errors import NotFound
from comfybento.outputs.storage import Storage

KEY = "{job_id}/node-ids.json"


@dataclass(frozen=True)
class NodeIds:
    """The served workflow's node id -> the caller's; ids it does not rename are the caller's too."""

    renamed: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, node_id: str) -> str:
        return self.renamed.get(node_id, node_id)

    def maybe(self, node_id: str | None) -> str | None:
        return None if node_id is None else self(str(node_id))


def save(storage: Storage, job_id: str, renamed: Mapping[str, str]) -> None:
    if renamed:
        storage.put(KEY.format(job_id=job_id), json.dumps(dict(renamed)).encode(), "application/json")


def load(storage: Storage, job_id: str) -> NodeIds:
    """The job's pairing (none stored: the ids are the caller's already)."""
    try:
        data = json.loads(storage.get(KEY.format(job_id=job_id)))
    except (NotFound, ValueError):
        return NodeIds()
    return NodeIds({str(k): str(v) for k, v in data.items()}) if isinstance(data, dict) else NodeIds()
