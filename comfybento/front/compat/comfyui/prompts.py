"""ComfyUI prompts as comfybento jobs: submit a matched graph, and read a job back as ComfyUI's queue and history entries.

A prompt is a one-item job whose idempotency key starts with `PREFIX` (that is
how /history and /queue tell prompts from other jobs); its submitted graph,
client id and extra data are kept beside its outputs in the job storage
(`<prompt id>/comfyui-prompt.json`), so they expire with the job and are seen
by every replica. A prompt belongs to the API key that submitted it; every function
here sees only the prompts of the `caller` it is given (front/ownership.py).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

from comfybento.errors import ComfyBentoError, InvalidRequest
from comfybento.front.compat import node_ids
from comfybento.front.compat.comfyui import files
from comfybento.front.compat.node_ids import NodeIds
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.records import TERMINAL_STATES, ItemRecord, JobRecord
from comfybento.front.jobs.service import JobService
from comfybento.front.ownership import Caller
from comfybento.workflows.matching import match_graph

PREFIX = "comfyui:"
RECORD = "comfyui-prompt.json"
SCAN_JOBS = 1000  # newest jobs /queue and /history look through
# Output kinds -> the key ComfyUI's nodes put their files under in a node's output.
SECTIONS = {"image": "images", "animation": "images", "video": "images", "audio": "audio", "text": "text", "file": "files"}


@dataclass(frozen=True)
class Submitted:
    prompt_id: str
    number: int
    workflow: str


def submit(service: JobService, body: Any, caller: Caller) -> Submitted:
    """Match body["prompt"] to a served workflow and queue it as a one-item job of `caller` (raises ComfyBentoError naming
    the problem); its file inputs are the caller's uploads, or outputs of prompts it may see.

    With COMFYBENTO_SUBMITTED_GRAPHS=any a graph that matches none is a job of the reserved workflow `_graph`.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object {prompt, client_id, extra_data}")
    graph = body.get("prompt")
    run = match_graph(service.catalog, graph, lambda kind, literal: _resolve(service, literal, caller),
                      allow_unmatched=service.free_graphs is not None)  # COMFYBENTO_SUBMITTED_GRAPHS=any
    req = JobSubmit(workflow=run.workflow, items=[run.values], idempotency_key=PREFIX + uuid.uuid4().hex,
                    priority=1 if body.get("front") else 0)
    job, _ = service.submit(req, owner=caller.name)
    node_ids.save(service.storage, job.id, run.node_ids)  # before the caller has the prompt id: its first event names its ids
    given = body.get("number")
    number = given if isinstance(given, int) else int(job.created_at * 1000)
    extra_data = body.get("extra_data")
    extra = {k: v for k, v in extra_data.items() if k != "api_key_comfy_org"} if isinstance(extra_data, dict) else {}
    record = {"prompt": graph, "number": number, "client_id": body.get("client_id"), "extra_data": extra, "workflow": run.workflow}
    service.storage.put(f"{job.id}/{RECORD}", json.dumps(record).encode(), "application/json")
    return Submitted(job.id, number, run.workflow)


def _resolve(service: JobService, literal: Any, caller: Caller) -> str:
    """A graph's file literal (an uploaded input, or an output as 'name [output]') as the base64 the job item takes."""
    if not isinstance(literal, str):
        raise InvalidRequest(f"prompt: file input {literal!r} must be the name of an uploaded file (POST /upload/image)")
    name, kind = files.split_annotation(literal)
    folder, _, filename = name.rpartition("/")
    try:
        data = files.read(service, filename, folder, kind, caller)
    except ComfyBentoError:
        raise InvalidRequest(f"prompt: file {literal!r} was not uploaded here (POST /upload/image first)") from None
    return base64.b64encode(data).decode()


def is_prompt(job: JobRecord) -> bool:
    return bool(job.idempotency_key and job.idempotency_key.startswith(PREFIX))


def load_record(service: JobService, prompt_id: str) -> dict[str, Any]:
    try:
        record = json.loads(service.storage.get(f"{prompt_id}/{RECORD}"))
        return record if isinstance(record, dict) else {}
    except (ComfyBentoError, ValueError):
        return {}


def recent_jobs(service: JobService, caller: Caller, limit: int = SCAN_JOBS) -> list[JobRecord]:
    """The newest jobs `caller` may see."""
    out: list[JobRecord] = []
    while len(out) < limit and (page := service.list_jobs(min(200, limit - len(out)), len(out), caller)):
        out += page
    return out


def queue_remaining(service: JobService, caller: Caller) -> int:
    return sum(1 for j in recent_jobs(service, caller) if j.state not in TERMINAL_STATES)


def queue_entry(service: JobService, job: JobRecord) -> list[Any]:
    """ComfyUI's [number, prompt_id, prompt, extra_data, outputs_to_execute]; other jobs show their workflow."""
    record = load_record(service, job.id) if is_prompt(job) else {}
    return [record.get("number", int(job.created_at * 1000)), job.id, record.get("prompt") or {},
            record.get("extra_data") or {"workflow": job.workflow}, _output_nodes(service, job, _ids(service, job))]


def queue(service: JobService, caller: Caller) -> dict[str, list[list[Any]]]:
    active = sorted((j for j in recent_jobs(service, caller) if j.state not in TERMINAL_STATES), key=lambda j: j.created_at)
    return {"queue_running": [queue_entry(service, j) for j in active if j.state == "running"],
            "queue_pending": [queue_entry(service, j) for j in active if j.state != "running"]}


def _ids(service: JobService, job: JobRecord) -> NodeIds:
    return node_ids.load(service.storage, job.id) if is_prompt(job) else NodeIds()


def _output_nodes(service: JobService, job: JobRecord, ids: NodeIds) -> list[str]:
    """The prompt's output nodes, under the submitted graph's ids."""
    spec = service.catalog.get(job.workflow)
    return sorted({ids(o.node_id) for o in spec.outputs}) if spec is not None else []


def item_of(service: JobService, prompt_id: str) -> ItemRecord | None:
    items = service.store.get_items(prompt_id, 0, 1)
    return items[0] if items else None


def outputs_by_node(item: ItemRecord | None, ids: NodeIds) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """A finished item's recorded outputs as ComfyUI's node id (the submitted graph's) -> {"images": [{filename, subfolder, type}]}."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for o in ((item.result or {}).get("outputs") or []) if item is not None else []:
        subfolder, _, filename = str(o["key"]).rpartition("/")
        section = SECTIONS.get(str(o.get("kind", "image")), "files")
        out.setdefault(ids(str(o["node_id"])), {}).setdefault(section, []).append(
            {"filename": filename, "subfolder": subfolder, "type": "output"})
    return out


def history_entry(service: JobService, job: JobRecord) -> dict[str, Any] | None:
    """ComfyUI's history entry of a finished prompt (None while it is queued or running)."""
    if job.state not in TERMINAL_STATES:
        return None
    record, ids = load_record(service, job.id), _ids(service, job)
    item = item_of(service, job.id)
    outputs = outputs_by_node(item, ids) if job.state == "succeeded" else {}
    stamp = int((job.finished_at or job.created_at) * 1000)
    start = ["execution_start", {"prompt_id": job.id, "timestamp": int(job.created_at * 1000)}]
    if job.state == "succeeded":
        end = ["execution_success", {"prompt_id": job.id, "timestamp": stamp}]
    elif job.state == "cancelled":
        end = ["execution_interrupted", {"prompt_id": job.id, "node_id": "", "node_type": "", "executed": [], "timestamp": stamp}]
    else:
        end = ["execution_error", error_event(job.id, item, stamp, ids)]
    return {
        "prompt": [record.get("number", int(job.created_at * 1000)), job.id, record.get("prompt") or {},
                   record.get("extra_data") or {}, _output_nodes(service, job, ids)],
        "outputs": outputs,
        "status": {"status_str": "success" if job.state == "succeeded" else "error", "completed": job.state == "succeeded",
                   "messages": [start, end]},
        "meta": {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node} for node in outputs},
    }


def error_event(prompt_id: str, item: ItemRecord | None, stamp: int, ids: NodeIds) -> dict[str, Any]:
    """ComfyUI's execution_error data from a failed item's recorded error (its node under the submitted graph's id)."""
    error = (item.error if item is not None else None) or {}
    return {"prompt_id": prompt_id, "node_id": ids.maybe(error.get("node_id")) or "", "node_type": error.get("class_type") or "",
            "executed": [], "exception_message": str(error.get("message") or "the prompt failed"),
            "exception_type": str(error.get("kind") or "internal"), "traceback": [], "current_inputs": {}, "current_outputs": {},
            "timestamp": stamp}


def history(service: JobService, max_items: int | None, caller: Caller) -> dict[str, Any]:
    """Finished prompts, newest last as in ComfyUI (at most max_items of the newest)."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for job in recent_jobs(service, caller):
        if is_prompt(job) and (entry := history_entry(service, job)) is not None:
            entries.append((job.id, entry))
            if max_items is not None and len(entries) >= max_items:
                break
    return dict(reversed(entries))


def visible_prompt(service: JobService, prompt_id: str, caller: Caller) -> JobRecord | None:
    """The prompt, if it exists and `caller` may see it."""
    job = service.store.get_job(prompt_id)
    return job if job is not None and is_prompt(job) and caller.can_see(job.owner) else None


def delete_prompts(service: JobService, ids: list[str], caller: Caller) -> None:
    """Remove finished prompts from the history (their job and files); a queued or running one is left alone."""
    for prompt_id in ids:
        job = visible_prompt(service, prompt_id, caller)
        if job is not None and job.state in TERMINAL_STATES:
            service.storage.delete_prefix(prompt_id)
            service.store.delete_job(prompt_id)


def cancel_prompts(service: JobService, ids: list[str] | None, states: tuple[str, ...], caller: Caller) -> list[str]:
    """Cancel the prompts named (None: every prompt) of `caller`'s that are in one of `states`; returns the ids cancelled."""
    wanted = set(ids) if ids is not None else None
    done = []
    for job in recent_jobs(service, caller):
        if is_prompt(job) and job.state in states and (wanted is None or job.id in wanted):
            service.cancel(job.id)
            done.append(job.id)
    return done
