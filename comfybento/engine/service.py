"""The engine's BentoML service: one worker, the only process that imports torch and ComfyUI; one per GPU.

Its route `POST /engine/run` (engine/route.py) feeds comfybento's scheduler and streams each request's events back.
With COMFYBENTO_ENGINE_ENTRY=bentoml it also exposes one BentoML batchable API per workflow instead (kept to
benchmark BentoML's adaptive batcher).
"""

from __future__ import annotations

from typing import Any

import bentoml

from comfybento import lifecycle
from comfybento.engine import route as engine_route
from comfybento.engine.client import ENGINE_TIMEOUT_S, engine_name
from comfybento.engine.messages import EngineItem, ItemResult
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.project import Project


def _batchable_api(spec: WorkflowSpec) -> Any:
    name = spec.name

    def run(self: Any, items: list[EngineItem]) -> list[ItemResult]:
        return self.engine.run(name, items)  # type: ignore[no-any-return]

    run.__name__ = name
    return bentoml.api(batchable=True, max_batch_size=spec.max_batch_size, max_latency_ms=spec.max_latency_ms, route=f"/{name}")(run)


def make_engine_services(project: Project, resources: dict[str, Any], devices: list[str | None]) -> list[Any]:
    """One engine service per device (runtime/devices.py): `comfybento-engine` alone, else `comfybento-engine-<i>`."""
    if len(devices) == 1:
        return [make_engine_service(project, resources, devices[0])]
    return [make_engine_service(project, resources, device, index) for index, device in enumerate(devices)]


def make_engine_service(project: Project, resources: dict[str, Any], device: str | None = None,
                        index: int | None = None) -> Any:
    """The engine as a BentoML service; pinned to `device` (its CUDA_VISIBLE_DEVICES, set before the worker starts, so
    before torch is imported) when given; the index'th of several when `index` is given."""
    settings = project.settings
    envs = [{"name": "MALLOC_ARENA_MAX", "value": "2"}, {"name": "COMFYBENTO_ENGINE_ID", "value": str(index or 0)}]
    if device is not None:
        envs.append({"name": "CUDA_VISIBLE_DEVICES", "value": device})
    route = engine_route.route_app()

    def __init__(self: Any) -> None:
        from comfybento.engine.engine import Engine  # torch and ComfyUI: this process only

        lifecycle.watch_parent()
        self.engine = Engine(settings, project.catalog)
        try:
            self.engine.start()
        except Exception as exc:
            lifecycle.fail_startup("engine", exc)
            raise
        route.state.engine = self.engine
        lifecycle.on_shutdown(lambda: self.engine.stop(settings.drain_timeout_s))

    attrs: dict[str, Any] = {"__init__": __init__, "__doc__": "Embedded ComfyUI engine (internal)."}
    if settings.engine_entry == "bentoml":
        attrs.update({spec.name: _batchable_api(spec) for spec in project.catalog.values()})
    cls = bentoml.asgi_app(route, path="/engine")(type("ComfyEngine", (), attrs))
    return bentoml.service(
        name=engine_name(index), workers=1, resources=resources,
        # Two malloc arenas, not one per thread (8 x cores): the executor, encoder and event threads each left a
        # fragmented arena behind, and the engine's RSS crept up between requests (bench/results/*fuzz-memory*).
        envs=envs,
        # BentoCloud scales the engine on in-flight requests: two full batches keep one GPU busy.
        traffic={"timeout": ENGINE_TIMEOUT_S, "concurrency": 2 * settings.max_batch_size, "external_queue": False},
        # BentoML's client to this service closes and replaces its connection pool every
        # `max_requests` calls, aborting the calls still in flight on it. Keep one pool.
        runner_connection={"max_requests": 2**62, "max_age": 10.0**12},
    )(cls)
