"""Batch jobs through the real runner, the real store and the real ComfyUI executor (CPU, tiny model).

The front's job path as it runs in production, less HTTP: the runner leases items from a SQLite store, each item
is checked and bound by the front's own `engine_item`, and the in-process engine (its real scheduler) runs them in
shared batches. Jobs larger than one batch, and than the runner's lease-ahead window, end with every item exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.engine.engine import Engine
from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.front.endpoints import engine_item
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.factory import make_jobs
from comfybento.front.jobs.runner import OnEvent
from comfybento.scheduling.events import Done, Event, Failed, OutputReady
from comfybento.workflows.project import load_project
from tests.helpers import make_workflows_dir, png_array, service_env

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-engine")
    env = {**service_env(make_workflows_dir(root / "workflows", extra=()), root / "work"), "COMFYBENTO_MAX_BATCH_SIZE": "8",
           "COMFYBENTO_WEBHOOK_SECRET": "whsec_dGVzdC1zZWNyZXQtYnl0ZXMtZm9yLWpvYnM="}
    settings = Settings.from_env(env)
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=10)


def in_process(engine: Engine):
    """The runner's `execute` over the in-process engine: the front's validation, then the engine's own scheduler."""

    async def execute(workflow: str, values: dict[str, Any], seed: int | None, on_event: OnEvent) -> ItemResult:
        item = await asyncio.to_thread(engine_item, engine.catalog[workflow], values, seed)
        loop = asyncio.get_running_loop()
        result: asyncio.Future[ItemResult] = loop.create_future()
        outputs: list[OutputBlob] = []

        def on_loop(event: Event) -> None:
            if isinstance(event, OutputReady):
                outputs.append(event.output)
            elif isinstance(event, Done):
                result.set_result(event.result.model_copy(update={"outputs": outputs}))
            elif isinstance(event, Failed):
                result.set_result(ItemResult.failure(event.error, seed))

        await asyncio.to_thread(engine.submit, workflow, item, lambda e: loop.call_soon_threadsafe(on_loop, e))
        return await result

    return execute


def run_job(engine: Engine, work: Path, n: int, timeout: float = 600) -> tuple[Any, Any]:
    """Submit an n-item job through the JobService and run the real runner loop until it ends: (service, final status)."""
    settings = Settings.from_env({**service_env(engine.settings.workflows_dir, work), "COMFYBENTO_JOB_CONCURRENCY": "16",
                                  "COMFYBENTO_WEBHOOK_SECRET": engine.settings.webhook_secret})
    service, runner = make_jobs(settings, engine.catalog, in_process(engine))
    items = [{"prompt": f"item {i}", "seed": 1000 + i, "steps": 2, "width": 64, "height": 64} for i in range(n)]
    job, _ = service.submit(JobSubmit(workflow="txt2img", items=items))

    async def main() -> Any:
        loop = asyncio.create_task(runner.run_forever())
        deadline = time.monotonic() + timeout
        try:
            while (status := service.status(job.id)).state not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline, f"job of {n} did not finish: {status.counts}"
                assert not loop.done(), loop
                await asyncio.sleep(0.05)
            return status
        finally:
            await runner.stop()
            await asyncio.wait_for(loop, 30)

    return service, asyncio.run(main())


@pytest.mark.parametrize("n", [1, 16, 17, 64, 1000])
def test_every_item_exactly_once_at_any_size(engine, tmp_path, n):
    """1: alone; 16: the runner's lease window; 17: one more than it; 64: many batches; 1000: well past one batch."""
    service, status = run_job(engine, tmp_path / uuid.uuid4().hex, n)
    assert status.state == "succeeded" and status.counts == {"succeeded": n}, status.counts
    results = []
    for offset in range(0, n, 1000):
        results += service.results(status.id, offset, 1000, "http://x").items
    assert [r.index for r in results] == list(range(n))
    assert all(r.attempts == 1 and r.seed == 1000 + r.index and len(r.outputs) == 1 for r in results)
    keys = [i.result["outputs"][0]["key"] for i in service.store.get_items(status.id, 0, n)]  # type: ignore[index]
    assert len(set(keys)) == n  # one file per item, none shared or overwritten
    if n >= 64:  # the runner keeps the engine's queue full: items share batches
        sizes = [r.batch_size for r in results]
        assert sum(sizes) / n >= 4, f"mean batch {sum(sizes) / n:.2f} of max 8"
    first = service.storage.get(keys[0])
    assert png_array(first).shape == (64, 64, 3)
