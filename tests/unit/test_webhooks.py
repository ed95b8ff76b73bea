from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from comfybento.errors import InvalidRequest
from comfybento.jobs.webhooks import AllowList, sign, verify


def test_signature_follows_standard_webhooks():
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    body = b'{"type":"job.succeeded"}'
    sig = sign(secret, "msg_1", 1700000000, body)
    expected = base64.b64encode(hmac.new(b"0123456789abcdef", b"msg_1.1700000000." + body, hashlib.sha256).digest()).decode()
    assert sig == f"v1,{expected}"


def test_verify_checks_body_secret_and_timestamp():
    ts = int(time.time())
    body = b"{}"
    headers = {"webhook-id": "m", "webhook-timestamp": str(ts), "webhook-signature": sign("s3cret", "m", ts, body)}
    assert verify("s3cret", headers, body)
    assert not verify("other", headers, body)
    assert not verify("s3cret", headers, b'{"x":1}')
    old = dict(headers, **{"webhook-timestamp": str(ts - 3600)})
    old["webhook-signature"] = sign("s3cret", "m", ts - 3600, body)
    assert not verify("s3cret", old, body)


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
