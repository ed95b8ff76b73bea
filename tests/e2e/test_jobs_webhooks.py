"""Webhooks against a real server: a stalled receiver delays nothing, and an unset secret is generated and used."""

from __future__ import annotations

import os
import stat

import httpx
import pytest

from tests.e2e.conftest import JOB_ENV, start_server, stop_server, wait_ready
from tests.e2e.test_jobs import wait_job
from tests.helpers import make_workflows_dir, service_env
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.e2e


def test_a_stalled_receiver_never_reruns_items_and_the_generated_secret_signs(tmp_path):
    work = tmp_path / "work"
    env = {**service_env(make_workflows_dir(tmp_path / "workflows", extra=()), work), **JOB_ENV, "COMFYBENTO_JOB_LEASE_S": "2"}
    env["COMFYBENTO_WEBHOOK_SECRET"] = ""  # unset: the service generates one in its work dir
    secret_file = work / "webhook-secret"
    log_path = tmp_path / "serve.log"
    # every POST hangs far longer than a lease (the service gives each attempt 10 s)
    with webhook_receiver(stall_s=60, secret=lambda: secret_file.read_text().strip()) as hook:
        proc, url = start_server(env, log_path)
        try:
            wait_ready(proc, url, log_path)
            assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
            body = {"workflow": "txt2img", "base": {"width": 128, "height": 128, "steps": 40}, "fanout": {"seed": list(range(16))},
                    "webhook": {"url": hook.url, "per_item": True}}
            job_id = httpx.post(f"{url}/jobs", json=body, timeout=30).json()["id"]
            status = wait_job(url, job_id, timeout=600)
            items = httpx.get(f"{url}/jobs/{job_id}/results", params={"limit": 100}, timeout=30).json()["items"]
            calls = hook.events()
        finally:
            stop_server(proc)
    assert status["state"] == "succeeded" and status["counts"] == {"succeeded": 16}
    assert [i["attempts"] for i in items] == [1] * 16  # no lease expired while webhooks hung: no item ran twice
    assert calls and all(c["verified"] for c in calls)  # signed with the generated secret, checked by standardwebhooks
    lines = [line for line in log_path.read_text().splitlines() if str(secret_file) in line]
    assert len(lines) == 1 and "generated" in lines[0], lines
