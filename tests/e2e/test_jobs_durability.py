"""Crashes, restarts and a second replica lose nothing and duplicate nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import JOB_ENV, kill_server, start_server, stop_server, wait_ready
from tests.e2e.test_jobs import wait_job
from tests.helpers import free_port, make_workflows_dir, service_env
from tests.redis_server import redis_server

pytestmark = pytest.mark.e2e

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _results(url: str, job_id: str) -> list[dict]:
    return httpx.get(f"{url}/jobs/{job_id}/results", params={"limit": 1000}, timeout=60).json()["items"]


def _wait_progress(url: str, job_id: str, at_least: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if status["counts"].get("succeeded", 0) >= at_least:
            return status
        time.sleep(0.2)
    raise AssertionError(f"no progress: {status}")


def _check_exactly_once(items: list[dict], total: int) -> None:
    assert [i["index"] for i in items] == list(range(total))
    assert all(i["state"] == "succeeded" and len(i["outputs"]) == 1 for i in items)
    urls = [i["outputs"][0]["url"] for i in items]
    assert len(set(urls)) == total  # one result per item, none shared or duplicated


def test_kill_9_mid_job_then_restart_completes_every_item_once(tmp_path):
    env = {**service_env(make_workflows_dir(tmp_path / "workflows", extra=()), tmp_path / "work"), **JOB_ENV}
    proc, url = start_server(env, tmp_path / "first.log")
    try:
        wait_ready(proc, url, tmp_path / "first.log")
        body = {"workflow": "txt2img", "base": {"width": 128, "height": 128, "steps": 40}, "fanout": {"seed": list(range(50))}}
        job_id = httpx.post(f"{url}/jobs", json=body, timeout=30).json()["id"]
        status = _wait_progress(url, job_id, at_least=8)
        assert status["state"] == "running"
        before = {i["index"]: i for i in _results(url, job_id) if i["state"] == "succeeded"}
    finally:
        kill_server(proc)
    assert 8 <= len(before) < 50
    proc, url = start_server(env, tmp_path / "second.log")
    try:
        wait_ready(proc, url, tmp_path / "second.log")
        status = wait_job(url, job_id, timeout=600)
        assert status["state"] == "succeeded" and status["counts"] == {"succeeded": 50}
        after = _results(url, job_id)
        _check_exactly_once(after, 50)
        for index, item in before.items():  # finished before the crash: not redone, result unchanged
            assert after[index]["attempts"] == item["attempts"]
            assert after[index]["outputs"][0]["url"].rsplit("/", 1)[1] == item["outputs"][0]["url"].rsplit("/", 1)[1]
        assert httpx.get(after[-1]["outputs"][0]["url"], timeout=30).status_code == 200
    finally:
        stop_server(proc)


@contextmanager
def moto_server(tmp: Path):
    port = free_port()
    binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=(tmp / "moto.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_replicas_share_redis_and_s3_and_survive_one_being_killed(tmp_path, monkeypatch):
    import boto3

    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    workflows = make_workflows_dir(tmp_path / "workflows", extra=())
    with redis_server(tmp_path) as redis_url, moto_server(tmp_path) as s3_url:
        boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket="outputs")
        shared = {**JOB_ENV, **AWS, "COMFYBENTO_JOBS_BACKEND": "redis", "COMFYBENTO_REDIS_URL": redis_url,
                  "COMFYBENTO_STORAGE": "s3", "COMFYBENTO_S3_BUCKET": "outputs", "COMFYBENTO_S3_ENDPOINT_URL": s3_url}
        # two replicas as on two machines: each its own work dir (and BentoML home, see start_server)
        a, url_a = start_server({**service_env(workflows, tmp_path / "a"), **shared}, tmp_path / "a.log")
        b, url_b = start_server({**service_env(workflows, tmp_path / "b"), **shared}, tmp_path / "b.log")
        try:
            wait_ready(a, url_a, tmp_path / "a.log")
            wait_ready(b, url_b, tmp_path / "b.log")
            body = {"workflow": "txt2img", "base": {"width": 128, "height": 128, "steps": 40}, "fanout": {"seed": list(range(40))}}
            job_id = httpx.post(f"{url_a}/jobs", json=body, timeout=30).json()["id"]
            assert httpx.get(f"{url_b}/jobs/{job_id}", timeout=30).json()["id"] == job_id  # one shared queue
            _wait_progress(url_a, job_id, at_least=6)
            kill_server(b)
            status = wait_job(url_a, job_id, timeout=600)
            assert status["state"] == "succeeded" and status["counts"] == {"succeeded": 40}
            items = _results(url_a, job_id)
            _check_exactly_once(items, 40)
            presigned = items[0]["outputs"][0]["url"]
            assert presigned.startswith(s3_url) and "Signature" in presigned
            assert httpx.get(presigned, timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            stop_server(a)
            if b.poll() is None:
                stop_server(b)


def test_servers_with_different_workflows_share_one_store_and_each_runs_its_own(tmp_path):
    """The reported failure: a second server on the same job store (here the same work folder) that serves other
    workflows leased half of a txt2img job and failed it ("engine unavailable: 'txt2img'", 4 attempts each).
    Each replica now leases only what it serves: every item succeeds at its first attempt, on the server that has it."""
    other = tmp_path / "other-workflows"
    other.mkdir()
    shutil.copy(Path(__file__).parents[1] / "graphs" / "img2img.json", other / "img2img.json")
    work = tmp_path / "work"
    ours = {**service_env(make_workflows_dir(tmp_path / "workflows", extra=()), work), **JOB_ENV}
    theirs = {**service_env(other, work), **JOB_ENV}
    first, url = start_server(ours, tmp_path / "ours.log")
    second, other_url = start_server(theirs, tmp_path / "theirs.log")
    try:
        wait_ready(first, url, tmp_path / "ours.log")
        wait_ready(second, other_url, tmp_path / "theirs.log")
        items = [{"prompt": f"p {i}", "seed": i, "steps": 2, "width": 64, "height": 64} for i in range(64)]
        job_id = httpx.post(f"{url}/jobs", json={"workflow": "txt2img", "items": items}, timeout=60).json()["id"]
        status = wait_job(other_url, job_id, timeout=300)  # the store is shared: either server reports the job
        assert status["state"] == "succeeded" and status["counts"] == {"succeeded": 64}, status["counts"]
        results = _results(url, job_id)
        _check_exactly_once(results, 64)
        assert {i["attempts"] for i in results} == {1}
    finally:
        stop_server(second)
        stop_server(first)
