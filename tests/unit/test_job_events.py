"""A job's SSE stream (front/stream.py `job_events`) over a real JobService: SQLite store, output folder, live events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.stream import JOB_EVENTS, job_events, parse_sse
from comfybento.models.lock import parse_lock
from comfybento.outputs.encoding import png_bytes
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import load_workflow
from tests.helpers import sample_image

ROOT = Path(__file__).resolve().parents[2]
PNG = png_bytes(sample_image(8, 8))


@pytest.fixture
def service(node_defs, tmp_path) -> JobService:
    settings = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")})
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), settings)
    return JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"),
                      AllowList(["127.0.0.1"]), max_items=100, retention_s=60)


def _complete(service: JobService, job_id: str, worker: str) -> dict[str, Any]:
    """Lease the next item and record it done with one image, as a runner does; its recorded output."""
    (lease,) = service.store.lease(worker, 1, 60, 3)
    key = f"{job_id}/{lease.index:05d}-save_image-0.png"
    service.storage.put(key, PNG, "image/png")
    output = {"output": "save_image", "node_id": "9", "index": 0, "width": 8, "height": 8, "media_type": "image/png", "key": key}
    assert service.store.complete(worker, lease, {"outputs": [output]})
    return {"index": lease.index, "output": output}


def test_a_job_stream_tells_live_and_polled_items_and_ends_with_the_terminal_job(service):
    job, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}, {"prompt": "b"}]))

    async def follow() -> list[tuple[str, dict[str, Any]]]:
        frames = job_events(service, job.id, "http://here", poll_s=0.05)
        out = [await frames.__anext__()]  # the job, as it is now
        service.live.publish(job.id, {"event": "progress", "job_id": job.id, "index": 0, "value": 1, "max": 2})
        service.live.publish(job.id, {"event": "started", "job_id": job.id, "index": 0, "batch_size": 1, "queue_ms": 1.0})
        out.append(await frames.__anext__())
        _complete(service, job.id, "other-replica")  # no live event: seen by polling the store
        mine = _complete(service, job.id, "this-replica")
        service.live.publish(job.id, {"event": "item", "job_id": job.id, "index": mine["index"], "status": "succeeded",
                                      "outputs": [mine["output"]]})
        out += [f async for f in frames]
        return [(k, json.loads(d)) for k, d in parse_sse(b"".join(out).decode())]

    frames = asyncio.run(asyncio.wait_for(follow(), 10))
    for _, data in frames:
        JOB_EVENTS.validate_python(data)
    assert frames[0][0] == "job" and frames[0][1]["state"] == "queued"
    assert frames[1] == ("progress", {"event": "progress", "index": 0, "value": 1, "max": 2})  # started is not a job event
    items = [d for k, d in frames if k == "item"]
    assert sorted(d["index"] for d in items) == [0, 1] and all(d["status"] == "succeeded" for d in items)
    assert all(d["outputs"][0]["url"].startswith("http://here/jobs/") for d in items)
    assert frames[-1][0] == "job" and frames[-1][1]["state"] == "succeeded" and frames[-1][1]["counts"]["succeeded"] == 2


def test_a_finished_job_is_told_at_once_and_a_silent_one_gets_keepalives(service):
    done, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}]))
    _complete(service, done.id, "w")

    async def read(job_id: str, limit: int | None = None) -> bytes:
        chunks = []
        async for chunk in job_events(service, job_id, "http://here", poll_s=0.02, keepalive_s=0.05):
            chunks.append(chunk)
            if limit is not None and len(chunks) >= limit:
                break
        return b"".join(chunks)

    frames = parse_sse(asyncio.run(read(done.id)).decode())
    assert [k for k, _ in frames] == ["job", "item", "job"]
    quiet, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "b"}]))
    assert b": keepalive" in asyncio.run(read(quiet.id, limit=3))
    assert service.live.subscribers == 0  # the stream left its subscription


def test_an_item_told_from_the_store_is_not_told_again_by_its_late_live_event(service):
    """An item that finished as the stream started is read from the store; its live event, arriving after, is dropped."""
    job, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}, {"prompt": "b"}]))

    async def follow() -> list[tuple[str, dict[str, Any]]]:
        frames = job_events(service, job.id, "http://here", poll_s=0.05)
        out = [await frames.__anext__()]
        first = _complete(service, job.id, "this-replica")
        out.append(await frames.__anext__())  # polled: the item, from the store
        service.live.publish(job.id, {"event": "item", "job_id": job.id, "index": first["index"], "status": "succeeded",
                                      "outputs": [first["output"]]})  # its live event, late
        _complete(service, job.id, "this-replica")
        out += [f async for f in frames]
        return [(k, json.loads(d)) for k, d in parse_sse(b"".join(out).decode())]

    frames = asyncio.run(asyncio.wait_for(follow(), 10))
    assert sorted(d["index"] for k, d in frames if k == "item") == [0, 1]
