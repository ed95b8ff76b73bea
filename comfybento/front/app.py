"""The composition root of the front: the `ComfyBento` BentoML service (the entry service, a light web tier).

The engine's service is built in engine/service.py. This module makes the front's collaborators and wires them:
- the service's typed endpoints, one set per workflow (front/endpoints.py), which validate, admit or shed load, and
  forward to the engine; they reach the collaborators through `self` (admission, engine client, storage, costs);
- the root ASGI app mounted at / (front/root.py): the jobs API, live outputs, the compatibility APIs; the JobService
  and the output storage go into its state;
- this replica's job worker, started with the service, charging each item to its key (front/access.py);
- the middlewares: request edge (ids, body limits), OpenAPI document and playground, the ComfyUI editor (front/editor.py),
  CORS and API keys.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
from fastapi import FastAPI
from starlette.exceptions import HTTPException

from comfybento import lifecycle, metrics
from comfybento.engine.client import ENGINE_TIMEOUT_S
from comfybento.engine.pool import EnginePool
from comfybento.errors import StorageFull
from comfybento.front import access
from comfybento.front.delivery import StorageOnFirstUse
from comfybento.front.editor import EditorMiddleware
from comfybento.front.endpoints import job_executor, workflow_endpoints
from comfybento.front.error_shape import ErrorShapeMiddleware
from comfybento.front.http import RequestEdgeMiddleware, quiet_client_errors
from comfybento.front.jobs.factory import make_jobs
from comfybento.front.jobs.records import ITEM_STATES
from comfybento.front.jobs.store import JobStore
from comfybento.front.jobs.usage import usage_sink
from comfybento.front.openapi import OpenAPIMiddleware, fix_openapi
from comfybento.front.retention import make_retention
from comfybento.front.root import root_app
from comfybento.front.routing import routes_of
from comfybento.outputs import diskspace
from comfybento.scheduling.admission import Admission
from comfybento.scheduling.cost import CostModel
from comfybento.urlguard import AllowList
from comfybento.workflows.project import Project

log = logging.getLogger(__name__)
JOB_ITEMS_SAMPLE_S = 5.0  # how often comfybento_job_items is read from the job store


def make_front_service(project: Project, engine_services: list[Any]) -> Any:
    settings = project.settings
    output_storage = StorageOnFirstUse(settings)  # S3 is reached only once a request asks for URLs
    root = root_app(output_storage)  # mounted at /; the jobs service joins its state when the jobs start

    def __init__(self: Any) -> None:
        lifecycle.watch_parent()
        self.admission = Admission(limit=settings.max_queue, retry_after_s=settings.retry_after_s)
        self.output_storage = output_storage
        self.input_urls = AllowList(settings.input_url_allowlist, "input url")
        self.disk = _disk_watcher(project)
        self.costs = CostModel()  # GPU-seconds per unit of work, per workflow, learned from the results (dry-run estimates)
        self.engine_client = None  # COMFYBENTO_ENGINE_ENTRY=bentoml: BentoML's batcher, through self.engine
        if settings.engine_entry == "scheduler":  # every engine, one per GPU, spread by queue depth (engine/pool.py)
            self.engine_client = EnginePool.of_services([e.name for e in engine_services], ENGINE_TIMEOUT_S)
        root.state.front = self  # the routes that run live requests as the typed endpoints do (front/compat/openai_images/)

    async def __is_ready__(self: Any) -> bool:
        low = self.disk.low()
        if low is not None:  # BentoML answers a False with a fixed text: the reason goes in the 503 itself
            raise HTTPException(503, f"not ready for work that writes to disk: {low.reason()}; requests that return "
                                     "their outputs inline still run", headers={"Retry-After": str(StorageFull.retry_after_s)})
        # BentoML's own dependency probe lets a connection error escape while the engine starts,
        # and the probe request then hangs for the traffic timeout; answer it here first.
        return await self.engine_client.ready() if self.engine_client is not None else True

    attrs: dict[str, Any] = {
        "__init__": __init__,
        "__is_ready__": __is_ready__,
        "__doc__": "ComfyUI workflows as typed endpoints, and batch jobs at /jobs.",
        "engine": bentoml.depends(engine_services[0]),
        # the others, one per GPU, so that BentoML starts them and gives this front their addresses
        **{f"engine_{i}": bentoml.depends(svc) for i, svc in enumerate(engine_services[1:], start=1)},
        **_job_hooks(project, root),
    }
    for route in routes_of(project):  # each workflow, each version, each alias (front/routing.py)
        attrs.update(workflow_endpoints(route))
    cls = bentoml.asgi_app(root, path="/")(type("ComfyBento", (), attrs))
    # Many requests in flight per replica (they must reach the engine together to share batches): no
    # external queue; BentoCloud scales this light tier on its in-flight requests, up to the admission limit.
    service = bentoml.service(name="comfybento", traffic={"timeout": ENGINE_TIMEOUT_S, "concurrency": settings.max_queue,
                                                          "external_queue": False})(cls)
    # The first added runs first: every answer (a 401 included) carries the request id; the docs need no key.
    service.add_asgi_middleware(RequestEdgeMiddleware, max_body_bytes=max_body_bytes(project),
                                max_json_depth=settings.limits.max_json_depth)
    # ComfyUI's editor at /comfy/: its files, and its API calls (a key from its cookie) onto ComfyUI's routes, before
    # the rest sees them (an editor call is ComfyUI's route to the error shapes, the keys and the limits)
    service.add_asgi_middleware(EditorMiddleware, keys_required=settings.keys_required)
    service.add_asgi_middleware(ErrorShapeMiddleware)  # the framework's own error answers (404, 405, 400) in our shape
    service.add_asgi_middleware(OpenAPIMiddleware, build=lambda: fix_openapi(service.openapi_spec.asdict(), project.catalog,
                                                                              _bento_version(service), settings.job_max_items,
                                                                              project.aliases))
    access.install(service, settings)  # CORS, then API keys, rate limits and quotas
    quiet_client_errors()
    return service


def _job_hooks(project: Project, root: FastAPI) -> dict[str, Any]:
    """Start this replica's job worker with the service (its JobService into the root app's state), stop it with it."""

    async def start_jobs(self: Any) -> None:
        self.job_items = ThreadPoolExecutor(2, thread_name_prefix="comfybento-job-items")
        # each succeeded item is charged to the API key that submitted its job
        service, self.job_runner = make_jobs(project.settings, project.catalog, job_executor(self, project.catalog), self.costs,
                                             may_lease=self.disk.has_room, on_usage=access.charge_owner, aliases=project.aliases)
        access.record_usage_in(usage_sink(service.store))  # every charge is also counted per key and day (GET /usage)
        root.state.jobs = service
        self.job_task = asyncio.create_task(self.job_runner.run_forever())
        # old jobs, URL outputs and v2 assets; at once (and early, if allowed) when the disk runs low
        self.retention_task = asyncio.create_task(make_retention(project.settings, self.job_runner, self.disk).run_forever())
        self.job_items_task = asyncio.create_task(_export_job_items(service.store))

    async def stop_jobs(self: Any) -> None:
        self.retention_task.cancel()
        self.job_items_task.cancel()
        await self.job_runner.stop()
        self.job_items.shutdown(wait=False, cancel_futures=True)
        if self.engine_client is not None:
            await self.engine_client.aclose()

    return {"start_jobs": bentoml.on_startup(start_jobs), "stop_jobs": bentoml.on_shutdown(stop_jobs)}


async def _export_job_items(store: JobStore) -> None:
    """comfybento_job_items{state}: the store's items by state, every state present (0 when none), at once and then
    every JOB_ITEMS_SAMPLE_S."""
    while True:
        try:
            counts = await asyncio.to_thread(store.item_counts)
        except Exception:
            log.exception("counting the job items by state failed; retrying")
        else:
            for state in ITEM_STATES:
                metrics.JOB_ITEMS.labels(state=state).set(counts.get(state, 0))
        await asyncio.sleep(JOB_ITEMS_SAMPLE_S)


def _disk_watcher(project: Project) -> diskspace.DiskWatcher:
    """The process's free-space watcher (outputs/diskspace.py), its gauges exported; installed for the jobs API."""
    watcher = diskspace.watcher_for(project.settings, [s.limits for s in project.catalog.values()],
                                    export=lambda folder, free: metrics.DISK_FREE.labels(folder=folder).set(free))
    metrics.DISK_WATERMARK.set(watcher.watermark_bytes)
    diskspace.install(watcher)
    watcher.low()  # the first sample: the gauges and, when already low, its log line
    return watcher


def _bento_version(service: Any) -> str | None:
    """The Bento's version when served from a built Bento (else the package's version is used)."""
    bento = getattr(service, "bento", None)
    return str(bento.tag.version) if bento is not None and bento.tag.version else None


def max_body_bytes(project: Project) -> int:
    """The largest body any endpoint takes: the global limit, or a workflow's own if it set a larger one."""
    return max([project.settings.limits.max_body_bytes, *(s.limits.max_body_bytes for s in project.catalog.values())])
