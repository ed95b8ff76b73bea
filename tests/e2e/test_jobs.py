"""Batch jobs against the real service: submit, progress, results, archive, cancel, webhooks, CLI."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import zipfile

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.e2e.conftest import WEBHOOK_SECRET
from tests.helpers import ROOT, png_array
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.e2e


def wait_job(server: str, job_id: str, timeout: float = 240, until: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{server}/jobs/{job_id}", timeout=30).json()
        if status["state"] in until:
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {status}")


def test_jobs_routes_are_in_openapi(server):
    paths = httpx.get(f"{server}/docs.json").json()["paths"]
    for route in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results", "/jobs/{job_id}/cancel", "/jobs/{job_id}/archive"):
        assert route in paths, route
    for gone in ("/txt2img/submit", "/txt2img/status", "/txt2img/get"):  # endpoints are not BentoML tasks (see README)
        assert gone not in paths, gone


def test_fanout_job_runs_to_completion_with_results_and_archive(server):
    body = {"workflow": "txt2img", "base": {"width": 64, "height": 64, "steps": 3},
            "fanout": {"prompt": ["a red cube", "a blue sphere"], "seed": [1, 2]}}
    resp = httpx.post(f"{server}/jobs", json=body, timeout=60)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    status = wait_job(server, job_id)
    assert status["state"] == "succeeded" and status["counts"] == {"succeeded": 4} and status["eta_s"] == 0
    assert [i["state"] for i in status["items"]] == ["succeeded"] * 4
    results = httpx.get(f"{server}/jobs/{job_id}/results", params={"limit": 3}, timeout=30).json()
    assert results["total"] == 4 and len(results["items"]) == 3
    first = results["items"][0]
    assert first["seed"] == 1 and first["attempts"] == 1 and first["execution_ms"] > 0
    image = httpx.get(first["outputs"][0]["url"], timeout=30)
    assert image.headers["content-type"] == "image/png" and png_array(image.content).shape == (64, 64, 3)
    archive = zipfile.ZipFile(io.BytesIO(httpx.get(f"{server}/jobs/{job_id}/archive", timeout=60).content))
    assert len(archive.namelist()) == 4
    assert job_id in [j["id"] for j in httpx.get(f"{server}/jobs", timeout=30).json()["jobs"]]


def test_invalid_item_rejects_the_whole_job(server):
    before = len(httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"])
    items = [{"prompt": "fine"}, {"steps": 0}, {"prompt": "ok", "sampler_name": "warp"}]
    resp = httpx.post(f"{server}/jobs", json={"workflow": "txt2img", "items": items}, timeout=30)
    assert resp.status_code == 422
    assert {(e["index"], e["field"]) for e in resp.json()["items"]} == {(1, "steps"), (2, "sampler_name")}
    assert len(httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"]) == before


def test_idempotency_key_returns_the_same_job(server):
    body = {"workflow": "txt2img", "items": [{"prompt": "x", "width": 64, "height": 64, "steps": 2}], "idempotency_key": "nightly-42"}
    first = httpx.post(f"{server}/jobs", json=body, timeout=30)
    second = httpx.post(f"{server}/jobs", json=body, timeout=30)
    assert first.status_code == 202 and second.status_code == 200 and first.json()["id"] == second.json()["id"]
    conflict = httpx.post(f"{server}/jobs", json={**body, "priority": 3}, timeout=30)
    assert conflict.status_code == 409


def test_bad_paging_and_oversized_fanouts_are_4xx(server):
    for url in ("/jobs", "/jobs/nope/results"):
        resp = httpx.get(f"{server}{url}", params={"offset": 2**70}, timeout=30)
        assert resp.status_code == 422 and "offset" in resp.text, (url, resp.text)
    huge = {"workflow": "txt2img", "base": {}, "fanout": {"prompt": ["x"] * 2000, "seed": list(range(2000))}}
    resp = httpx.post(f"{server}/jobs", json=huge, timeout=30)
    assert resp.status_code == 413 and "COMFYBENTO_JOB_MAX_ITEMS" in resp.json()["error"]


def test_cancel_stops_a_running_job(server):
    body = {"workflow": "txt2img", "base": {"width": 128, "height": 128, "steps": 60}, "fanout": {"seed": list(range(40))}}
    job_id = httpx.post(f"{server}/jobs", json=body, timeout=30).json()["id"]
    wait_job(server, job_id, until=("running", "succeeded"))
    cancelled = httpx.post(f"{server}/jobs/{job_id}/cancel", timeout=30).json()
    assert cancelled["state"] == "cancelled" and cancelled["counts"].get("cancelled", 0) > 0
    time.sleep(2)
    later = httpx.get(f"{server}/jobs/{job_id}", timeout=30).json()
    assert later["state"] == "cancelled" and later["counts"] == cancelled["counts"]
    assert httpx.get(f"{server}/jobs/nope", timeout=30).status_code == 404


def test_webhooks_are_signed_retried_and_logged(server):
    with webhook_receiver(fail_first=1, secret=WEBHOOK_SECRET) as hook:
        body = {"workflow": "txt2img", "items": [{"prompt": "w", "width": 64, "height": 64, "steps": 2}],
                "webhook": {"url": hook.url, "per_item": True}}
        job_id = httpx.post(f"{server}/jobs", json=body, timeout=30).json()["id"]
        wait_job(server, job_id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(c["status"] == 200 for c in hook.events()) < 2:
            time.sleep(0.2)
        calls = hook.events()
    assert all(c["verified"] for c in calls)  # checked by standardwebhooks in the receiver
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"not-the-service-secret").decode()).verify(calls[0]["body"], calls[0]["headers"])
    delivered = {c["json"]["type"] for c in calls if c["status"] == 200}
    assert delivered == {"item.succeeded", "job.succeeded"}
    first_id = calls[0]["headers"]["webhook-id"]
    assert calls[0]["status"] == 500
    assert [c["status"] for c in calls if c["headers"]["webhook-id"] == first_id] == [500, 200]  # retried
    log = httpx.get(f"{server}/jobs/{job_id}", timeout=30).json()["webhooks"]
    retried = next(d for d in log if d["id"] == calls[0]["headers"]["webhook-id"])
    assert retried["state"] == "delivered" and [a["status_code"] for a in retried["attempts"]] == [500, 200]
    blocked = httpx.post(f"{server}/jobs", json={**body, "webhook": {"url": "http://169.254.169.254/x"}}, timeout=30)
    assert blocked.status_code == 422 and "allow-list" in blocked.text


def test_cli_batch_end_to_end_and_resume(server, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,seed,width,height,steps\n" + "".join(f"item {i},{i},64,64,2\n" for i in range(6)))
    out = tmp_path / "images"
    cmd = [sys.executable, "-m", "comfybento", "batch", str(prompts), "--workflow", "txt2img", "--url", server,
           "--out", str(out), "--poll", "0.3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == [f"{i:05d}-save_image-0.png" for i in range(6)]
    job_id = json.loads((out / ".comfybento-job.json").read_text())["job_id"]
    (out / files[0]).unlink()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and job_id in again.stdout  # the same job, not a new one
    assert len(list(out.glob("*.png"))) == 6


@pytest.mark.parametrize("n", [17, 64])
def test_jobs_larger_than_a_batch_and_the_lease_window_finish_every_item_once(server, n):
    """17: one more than the runner's lease window (16); 64: many engine batches (the sizes the jobs issue named)."""
    items = [{"prompt": f"scale {n} {i}", "seed": 7000 + i, "steps": 2, "width": 64, "height": 64} for i in range(n)]
    job_id = httpx.post(f"{server}/jobs", json={"workflow": "txt2img", "items": items}, timeout=60).json()["id"]
    status = wait_job(server, job_id, timeout=300)
    assert status["state"] == "succeeded" and status["counts"] == {"succeeded": n}, status["counts"]
    results = httpx.get(f"{server}/jobs/{job_id}/results", params={"limit": 1000}, timeout=60).json()["items"]
    assert [r["index"] for r in results] == list(range(n))
    assert all(r["attempts"] == 1 and r["seed"] == 7000 + r["index"] and len(r["outputs"]) == 1 for r in results)
    assert len({r["outputs"][0]["url"] for r in results}) == n
