"""Jobs: validate and submit, report status and results, cancel. The API layer calls this."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from comfybento import metrics
from comfybento.errors import ComfyBentoError, InvalidRequest, NotFound
from comfybento.front.jobs.api_models import (
    DeliveryOut,
    ItemError,
    ItemFailure,
    ItemProgress,
    ItemResultOut,
    JobEstimate,
    JobResults,
    JobStatus,
    JobSubmit,
    JobUsage,
    OutputRef,
)
from comfybento.front.jobs.estimate import Planned, Quota, check_quota, estimate, plan
from comfybento.front.jobs.live import JobEvents
from comfybento.front.jobs.records import TERMINAL_STATES, ItemRecord, JobRecord, now
from comfybento.front.jobs.store import JobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.ownership import Caller
from comfybento.outputs.storage import Storage
from comfybento.scheduling.cost import CostModel
from comfybento.workflows.binding import resolve_seed
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs
from comfybento.workflows.limits import check_request_limits
from comfybento.workflows.params import UPLOAD_KINDS
from comfybento.workflows.schema import PRESET_FIELD, build_input_model
from comfybento.workflows.uploads import check_item_input
from comfybento.workflows.versions import Alias, resolve

PROGRESS_LIMIT = 1000


class InvalidItems(InvalidRequest):
    """The submission has invalid items; nothing was queued (a 422 of kind "invalid")."""

    def __init__(self, errors: list[ItemError]) -> None:
        self.errors = errors
        shown = "; ".join(f"items[{e.index}].{e.field}: {e.message}" for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} invalid item field(s), nothing was queued: {shown}{more}")


class TooManyItems(InvalidRequest):
    """The submission has more items than COMFYBENTO_JOB_MAX_ITEMS allows (checked before a fan-out is built)."""

    error_code = 413  # type: ignore[assignment]


def expand(req: JobSubmit, max_items: int) -> list[dict[str, Any]]:
    """The submission's items: the list as given, or base x the cartesian product of the fan-out.

    The count is checked against `max_items` first: a fan-out is built only once its size is known to fit.
    """
    if req.items is not None and (req.base is not None or req.fanout is not None):
        raise InvalidRequest("give either 'items' or 'base'/'fanout', not both")
    fanout = req.fanout or {}
    for key, values in fanout.items():
        if not isinstance(values, list) or not values:
            raise InvalidRequest(f"fanout.{key} must be a non-empty list")
    sizes = [len(values) for values in fanout.values()]
    count = len(req.items) if req.items is not None else math.prod(sizes)
    if count > max_items:
        what = "items:" if req.items is not None else "fanout: " + " x ".join(map(str, sizes)) + " ="
        raise TooManyItems(f"{what} {count} items is more than the limit of {max_items} (COMFYBENTO_JOB_MAX_ITEMS)")
    if req.items is not None:
        return req.items
    keys = list(fanout)
    return [{**(req.base or {}), **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*(fanout[k] for k in keys))]


# A submission made ready: (raw items, validated values, seeds, each item's workflow: the same spec, or one per submitted graph).
Prepared = tuple[list[dict[str, Any]], list[dict[str, Any]], list["int | None"], list[WorkflowSpec]]


def _planned(specs: list[WorkflowSpec], values: list[dict[str, Any]], seeds: list[int | None]) -> list[Planned]:
    return [plan(spec, v, seed) for spec, v, seed in zip(specs, values, seeds, strict=True)]


class JobService:
    def __init__(self, catalog: dict[str, WorkflowSpec], store: JobStore, storage: Storage, allow: AllowList,
                 max_items: int, retention_s: int, live_progress: dict[tuple[str, int], dict[str, int]] | None = None,
                 live: JobEvents | None = None, free_graphs: FreeGraphs | None = None, costs: CostModel | None = None,
                 aliases: Mapping[str, Alias] | None = None) -> None:
        self.catalog = catalog
        # a job may name a workflow's alias (`txt2img`: the version its versions.yaml picks now) or a version (`txt2img/v1`)
        self.aliases = aliases or {}
        self.store = store
        self.storage = storage
        self.allow = allow
        self.max_items = max_items
        self.retention_s = retention_s
        # (job id, index) -> {"step", "steps"} of items running on this replica (the runner's dict, which it fills)
        self.live_progress = live_progress if live_progress is not None else {}
        self.live = live if live is not None else JobEvents()  # the runner's live events (front/jobs/live.py)
        # COMFYBENTO_SUBMITTED_GRAPHS=any: jobs of the reserved workflow FREE_GRAPH, unmatched graphs (workflows/free_graph.py)
        self.free_graphs = free_graphs
        self.costs = costs if costs is not None else CostModel()  # the front's, which learns from results (front/app.py)
        self.item_models: dict[str, type[BaseModel]] = {
            name: build_input_model(name, list(spec.params), spec.encoding, images_as_base64=True, limits=spec.limits,
                                    presets=spec.presets) for name, spec in catalog.items()}

    # ------------------------------------------------------------ submit

    def submit(self, req: JobSubmit, owner: str | None = None, quota: Quota = None) -> tuple[JobRecord, bool]:
        """Validate and queue a job for `owner` (the submitting API key's name; None when keys are off): (job, created).

        `quota`: the key's (images per day, images left); a job making more images than are left is refused (429).
        """
        raw, values, seeds, specs = self._prepare(req)
        if quota is not None:
            check_quota(owner, _planned(specs, values, seeds), quota)
        if req.workflow in self.aliases:
            metrics.ALIAS_REQUESTS.labels(workflow=req.workflow, version=specs[0].version).inc()
        return self._create(req, raw, owner, specs[0].name, values, seeds)

    def estimate(self, req: JobSubmit, quota: Quota = None) -> JobEstimate:
        """What the job would cost (`POST /jobs/estimate`): validated like a submission, nothing queued."""
        _, values, seeds, specs = self._prepare(req)
        return estimate(_planned(specs, values, seeds), self.store, self.costs, req.cache, quota)

    def _prepare(self, req: JobSubmit) -> Prepared:
        """(raw items, validated values, seeds, each item's workflow) of a submission, or the 4xx of its first problem."""
        spec = resolve(self.catalog, self.aliases, req.workflow)  # an alias picks its version once, for every item
        if spec is None and req.workflow == FREE_GRAPH and self.free_graphs is not None:
            return self._prepare_free_graphs(req)
        if spec is None:
            names = sorted([*self.catalog, *self.aliases, *(s.route for s in self.catalog.values() if s.version is not None)])
            raise InvalidRequest(f"workflow: unknown workflow {req.workflow!r}; known: {names}")
        if req.preset is not None and req.preset not in spec.presets:
            known = f"its presets: {', '.join(spec.presets)}" if spec.presets else "it has none"
            raise InvalidRequest(f"preset: unknown preset {req.preset!r} of workflow '{spec.name}'; {known}")
        raw = expand(req, self.max_items)
        if not raw:
            raise InvalidRequest("items: a job needs at least one item")
        if req.preset is not None:  # an item's own preset, and its explicit fields, win
            raw = [{PRESET_FIELD: req.preset, **item} for item in raw]
        values = self._validate(spec, raw)
        seeds = [resolve_seed(spec.params, v) for v in values]
        return raw, values, seeds, [spec] * len(values)

    def _create(self, req: JobSubmit, raw: list[dict[str, Any]], owner: str | None, workflow: str, values: list[dict[str, Any]],
                seeds: list[int | None]) -> tuple[JobRecord, bool]:
        if req.webhook is not None:
            self.allow.check(req.webhook.url)
        job = JobRecord(
            id=uuid.uuid4().hex, workflow=workflow, priority=req.priority, created_at=now(), total=len(values),
            idempotency_key=req.idempotency_key, request_hash=_request_hash(req, raw, owner), owner=owner,
            webhook_url=req.webhook.url if req.webhook else None, webhook_per_item=bool(req.webhook and req.webhook.per_item),
            use_cache=req.cache, expires_at=None,
        )
        items = [ItemRecord(job_id=job.id, index=i, params=v, seed=seed) for i, (v, seed) in enumerate(zip(values, seeds, strict=True))]
        return self.store.create_job(job, items)

    def _prepare_free_graphs(self, req: JobSubmit) -> Prepared:
        """A job of unmatched graphs: each item {"graph": ...} checked in full (free_graph.py), each to run alone."""
        assert self.free_graphs is not None
        if req.preset is not None:
            raise InvalidRequest(f"preset: a job of submitted graphs has no presets (got {req.preset!r})")
        raw = expand(req, self.max_items)
        if not raw:
            raise InvalidRequest("items: a job needs at least one item")
        errors: list[ItemError] = []
        values, specs = [], []
        for index, item in enumerate(raw):
            try:
                spec = self.free_graphs.spec(item)
            except ComfyBentoError as exc:
                errors.append(ItemError(index=index, field="graph", message=str(exc)))
                continue
            values.append({"graph": spec.graph})
            specs.append(spec)
        if errors:
            raise InvalidItems(errors)
        return raw, values, [None] * len(values), specs

    def _validate(self, spec: WorkflowSpec, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = self.item_models[spec.name]
        files = {p.name: p.kind for p in spec.params if p.kind in UPLOAD_KINDS}
        errors: list[ItemError] = []
        out = []
        for index, item in enumerate(raw):
            try:
                validated = model.model_validate(item).model_dump()
                validated.pop(PRESET_FIELD, None)  # applied: the item stores the values it runs with
            except ValidationError as exc:
                errors += [ItemError(index=index, field=".".join(map(str, e["loc"])) or "(item)", message=e["msg"]) for e in exc.errors()]
                continue
            errors += _item_limit_errors(spec, index, validated, files)
            out.append(validated)
        if errors:
            raise InvalidItems(errors)
        return out

    # ------------------------------------------------------------ read

    def job(self, job_id: str, caller: Caller | None = None) -> JobRecord:
        """The job; NotFound when it does not exist or `caller` (given by every route) may not see it (front/ownership.py)."""
        job = self.store.get_job(job_id)
        message = f"job {job_id!r} does not exist (or expired)"
        if job is None:
            raise NotFound(message)
        if caller is not None:
            caller.require(job.owner, message)
        return job

    def list_jobs(self, limit: int, offset: int, caller: Caller) -> list[JobRecord]:
        """The jobs `caller` may see, newest first."""
        return self.store.list_jobs(limit, offset, owner=caller.listing_owner)

    def status(self, job_id: str, caller: Caller | None = None) -> JobStatus:
        job = self.job(job_id, caller)
        return self.status_of(job, self.store.get_items(job_id, 0, PROGRESS_LIMIT))

    def status_of(self, job: JobRecord, items: Sequence[ItemRecord]) -> JobStatus:
        """The status of a job as read (its record and first items), with its webhook log (blocking: it reads that)."""
        job_id = job.id
        return JobStatus(
            id=job.id, workflow=job.workflow, version=self._version_of(job.workflow), state=job.state, priority=job.priority,
            total=job.total, counts=job.counts,
            created_at=job.created_at, finished_at=job.finished_at, eta_s=_eta(job, items), owner=job.owner,
            usage=JobUsage(images=job.images, gpu_seconds=job.gpu_seconds),
            items=[ItemProgress(index=i.index, state=i.state, attempts=i.attempts,
                                **(self.live_progress.get((job_id, i.index), {}) if i.state == "running" else {})) for i in items],
            webhooks=[DeliveryOut(id=d.id, event=d.event, url=d.url, state=d.state, attempts=d.log) for d in self.store.deliveries(job_id)],
        )

    def _version_of(self, workflow: str) -> str | None:
        """The version a job runs: its workflow is the catalog name of one version (`txt2img_v1`), chosen at submit."""
        spec = self.catalog.get(workflow)
        return spec.version if spec is not None else None

    def results(self, job_id: str, offset: int, limit: int, base_url: str, caller: Caller | None = None) -> JobResults:
        job = self.job(job_id, caller)
        items = self.store.get_items(job_id, offset, limit)
        return JobResults(id=job.id, state=job.state, total=job.total, offset=offset, limit=limit,
                          items=[self._item_out(i, base_url) for i in items], archive_url=f"{base_url}/jobs/{job_id}/archive")

    def _item_out(self, item: ItemRecord, base_url: str) -> ItemResultOut:
        result = item.result or {}
        outputs = [OutputRef(**{k: v for k, v in o.items() if k != "key"}, url=self.storage.url(o["key"], base_url))
                   for o in result.get("outputs", [])]
        return ItemResultOut(
            index=item.index, state=item.state, seed=item.seed, attempts=item.attempts, cached=bool(result.get("cached")),
            outputs=outputs, queue_ms=result.get("queue_ms"), execution_ms=result.get("execution_ms"),
            batch_size=result.get("batch_size"), error=ItemFailure(**item.error) if item.error and item.state != "succeeded" else None,
        )

    def archive(self, job_id: str, target: Path, caller: Caller | None = None) -> Path:
        """A zip of every output of the job's finished items (named <item>-<output>-<index>.<extension>)."""
        self.job(job_id, caller)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
            offset = 0
            while batch := self.store.get_items(job_id, offset, 500):
                for item in batch:
                    for out in (item.result or {}).get("outputs", []):
                        ext = str(out["key"]).rsplit(".", 1)[-1]
                        zf.writestr(f"{item.index:05d}-{out['output']}-{out['index']}.{ext}", self._read(out["key"]))
                offset += len(batch)
        return target

    def file(self, job_id: str, name: str, caller: Caller | None = None) -> bytes:
        self.job(job_id, caller)
        return self._read(f"{job_id}/{name}")

    def _read(self, key: str) -> bytes:
        return self.storage.get(key)  # any backend's get refuses keys that are not its own files (a link, `..`)

    def cancel(self, job_id: str, caller: Caller | None = None) -> JobRecord:
        if caller is not None:
            self.job(job_id, caller)
        job = self.store.cancel(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        return job

    def retry(self, job_id: str) -> tuple[JobRecord, int]:
        """Re-queue the failed items of a finished job (same parameters and seeds): (the job, items re-queued; 0: nothing changed)."""
        retried = self.store.retry_failed(job_id)
        if retried is None:
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        return retried


def _item_limit_errors(spec: WorkflowSpec, index: int, values: dict[str, Any], files: Mapping[str, str]) -> list[ItemError]:
    """An item's files (base64 now, header first: no bomb is decoded; a URL's form) and graph sizes against the limits."""
    errors = []
    for name, kind in files.items():
        try:
            check_item_input(name, kind, values[name], spec.limits)
        except ComfyBentoError as exc:
            errors.append(ItemError(index=index, field=name, message=str(exc)))
    try:
        check_request_limits(spec.name, spec.graph, spec.params, values, spec.limits)
    except ComfyBentoError as exc:
        errors.append(ItemError(index=index, field=str(exc).split(":", 1)[0], message=str(exc)))
    return errors


def _request_hash(req: JobSubmit, raw: list[dict[str, Any]], owner: str | None) -> str:
    doc = {"workflow": req.workflow, "items": raw, "priority": req.priority, "cache": req.cache,
           "webhook": req.webhook.model_dump() if req.webhook else None}
    if owner is not None:  # (absent without keys: the hashes of jobs stored before owners existed still match)
        doc["owner"] = owner
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _eta(job: JobRecord, items: Sequence[ItemRecord]) -> float | None:
    done = sum(job.counts.get(s, 0) for s in TERMINAL_STATES)
    if job.state in TERMINAL_STATES:
        return 0.0
    started = [i.started_at for i in items if i.started_at]
    if done == 0 or not started:
        return None
    rate = done / max(1e-6, now() - min(started))
    return (job.total - done) / rate
