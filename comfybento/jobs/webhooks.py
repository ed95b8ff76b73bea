"""Signed webhook deliveries (Standard Webhooks), with an allow-list and retries.

Each POST carries `webhook-id`, `webhook-timestamp` and `webhook-signature:
v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`. A secret written as
`whsec_<base64>` is base64-decoded first, as the spec says; any other secret
is used as UTF-8 bytes.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import httpx

from comfybento.errors import InvalidRequest
from comfybento.jobs.records import Delivery, backoff_s, now


def secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does: check the timestamp window and any v1 signature."""
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(ts), body)
    return any(hmac.compare_digest(expected, sig) for sig in headers.get("webhook-signature", "").split(" "))


class AllowList:
    """Callback URLs must be http(s), and their host must match the list.

    Entries are host names (`hooks.example.com`, `*.example.com`) or networks
    (`10.0.0.0/8`, `127.0.0.1`). With an empty list, any host that resolves only
    to public addresses is allowed; loopback, private, link-local and reserved
    addresses never are unless listed.
    """

    def __init__(self, entries: Sequence[str]) -> None:
        self.hosts = [e.lower() for e in entries if not _is_network(e)]
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if _is_network(e)]

    def check(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidRequest(f"webhook url {url!r} must be an http(s) URL")
        host = parsed.hostname.lower()
        if any(fnmatch.fnmatch(host, pattern) for pattern in self.hosts):
            return
        addresses = _resolve(host)
        if not addresses:
            raise InvalidRequest(f"webhook url {url!r}: host {host!r} does not resolve")
        for address in addresses:
            if any(address in net for net in self.networks):
                continue
            if self.networks or self.hosts or not address.is_global:
                raise InvalidRequest(f"webhook url {url!r}: address {address} of {host!r} is not in the webhook allow-list")


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return []
    return sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=str)


def attempt(delivery: Delivery, secret: str, allow: AllowList, max_attempts: int, base_backoff_s: float, timeout_s: float) -> Delivery:
    """One POST; updates the delivery's state, log and next attempt time."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    entry: dict[str, Any] = {"attempt": delivery.attempts + 1, "at": now()}
    try:
        allow.check(delivery.url)  # again at delivery time: DNS may have changed
        headers = {"content-type": "application/json", "webhook-id": delivery.id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, delivery.id, timestamp, body)}
        resp = httpx.post(delivery.url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False)
        entry["status_code"] = resp.status_code
        ok = 200 <= resp.status_code < 300
    except (httpx.HTTPError, InvalidRequest) as exc:
        entry["error"] = str(exc)
        ok = False
    delivery.attempts += 1
    entry["ok"] = ok
    delivery.log.append(entry)
    if ok:
        delivery.state = "delivered"
    elif delivery.attempts >= max_attempts:
        delivery.state = "failed"
    else:
        delivery.next_attempt_at = now() + backoff_s(delivery.attempts, base_backoff_s)
    return delivery
