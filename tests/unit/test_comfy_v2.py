"""Comfy API v2 (comfybento/front/compat/comfy_v2) in process: its router on a real FastAPI app, a real SQLite job store and
a real output folder. The jobs' items are finished as the runner records them (no engine here; tests/e2e runs it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from blake3 import blake3
from fastapi import FastAPI
from fastapi.testclient import TestClient

from comfybento.config import Settings
from comfybento.front.compat import comfy_v2
from comfybento.front.compat.comfy_v2 import routes
from comfybento.front.compat.comfy_v2.assets import AssetStore
from comfybento.front.compat.comfy_v2.errors import V2Error
from comfybento.front.compat.comfy_v2.events import job_stream
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.ownership import Caller
from comfybento.models.lock import parse_lock
from comfybento.outputs.encoding import png_bytes
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import load_workflow
from tests.helpers import sample_image

ROOT = Path(__file__).resolve().parents[2]
PNG = png_bytes(sample_image(8, 8))
UPLOAD_LIMIT = 4000


@pytest.fixture
def v2(node_defs, tmp_path, monkeypatch):
    settings = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models"), "COMFYBENTO_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)})
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), settings)
    service = JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"),
                         AllowList(["127.0.0.1"]), max_items=100, retention_s=60)
    monkeypatch.setattr(routes, "get_settings", lambda: settings)
    app = FastAPI()
    app.state.jobs = service
    comfy_v2.include(app)
    comfy_v2.include(app)  # a second call adds nothing
    assert len(app.routes) == len(FastAPI().routes) + 1
    with TestClient(app) as client:
        yield client, service


def _upload(client: TestClient, data: bytes, **form: str):
    return client.post("/api/v2/assets", files={"file": ("a.png", data, "image/png")},
                       data={"content_type": "image/png", "file_path": "a.png", **form})


def _finish(service: JobService, job_id: str) -> None:
    """Record the job's one item as the runner does: its image in storage, the result in the store."""
    (lease,) = service.store.lease("w", 1, 60, 3)
    assert lease.job_id == job_id
    key = f"{job_id}/00000-a1-save_image-0.png"
    service.storage.put(key, PNG, "image/png")
    output = {"output": "save_image", "node_id": "9", "index": 0, "kind": "image", "width": 8, "height": 8, "media_type": "image/png",
              "key": key}
    assert service.store.complete("w", lease, {"outputs": [output], "queue_ms": 5.0, "execution_ms": 20.0})


def _graph() -> dict:
    return json.loads((ROOT / "workflows" / "txt2img.json").read_text())


def test_uploads_are_content_addressed_deduplicated_and_served_with_ranges(v2):
    client, _ = v2
    first = _upload(client, PNG, expected_hash="blake3:" + blake3(PNG).hexdigest())
    assert first.status_code == 201 and first.json()["created_new"] is True
    assert first.json()["hash"] == "blake3:" + blake3(PNG).hexdigest() and first.json()["size_bytes"] == len(PNG)
    second = _upload(client, PNG)
    assert second.status_code == 200 and second.json()["created_new"] is False and second.json()["id"] != first.json()["id"]
    digest = first.json()["hash"]
    assert client.head(f"/api/v2/assets/by-hash/{digest}").status_code == 200
    minted = client.post("/api/v2/assets/from-hash", json={"hash": digest, "file_path": "b.png"})
    assert minted.status_code == 201 and minted.json()["content_type"] == "image/png"
    asset_id = minted.json()["id"]
    whole = client.get(f"/api/v2/assets/{asset_id}/content")
    assert whole.content == PNG and whole.headers["content-security-policy"] == "sandbox"
    part = client.get(f"/api/v2/assets/{asset_id}/content", headers={"Range": "bytes=1-3"})
    assert part.status_code == 206 and part.content == PNG[1:4] and part.headers["content-range"] == f"bytes 1-3/{len(PNG)}"
    assert client.get(f"/api/v2/assets/{asset_id}/content", headers={"Range": f"bytes={len(PNG)}-"}).status_code == 416
    for huge in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 19):
        r = client.get(f"/api/v2/assets/{asset_id}/content", headers={"Range": huge})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(PNG)}", huge[:20]
    assert client.delete(f"/api/v2/assets/{asset_id}").status_code == 204
    gone = client.get(f"/api/v2/assets/{asset_id}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v2/assets/{first.json()['id']}/content").content == PNG  # the blob outlives one record


def test_bad_uploads_get_the_spec_s_error_codes(v2):
    client, _ = v2
    wrong = _upload(client, PNG, expected_hash="blake3:" + "0" * 64)
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "hash_mismatch"
    big = _upload(client, b"x" * (UPLOAD_LIMIT + 1))
    assert big.status_code == 413 and "COMFYBENTO_MAX_UPLOAD_BYTES" in big.json()["error"]["message"]
    assert str(UPLOAD_LIMIT) in big.json()["error"]["message"]
    no_file = client.post("/api/v2/assets", data={"content_type": "image/png", "file_path": "a.png"})
    assert no_file.status_code == 422 and "file" in no_file.json()["error"]["message"]
    unknown = client.post("/api/v2/assets/from-hash", json={"hash": "blake3:" + "2" * 64})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "blob_not_found"
    malformed = client.post("/api/v2/assets/from-hash", json={"hash": "sha256:abc"})
    assert malformed.status_code == 422 and "hash" in malformed.json()["error"]["message"]


def test_a_hash_is_mintable_only_by_the_key_that_uploaded_it(tmp_path):
    store = AssetStore(LocalStorage(tmp_path))
    record, new = store.upload(PNG, "image/png", "a.png", owner="alice")
    assert new and store.mintable(record.hash, "alice") and not store.mintable(record.hash, "bob")
    with pytest.raises(V2Error) as refused:
        store.from_hash(record.hash, "b.png", owner="bob")
    assert refused.value.code == "blob_not_found"
    with pytest.raises(V2Error):
        store.get(record.id, Caller("bob"))  # not yours reads as missing
    assert store.get(record.id, Caller("alice")) == store.get(record.id, Caller("ops", operator=True)) == record
    with pytest.raises(V2Error) as missing:
        store.resolve_reference("image", {"__type": "core/ASSET", "info": {"id": record.id}}, Caller("bob"))
    assert missing.value.code == "missing_asset"
    with pytest.raises(V2Error) as plain:
        store.resolve_reference("image", "example.png", Caller("alice"))
    assert plain.value.code == "missing_asset" and "core/ASSET" in str(plain.value)
    assert store.upload(PNG, "image/png", "a.png", owner="alice")[1] is False  # alice's bytes again: not new to alice
    assert store.upload(PNG, "image/png", "b.png", owner="bob")[1] is True  # new to bob: alice's upload is not confirmed
    assert store.mintable(record.hash, "bob")  # bob holds the bytes now


def test_submit_status_outputs_workflow_and_a_single_use_idempotency_key(v2):
    client, service = v2
    graph = _graph()
    graph["6"]["inputs"]["text"] = "a v2 lighthouse"
    posted = client.post("/api/v2/jobs", json={"workflow": graph}, headers={"Idempotency-Key": "k-1"})
    assert posted.status_code == 201, posted.text
    job = posted.json()
    assert job["status"] == "queued" and job["urls"]["events"] == f"/api/v2/jobs/{job['id']}/events"
    assert service.store.get_items(job["id"], 0, 1)[0].params["prompt"] == "a v2 lighthouse"
    again = client.post("/api/v2/jobs", json={"workflow": graph}, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 422 and again.json()["error"]["code"] == "idempotency_key_reuse"
    assert len(service.store.list_jobs(10, 0)) == 1
    _finish(service, job["id"])
    done = client.get(f"/api/v2/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["progress"]["value"] == 1.0 and done["metrics"] == {"queue_ms": 5, "execution_ms": 20}
    [out] = done["outputs"]
    assert out["node_id"] == "9" and out["type"] == "image" and out["size_bytes"] == len(PNG)
    assert client.get(f"/api/v2/assets/{out['id']}").json()["job_id"] == job["id"]
    assert client.get(f"/api/v2/assets/{out['id']}/content").content == PNG
    stored = client.get(f"/api/v2/jobs/{job['id']}/workflow").json()
    assert stored == {"workflow": graph, "format": "api"}


def test_refusals_name_what_is_wrong(v2):
    client, service = v2
    graph = _graph()
    graph["3"]["class_type"] = "KSamplerAdvanced"
    mismatch = client.post("/api/v2/jobs", json={"workflow": graph})
    assert mismatch.status_code == 422 and mismatch.json()["error"]["code"] == "invalid_workflow"
    assert "'3'" in mismatch.json()["error"]["message"]
    ui = client.post("/api/v2/jobs", json={"workflow": {"nodes": [], "links": [], "last_node_id": 1}})
    assert ui.status_code == 422 and ui.json()["error"]["code"] == "workflow_format_ui"
    reserved = client.post("/api/v2/jobs", json={"workflow": _graph(), "webhook_url": "http://x"})
    assert reserved.status_code == 422 and "webhook_url" in reserved.json()["error"]["message"]
    assert client.get("/api/v2/jobs/" + "0" * 32).json()["error"]["code"] == "not_found"
    assert client.get("/api/v2/jobs/../../etc").status_code == 404
    assert service.store.list_jobs(10, 0) == []


def test_cancel_is_idempotent_and_jobs_are_listed_newest_first_in_pages(v2):
    client, _ = v2
    job = client.post("/api/v2/jobs", json={"workflow": _graph()}).json()
    assert client.post(f"/api/v2/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    assert client.post(f"/api/v2/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    newer = client.post("/api/v2/jobs", json={"workflow": _graph()}).json()
    first = client.get("/api/v2/jobs", params={"limit": 1}).json()
    assert [j["id"] for j in first["jobs"]] == [newer["id"]] and first["next_cursor"] == "1"
    second = client.get("/api/v2/jobs", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [(j["id"], j["status"]) for j in second["jobs"]] == [(job["id"], "canceled")]
    assert client.get("/api/v2/jobs", params={"metadata[team]": "a"}).json() == {"jobs": [], "next_cursor": None}
    assert client.get("/api/v2/jobs", params={"cursor": "x"}).json()["error"]["code"] == "invalid_cursor"
    for huge in ("9999999999999999999", "1" * 20, "10000000000"):
        r = client.get("/api/v2/jobs", params={"cursor": huge})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor", huge


def test_the_event_stream_of_a_finished_job_sends_its_outputs_then_its_terminal_status(v2):
    client, service = v2
    job = client.post("/api/v2/jobs", json={"workflow": _graph()}).json()
    _finish(service, job["id"])
    with client.stream("GET", f"/api/v2/jobs/{job['id']}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        names = [line.split(": ", 1)[1] for line in resp.iter_lines() if line.startswith("event: ")]
    assert names == ["output", "status"]


def test_the_live_stream_sends_progress_then_output_and_ends_on_the_terminal_status(v2):
    _, service = v2
    job, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}]))

    async def go() -> list[tuple[str, dict]]:
        stream = job_stream(service, job.id, "http://h")
        seen = [await anext(stream)]
        service.live.publish(job.id, {"event": "queued", "job_id": job.id, "index": 0, "position": 3})
        seen.append(await anext(stream))
        (lease,) = service.store.lease("w", 1, 60, 3)
        service.live.publish(job.id, {"event": "started", "job_id": job.id, "index": 0})
        seen.append(await anext(stream))
        service.live.publish(job.id, {"event": "progress", "job_id": job.id, "index": 0, "value": 2, "max": 4, "node_id": "3"})
        seen.append(await anext(stream))
        _finish_lease(service, lease)
        service.live.publish(job.id, {"event": "item", "job_id": job.id, "index": 0, "status": "succeeded"})
        seen += [frame async for frame in stream]
        return [_parse(f) for f in seen]

    frames = asyncio.run(go())
    assert frames[0] == ("status", {"status": "queued", "queue_position": None})
    assert frames[1] == ("status", {"status": "queued", "queue_position": 3})
    assert frames[2] == ("status", {"status": "running", "queue_position": None})
    kind, progress = frames[3]
    assert kind == "progress" and progress["step"] == 2 and progress["steps"] == 4 and progress["value"] == 0.5
    assert progress["current_node"] == "3" and progress["current_node_class"] == "KSampler"
    assert [k for k, _ in frames[4:]] == ["output", "status"] and frames[-1][1]["status"] == "succeeded"


def _finish_lease(service: JobService, lease) -> None:
    key = f"{lease.job_id}/00000-a1-save_image-0.png"
    service.storage.put(key, PNG, "image/png")
    output = {"output": "save_image", "node_id": "9", "index": 0, "kind": "image", "media_type": "image/png", "key": key}
    assert service.store.complete("w", lease, {"outputs": [output]})


def _parse(frame: str) -> tuple[str, dict]:
    event, data = frame.strip().split("\n")
    return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))
