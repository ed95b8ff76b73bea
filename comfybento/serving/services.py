"""Build the two BentoML services from the project's workflows.

- `ComfyEngine` (GPU side, one worker): owns the embedded ComfyUI. One
  batchable API per workflow, fed by BentoML's adaptive batcher.
- `ComfyBento` (the entry service): one typed endpoint per workflow,
  `POST /<name>` (JSON with base64 PNGs; also a BentoML task) and
  `POST /<name>/png` (the first image as image/png). It validates, admits or
  sheds load, and forwards to the engine. It also serves the jobs API and runs
  this replica's job worker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from starlette.responses import JSONResponse, Response

from comfybento.jobs import api as jobs_api
from comfybento.jobs.factory import make_jobs
from comfybento.outputs.encoding import b64, decode_b64, normalize_upload
from comfybento.scheduling.admission import Admission
from comfybento.serving.auth import ApiKeyMiddleware
from comfybento.serving.engine import Engine
from comfybento.serving.messages import EngineItem, ItemResult
from comfybento.serving.project import Project
from comfybento.workflows.binding import resolve_seed
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.schema import GenerateResponse, Timings

ENGINE_TIMEOUT_S = 900


def _engine_api(spec: WorkflowSpec) -> Any:
    name = spec.name

    def run(self: Any, items: list[EngineItem]) -> list[ItemResult]:
        return self.engine.run(name, items)  # type: ignore[no-any-return]

    run.__name__ = name
    return bentoml.api(batchable=True, max_batch_size=spec.max_batch_size, max_latency_ms=spec.max_latency_ms, route=f"/{name}")(run)


def make_engine_service(project: Project, resources: dict[str, Any]) -> Any:
    def __init__(self: Any) -> None:
        self.engine = Engine(project)
        self.engine.start()

    attrs: dict[str, Any] = {"__init__": __init__, "__doc__": "Embedded ComfyUI engine (internal)."}
    for spec in project.catalog.values():
        attrs[spec.name] = _engine_api(spec)
    cls = type("ComfyEngine", (), attrs)
    return bentoml.service(
        name="comfybento-engine", workers=1, resources=resources, traffic={"timeout": ENGINE_TIMEOUT_S},
        # BentoML's client to this service closes and replaces its connection pool every
        # `max_requests` calls, aborting the calls still in flight on it (seen at ~100 calls
        # under 16+ concurrent callers). Keep one pool for the life of the process.
        runner_connection={"max_requests": 2**62, "max_age": 10.0**12},
    )(cls)


async def call_engine(engine: Any, workflow: str, item: EngineItem) -> ItemResult:
    """One request through the engine's batchable API; a dropped connection is retried once."""
    method = getattr(engine.to_async, workflow)
    try:
        results = await method([item])
    except aiohttp.ClientConnectionError:
        results = await method([item])  # same seed and values: the same image
    return results[0] if isinstance(results[0], ItemResult) else ItemResult.model_validate(results[0])


def _error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _generate(self: Any, spec: WorkflowSpec, values: dict[str, Any]) -> ItemResult | Response:
    ticket = self.admission.try_enter(spec.name)
    if ticket is None:
        return _error_response(503, f"workflow '{spec.name}' has {self.admission.limit} requests queued; retry later",
                               {"Retry-After": str(self.admission.retry_after_s)})
    try:
        for param in spec.params:
            if param.kind == "image" and values.get(param.name) is not None:
                values[param.name] = b64(normalize_upload(values[param.name]))
        item = EngineItem(values=values, seed=resolve_seed(spec.params, values), submitted_at=time.time())
        try:
            return await call_engine(self.engine, spec.name, item)
        except BentoMLException as exc:
            if int(getattr(exc, "error_code", 500)) != 503:
                raise
            # BentoML's batcher sheds load it cannot serve within max_latency_ms.
            return _error_response(503, f"workflow '{spec.name}' is at capacity (its batches would exceed "
                                   f"max_latency_ms={spec.max_latency_ms}); retry later",
                                   {"Retry-After": str(self.admission.retry_after_s)})
    finally:
        self.admission.leave(spec.name)


def _json_endpoint(spec: WorkflowSpec) -> Any:
    async def endpoint(self: Any, **values: Any) -> Any:
        result = await _generate(self, spec, values)
        if isinstance(result, Response):
            return result
        if not result.ok:
            return _error_response(result.status, result.error or "failed")
        timings = Timings(queue_ms=result.queue_ms, execution_ms=result.execution_ms, batch_size=result.batch_size)
        return GenerateResponse(workflow=spec.name, seed=result.seed, images=result.images, timings=timings)

    endpoint.__name__ = spec.name
    endpoint.__doc__ = (f"Run the '{spec.name}' workflow; returns every output image as base64 PNG. "
                        f"Also a BentoML task: POST /{spec.name}/submit, GET /{spec.name}/status and /{spec.name}/get.")
    return bentoml.task(route=f"/{spec.name}", input_spec=spec.input_model, output_spec=GenerateResponse)(endpoint)


async def _png_response(self: Any, spec: WorkflowSpec, values: dict[str, Any]) -> Response:
    result = await _generate(self, spec, values)
    if isinstance(result, Response):
        return result
    if not result.ok or not result.images:
        return _error_response(result.status if not result.ok else 500, result.error or "no image produced")
    headers = {"X-Seed": str(result.seed)} if result.seed is not None else {}
    return Response(decode_b64(result.images[0].png), media_type="image/png", headers=headers)


def _png_endpoint(spec: WorkflowSpec) -> Any:
    # The annotation documents image/png in the OpenAPI; BentoML sends the Response as it is.
    async def endpoint(self: Any, **values: Any) -> Annotated[Path, ContentType("image/png")]:
        return await _png_response(self, spec, values)  # type: ignore[return-value]

    endpoint.__name__ = f"{spec.name}_png"
    endpoint.__doc__ = f"Run the '{spec.name}' workflow; returns its first image as image/png (seed in X-Seed)."
    return bentoml.api(route=f"/{spec.name}/png", input_spec=spec.input_model)(endpoint)


def _job_hooks(project: Project) -> dict[str, Any]:
    async def start_jobs(self: Any) -> None:
        async def execute(workflow: str, item: EngineItem) -> ItemResult:
            return await call_engine(self.engine, workflow, item)

        service, self.job_runner = make_jobs(project.settings, project.catalog, execute)
        jobs_api.bind(service)
        self.job_task = asyncio.create_task(self.job_runner.run_forever())

    async def stop_jobs(self: Any) -> None:
        await self.job_runner.stop()

    return {"start_jobs": bentoml.on_startup(start_jobs), "stop_jobs": bentoml.on_shutdown(stop_jobs)}


def make_front_service(project: Project, engine_service: Any) -> Any:
    settings = project.settings

    def __init__(self: Any) -> None:
        self.admission = Admission(limit=settings.max_queue, retry_after_s=settings.retry_after_s)

    attrs: dict[str, Any] = {
        "__init__": __init__,
        "__doc__": "ComfyUI workflows as typed endpoints, and batch jobs at /jobs.",
        "engine": bentoml.depends(engine_service),
        **_job_hooks(project),
    }
    for spec in project.catalog.values():
        attrs[spec.name] = _json_endpoint(spec)
        attrs[f"{spec.name}_png"] = _png_endpoint(spec)
    cls = bentoml.asgi_app(jobs_api.app, path="/")(type("ComfyBento", (), attrs))
    service = bentoml.service(name="comfybento", traffic={"timeout": ENGINE_TIMEOUT_S})(cls)
    if settings.api_key:
        service.add_asgi_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    return service

