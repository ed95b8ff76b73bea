"""A comfybento job as the spec's Job object: status, progress snapshot, outputs (as assets), error and follow-up links."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from comfybento.front.compat import node_ids
from comfybento.front.compat.comfy_v2.assets import iso
from comfybento.front.compat.comfy_v2.errors import V2Error
from comfybento.front.compat.node_ids import NodeIds
from comfybento.front.jobs.records import TERMINAL_STATES, ItemRecord, JobRecord, now
from comfybento.front.jobs.service import JobService
from comfybento.front.ownership import Caller

API = "/api/v2"
# comfybento's job states -> the spec's JobStatus.
STATES = {"queued": "queued", "running": "running", "succeeded": "succeeded", "failed": "failed", "cancelled": "canceled"}
# comfybento's output kinds -> the spec's OutputType.
KINDS = {"image": "image", "animation": "image", "video": "video", "audio": "audio", "text": "text", "file": "file"}
OUTPUT_ID = re.compile(r"out_([0-9a-f]{32})_(\d{1,6})_(\d{1,4})")
URL_TTL_S = 24 * 3600


@dataclass(frozen=True)
class OutputBlob:
    key: str
    content_type: str
    name: str
    job_id: str


def output_id(job_id: str, index: int, n: int) -> str:
    return f"out_{job_id}_{index}_{n}"


def load_job(service: JobService, job_id: str, caller: Caller) -> JobRecord:
    """The job, if `caller` may see it (front/ownership.py); the same 404 for one that does not exist."""
    job = service.store.get_job(job_id) if re.fullmatch(r"[0-9a-f]{32}", job_id) else None
    if job is None or not caller.can_see(job.owner):
        raise V2Error(404, "not_found", f"job {job_id[:80]!r} does not exist (or expired)")
    return job


ITEMS_READ = 1000  # items read per job view


def job_view(service: JobService, job: JobRecord, origin: str, live: dict[str, Any] | None = None,
             sizes: dict[str, int] | None = None, items: list[ItemRecord] | None = None, ids: NodeIds | None = None) -> dict[str, Any]:
    """The spec's Job, its node ids the submitted graph's. `live` is the latest progress event seen on the stream; `sizes`
    caches output sizes by key; `items`: the job's items when the caller has just read them; `ids`: the job's node ids."""
    items = service.store.get_items(job.id, 0, ITEMS_READ) if items is None else items
    ids = node_ids.load(service.storage, job.id) if ids is None else ids
    status = STATES.get(job.state, "queued")
    started = [i.started_at for i in items if i.started_at]
    results = [i.result or {} for i in items]
    metrics = {"queue_ms": _int(sum(r.get("queue_ms") or 0 for r in results)) if any(r.get("queue_ms") is not None for r in results) else None,
               "execution_ms": _int(sum(r.get("execution_ms") or 0 for r in results)) if any(r.get("execution_ms") is not None for r in results)
               else None}
    retention = service.retention_s if service.retention_s > 0 else 10 * 365 * 24 * 3600
    links = {"self": f"{API}/jobs/{job.id}", "events": f"{API}/jobs/{job.id}/events", "cancel": f"{API}/jobs/{job.id}/cancel"}
    return {
        "id": job.id, "status": status, "created_at": iso(job.created_at),
        "started_at": iso(min(started)) if started else None,
        "completed_at": iso(job.finished_at) if job.finished_at else None,
        "expires_at": iso((job.finished_at or now()) + retention),
        "queue_position": None,
        "progress": progress_snapshot(service, job, items, live, ids),
        "outputs": outputs(service, job, items, origin, sizes if sizes is not None else {}, ids),
        "error": job_error(items, ids) if status == "failed" else None,
        "metrics": metrics, "urls": links, "workflow_name": job.workflow,
    }


def progress_snapshot(service: JobService, job: JobRecord, items: list[ItemRecord], live: dict[str, Any] | None,
                      ids: NodeIds) -> dict[str, Any] | None:
    """Sampler steps of the running item (this replica's live events, else the runner's step counter), items for nodes."""
    spec = service.catalog.get(job.workflow)
    nodes = len(spec.graph) if spec is not None else 0
    done = sum(1 for i in items if i.state in TERMINAL_STATES)
    if job.state in ("succeeded", "failed"):
        return {"value": 1.0, "nodes_done": nodes, "nodes_total": nodes, "current_node": None, "current_node_class": None,
                "step": None, "steps": None, "message": None}
    if job.state != "running":
        return None
    step, steps, node = None, None, None
    if live is not None:
        step, steps, node = live.get("value"), live.get("max"), live.get("node_id")
    else:
        running = next((i for i in items if i.state == "running"), None)
        counter = service.live_progress.get((job.id, running.index), {}) if running is not None else {}
        step, steps = counter.get("step"), counter.get("steps")
    fraction = (done + (step / steps if step is not None and steps else 0.0)) / max(1, job.total)
    node_class = str(spec.graph.get(str(node), {}).get("class_type")) if spec is not None and node is not None and str(node) in spec.graph else None
    return {"value": round(min(1.0, fraction), 4), "nodes_done": 0, "nodes_total": nodes, "current_node": ids.maybe(node),
            "current_node_class": node_class, "step": step, "steps": steps,
            "message": f"{node_class or 'step'} {step}/{steps}" if step is not None and steps else None}


def outputs(service: JobService, job: JobRecord, items: list[ItemRecord], origin: str, sizes: dict[str, int],
            ids: NodeIds) -> list[dict[str, Any]]:
    found = []
    expires = iso(now() + URL_TTL_S)
    for item in items:
        for n, out in enumerate((item.result or {}).get("outputs", []) if item.state == "succeeded" else []):
            key = str(out["key"])
            if key not in sizes:
                sizes[key] = len(service.storage.get(key))
            oid = output_id(job.id, item.index, n)
            found.append({"node_id": ids(str(out["node_id"])), "name": key.rsplit("/", 1)[-1], "type": KINDS.get(str(out.get("kind")), "file"),
                          "content_type": out.get("media_type") or "application/octet-stream", "size_bytes": sizes[key], "id": oid,
                          "hash": None, "url": f"{origin}{API}/assets/{oid}/content", "url_expires_at": expires, "job_id": job.id})
    return found


def job_error(items: list[ItemRecord], ids: NodeIds) -> dict[str, Any]:
    failed = next((i for i in items if i.state == "failed" and i.error), None)
    error = failed.error if failed is not None and failed.error else {}
    return {"code": "node_execution_error" if error.get("node_id") else str(error.get("kind") or "execution_error"),
            "message": str(error.get("message") or "the job failed"), "node_id": ids.maybe(error.get("node_id")),
            "class_type": error.get("class_type"), "traceback": None}


def output_blob(service: JobService, asset_id: str, caller: Caller) -> OutputBlob | None:
    """The stored file behind an output asset id (None: not an output id); 404 when its job or item is gone or not the caller's."""
    match = OUTPUT_ID.fullmatch(asset_id)
    if match is None:
        return None
    job = load_job(service, match.group(1), caller)
    items = service.store.get_items(job.id, int(match.group(2)), 1)
    outs = (items[0].result or {}).get("outputs", []) if items and items[0].state == "succeeded" else []
    n = int(match.group(3))
    if n >= len(outs):
        raise V2Error(404, "not_found", f"asset {asset_id!r} does not exist")
    key = str(outs[n]["key"])
    return OutputBlob(key=key, content_type=outs[n].get("media_type") or "application/octet-stream", name=key.rsplit("/", 1)[-1], job_id=job.id)


def _int(value: float) -> int:
    return round(value)
