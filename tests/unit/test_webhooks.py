from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from comfybento.config import Settings
from comfybento.errors import ConfigError, InvalidRequest
from comfybento.front.jobs.records import Delivery
from comfybento.front.jobs.webhooks import AllowList, WebhookPolicy, attempt, load_or_create_secret, signed_request
from tests.file_server import file_server

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()


def test_requests_are_signed_as_standard_webhooks_says():
    delivery = Delivery(id="job1:job", job_id="job1", event="job.succeeded", payload={"type": "job.succeeded"}, url="http://x")
    body, headers = signed_request(delivery, Webhook(SECRET))
    assert headers["webhook-id"] == "job1:job" and json.loads(body) == {"type": "job.succeeded"}
    signed = f"job1:job.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(b"0123456789abcdef", signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another-secret-16b").decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"type":"forged"}', headers)


def test_a_malformed_secret_is_a_config_error_at_startup():
    for bad in ("s3cret", "whsec_", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError, match="COMFYBENTO_WEBHOOK_SECRET"):
            Settings.from_env({"COMFYBENTO_WEBHOOK_SECRET": bad})
    assert Settings.from_env({"COMFYBENTO_WEBHOOK_SECRET": SECRET}).webhook_secret == SECRET


def test_an_unset_secret_is_generated_once_and_shared(tmp_path, caplog):
    path = Settings.from_env({"COMFYBENTO_WORK_DIR": str(tmp_path)}).webhook_secret_file
    assert path == tmp_path / "webhook-secret"
    results: list[str] = []
    with caplog.at_level(logging.INFO, logger="comfybento.front.jobs.webhooks"):
        threads = [threading.Thread(target=lambda: results.append(load_or_create_secret(path))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(set(results)) == 1 and results[0].startswith("whsec_") and len(base64.b64decode(results[0][6:])) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webhook-secret"]  # no temporary file left
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 8 and all(str(path) in line for line in lines)  # one line per process (here: per call)
    assert sum("generated" in line for line in lines) == 1
    assert load_or_create_secret(path) == results[0]  # a restart reuses it


def test_a_malformed_secret_file_is_a_config_error(tmp_path):
    path = tmp_path / "webhook-secret"
    path.write_text("not-a-secret\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_or_create_secret(path)


def test_allow_list_blocks_internal_addresses_by_default():
    allow = AllowList([])
    for url in ("http://127.0.0.1/hook", "http://10.0.0.5/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                "ftp://example.com/x", "http://localhost/x"):
        with pytest.raises(InvalidRequest):
            allow.check(url)


def test_allow_list_entries_admit_hosts_and_networks():
    allow = AllowList(["127.0.0.1", "*.internal.example", "10.1.0.0/16"])
    allow.check("http://127.0.0.1:8080/hook")
    allow.check("https://hooks.internal.example/x")
    allow.check("http://10.1.2.3/x")
    with pytest.raises(InvalidRequest, match="allow-list"):
        allow.check("http://10.2.0.1/x")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _attempt(url: str, policy: WebhookPolicy) -> tuple[Delivery, float]:
    delivery = Delivery(id="j:job", job_id="j", event="job.succeeded", payload={"type": "job.succeeded"}, url=url)
    started = time.monotonic()
    with ThreadPoolExecutor(1) as resolver:
        async with httpx.AsyncClient(timeout=policy.timeout_s) as client:
            done = await attempt(delivery, Webhook(SECRET), AllowList(["localhost"]), client, policy, resolver)
    return done, time.monotonic() - started


@pytest.mark.anyio
@pytest.mark.parametrize("drip_headers", [False, True])
async def test_a_receiver_that_drips_its_answer_fails_the_attempt_at_the_deadline(drip_headers):
    with file_server() as receiver:
        url = receiver.add("/hook", b"x" * 60, "text/plain", drip_s=1, drip_headers=drip_headers)
        done, took = await _attempt(url, WebhookPolicy(max_attempts=3, backoff_s=1, timeout_s=2, min_bytes_per_s=0))
    assert done.log[-1]["ok"] is False and done.log[-1]["error"] == "no answer within 2 s" and took < 3
    assert done.state == "pending" and done.attempts == 1


@pytest.mark.anyio
async def test_a_receiver_below_the_minimum_rate_fails_the_attempt():
    with file_server() as receiver:
        url = receiver.add("/hook", b"x" * 60, "text/plain", drip_s=0.5)
        done, took = await _attempt(url, WebhookPolicy(max_attempts=1, backoff_s=1, timeout_s=60, min_bytes_per_s=1024))
        assert done.log[-1]["ok"] is False and 4.5 < took < 6.5, done.log
        assert done.log[-1]["error"].startswith("the answer came at fewer than 1024 bytes/s over 5 s") and done.state == "failed"
        fine = receiver.add("/ok", b"thanks", "text/plain")
        delivered, _ = await _attempt(fine, WebhookPolicy(max_attempts=1, backoff_s=1, timeout_s=5, min_bytes_per_s=1024))
    assert delivered.state == "delivered" and delivered.log[-1]["status_code"] == 200


def test_the_webhook_and_model_fetch_limits_are_settings():
    settings = Settings.from_env({"COMFYBENTO_WEBHOOK_TIMEOUT_MS": "2500", "COMFYBENTO_WEBHOOK_MIN_BYTES_PER_S": "10",
                                  "COMFYBENTO_MODEL_FETCH_S": "60", "COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S": "0",
                                  "COMFYBENTO_MIN_URL_BYTES_PER_S": "99"})
    assert (settings.webhook_timeout_s, settings.webhook_min_bytes_per_s) == (2.5, 10)
    assert (settings.model_fetch_s, settings.model_fetch_min_bytes_per_s) == (60, 0)
    assert settings.limits.min_url_bytes_per_s == 99
