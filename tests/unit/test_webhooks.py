from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import threading

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from comfybento.config import Settings
from comfybento.errors import ConfigError, InvalidRequest
from comfybento.jobs.records import Delivery
from comfybento.jobs.webhooks import AllowList, load_or_create_secret, signed_request

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
    with caplog.at_level(logging.INFO, logger="comfybento.jobs.webhooks"):
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
