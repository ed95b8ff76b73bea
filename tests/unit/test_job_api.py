"""The jobs HTTP API on a real FastAPI app (in-process client), with a real SQLite store and output folder."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from comfybento.config import Settings
from comfybento.front.access import Access, AccessMiddleware
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.keys import ApiKey, hash_key, new_key
from comfybento.front.ratelimit import MemoryBuckets
from comfybento.front.root import root_app
from comfybento.models.lock import parse_lock
from comfybento.outputs.encoding import png_bytes
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import load_workflow
from tests.helpers import sample_image

ROOT = Path(__file__).resolve().parents[2]
PNG = png_bytes(sample_image(8, 8))


@pytest.fixture
def client(node_defs, tmp_path, monkeypatch):
    settings = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")})
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), settings)
    service = JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"),
                         AllowList(["127.0.0.1"]), max_items=10_000, retention_s=60)
    app = root_app(lambda: service.storage)
    app.state.jobs = service
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with TestClient(app) as c:
        yield c, service


def _finished_job(service: JobService) -> str:
    """A job whose one item finished with one image (as the runner records it)."""
    job, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}]))
    (lease,) = service.store.lease("w", 1, 60, 3)
    key = f"{job.id}/00000-a1-save_image-0.png"
    service.storage.put(key, PNG, "image/png")
    output = {"output": "save_image", "node_id": "9", "index": 0, "width": 8, "height": 8, "media_type": "image/png", "key": key}
    assert service.store.complete("w", lease, {"outputs": [output]})
    return job.id


def test_offsets_and_limits_out_of_bounds_are_a_422_naming_the_parameter(client):
    c, service = client
    job_id = _finished_job(service)
    for url in ("/jobs", f"/jobs/{job_id}/results"):
        for params in ({"offset": 2**70}, {"offset": -1}, {"limit": 0}, {"limit": 10**6}):
            resp = c.get(url, params=params)
            assert resp.status_code == 422, (url, params, resp.text)
            assert next(iter(params)) in resp.text
    assert c.get(f"/jobs/{job_id}/results", params={"offset": 10**9}).json()["items"] == []


def test_invalid_item_fields_are_errors_of_kind_invalid(client):
    c, _ = client
    resp = c.post("/jobs", json={"workflow": "txt2img", "items": [{"prompt": "a", "steps": "many"}, {"width": 3}]})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error_kind"] == "invalid" and [i["index"] for i in body["items"]] == [0, 1]
    assert "items[0].steps" in body["error"] and "items[1].width" in body["error"]


def test_a_fanout_over_the_limit_is_refused_before_it_is_built(client):
    c, _ = client
    resp = c.post("/jobs", json={"workflow": "txt2img", "base": {}, "fanout": {"prompt": ["x"] * 2000, "seed": list(range(2000))}})
    assert resp.status_code == 413
    assert "4000000 items" in resp.json()["error"] and "COMFYBENTO_JOB_MAX_ITEMS" in resp.json()["error"]


def test_archive_leaves_no_temporary_folder(client, tmp_path):
    c, service = client
    job_id = _finished_job(service)
    resp = c.get(f"/jobs/{job_id}/archive")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(resp.content))
    assert zf.namelist() == ["00000-save_image-0.png"] and zf.read("00000-save_image-0.png") == PNG
    assert c.get("/jobs/nope/archive").status_code == 404
    assert list((tmp_path / "tmp").iterdir()) == []


def test_files_route_never_follows_links(client, tmp_path):
    c, service = client
    job_id = _finished_job(service)
    assert c.get(f"/jobs/{job_id}/files/00000-a1-save_image-0.png").content == PNG
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    job_dir = tmp_path / "out" / job_id
    (job_dir / "link.png").symlink_to(outside)
    assert c.get(f"/jobs/{job_id}/files/link.png").status_code == 404
    (job_dir / "dir").mkdir()
    assert c.get(f"/jobs/{job_id}/files/dir").status_code == 404
    for name in ("%2E%2E", "%2E", "..%2Fj.db", "%2E%2E%2Fj.db"):  # (a bare ".." is resolved by the client)
        assert c.get(f"/jobs/{job_id}/files/{name}").status_code == 404, name
    # the job's folder itself replaced by a link to another folder
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "00000-a1-save_image-0.png").write_bytes(b"planted")
    job_dir.rename(tmp_path / "moved")
    job_dir.symlink_to(other)
    assert c.get(f"/jobs/{job_id}/files/00000-a1-save_image-0.png").status_code == 404
    assert c.get(f"/jobs/{job_id}/archive").status_code == 404


def test_a_job_belongs_to_the_submitting_key_and_its_idempotency_key_is_not_anothers(client):
    """Behind the real access middleware: the job's owner is the caller's key; another key reusing its idempotency key gets a 409."""
    c, service = client
    secrets = {"alice": new_key(), "bob": new_key()}
    acl = Access(tuple(ApiKey(name=n, sha256=hash_key(s)) for n, s in secrets.items()), MemoryBuckets())
    body = {"workflow": "txt2img", "items": [{"prompt": "a", "seed": 1}], "idempotency_key": "nightly"}
    with TestClient(AccessMiddleware(c.app, access=acl)) as c:
        def post(name: str) -> httpx.Response:
            return c.post("/jobs", json=body, headers={"Authorization": f"Bearer {secrets[name]}"})

        first = post("alice")
        assert first.status_code == 202 and first.json()["owner"] == "alice"
        assert first.json()["usage"] == {"images": 0, "gpu_seconds": 0.0}
        again = post("alice")
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        other = post("bob")
        assert other.status_code == 409, other.text
        assert "another API key" in other.json()["error"] and first.json()["id"] not in other.text
        def listed(name: str) -> list[str]:
            return [j["owner"] for j in c.get("/jobs", headers={"Authorization": f"Bearer {secrets[name]}"}).json()["jobs"]]

        assert listed("alice") == ["alice"] and listed("bob") == []  # each key lists its own jobs
    assert service.store.get_job(first.json()["id"]).owner == "alice"


def test_status_reports_usage_and_no_owner_without_keys(client):
    c, service = client
    job_id = _finished_job(service)
    status = c.get(f"/jobs/{job_id}").json()
    assert status["owner"] is None and status["usage"] == {"images": 1, "gpu_seconds": 0.0}
    assert c.get("/jobs").json()["jobs"][0]["usage"]["images"] == 1


def test_an_unknown_query_parameter_is_a_422_naming_it(client):
    c, service = client
    job_id = _finished_job(service)
    for url in ("/jobs", f"/jobs/{job_id}/results", "/usage"):
        resp = c.get(url, params={"limt": 5})
        assert resp.status_code == 422, (url, resp.text)
        assert resp.json()["error_kind"] == "invalid" and "unknown query parameter 'limt'" in resp.json()["error"]
    assert c.get("/jobs", params={"limit": 5}).status_code == 200


def test_the_frameworks_refusals_are_in_the_error_shape_and_a_405_allows_every_method(client):
    c, _ = client
    resp = c.request("OPTIONS", "/jobs")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, POST"  # Starlette named only the first route's
    assert resp.json()["error_kind"] == "invalid" and resp.json()["request_id"]
    assert c.request("OPTIONS", "/jobs/estimate").headers["allow"] == "POST"  # not /jobs/{job_id}'s GET
    resp = c.get("/no/such/route")
    assert resp.status_code == 404 and resp.json()["error_kind"] == "not_found"
    resp = c.post("/jobs", content=b"\x7f\xff8\xfe", headers={"content-type": "application/json"})  # not UTF-8
    assert resp.status_code == 400 and resp.json()["error_kind"] == "invalid", resp.text


def test_true_and_false_are_not_numbers(client):
    c, _ = client
    resp = c.post("/jobs", json={"workflow": "txt2img", "items": [{"cfg": False}, {"steps": True}, {"seed": True}]})
    assert resp.status_code == 422 and [i["field"] for i in resp.json()["items"]] == ["cfg", "steps", "seed"], resp.text
    assert c.post("/jobs", json={"workflow": "txt2img", "priority": True}).status_code == 422
