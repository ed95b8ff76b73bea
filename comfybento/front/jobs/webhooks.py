"""Signed webhook deliveries (Standard Webhooks), with an allow-list (comfybento/urlguard.py) and retries.

Each POST carries `webhook-id`, `webhook-timestamp` and `webhook-signature`,
made by the `standardwebhooks` library with a `whsec_<base64>` secret: the
configured one, or one generated once per replica and kept in its work dir.
Nothing is ever sent unsigned. Deliveries run on their own task with bounded
concurrency and a deadline per attempt (see the runner), never on the loop
that renews leases. The deadline covers the whole attempt, the receiver's
answer included, which must also keep up a minimum rate (comfybento/transfer.py);
only its first 64 KiB are read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from comfybento.config import parse_webhook_secret
from comfybento.errors import InvalidRequest
from comfybento.front.jobs.records import Delivery, backoff_s, now
from comfybento.transfer import TooSlow, TransferLimits, read_limited
from comfybento.urlguard import AllowList, asend_checked

log = logging.getLogger(__name__)

ANSWER_BYTES = 64 * 1024  # of a receiver's answer read (its status is what counts)


@dataclass(frozen=True)
class WebhookPolicy:
    max_attempts: int
    backoff_s: float
    # Longest one attempt may take (the allow-list's DNS look-up, the POST and the answer), start to end.
    timeout_s: float = 10.0
    # Bytes a second the answer must keep up over any 5 s (0: no minimum).
    min_bytes_per_s: int = 1024
    # Deliveries in flight at once on a replica.
    concurrency: int = 4


def load_or_create_secret(path: Path) -> str:
    """The secret kept at `path`; the first process to need it writes a new one (mode 0600), the others read that one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # whole file or nothing: a racing process either wins or reads the winner's
            log.warning("COMFYBENTO_WEBHOOK_SECRET is not set: webhooks are signed with a secret generated in %s", path)
        except FileExistsError:
            log.info("COMFYBENTO_WEBHOOK_SECRET is not set: webhooks are signed with the secret in %s", path)
        finally:
            tmp.unlink()
    else:
        log.info("COMFYBENTO_WEBHOOK_SECRET is not set: webhooks are signed with the secret in %s", path)
    return parse_webhook_secret(path.read_text(encoding="utf-8").strip(), str(path))


def signed_request(delivery: Delivery, signer: Webhook) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(delivery.payload, separators=(",", ":"))
    at = datetime.now(tz=UTC)
    headers = {"content-type": "application/json", "webhook-id": delivery.id, "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": signer.sign(delivery.id, at, body)}
    return body.encode(), headers


async def attempt(delivery: Delivery, signer: Webhook, allow: AllowList, client: httpx.AsyncClient, policy: WebhookPolicy,
                  resolver: Executor) -> Delivery:
    """One POST within policy.timeout_s; updates the delivery's state, log and next attempt time."""
    entry: dict[str, Any] = {"attempt": delivery.attempts + 1, "at": now()}
    try:
        async with asyncio.timeout(policy.timeout_s):
            # Checked again (DNS may have changed), and the POST goes to an address this check approved.
            addresses = await asyncio.get_running_loop().run_in_executor(resolver, allow.check, delivery.url)
            body, headers = signed_request(delivery, signer)
            request = client.build_request("POST", delivery.url, content=body, headers=headers)
            resp = await asend_checked(client, request, addresses, stream=True)
            try:
                await read_limited(resp.aiter_raw(), TransferLimits(policy.timeout_s, policy.min_bytes_per_s), ANSWER_BYTES)
            finally:
                await resp.aclose()
        entry["status_code"] = resp.status_code
        ok = 200 <= resp.status_code < 300
    except TimeoutError:
        entry["error"] = f"no answer within {policy.timeout_s:g} s"
        ok = False
    except TooSlow as exc:
        entry["error"] = f"the answer {exc}, slower than {policy.min_bytes_per_s} bytes/s"
        ok = False
    except (httpx.HTTPError, InvalidRequest) as exc:
        entry["error"] = str(exc) or type(exc).__name__
        ok = False
    delivery.attempts += 1
    entry["ok"] = ok
    delivery.log.append(entry)
    if ok:
        delivery.state = "delivered"
    elif delivery.attempts >= policy.max_attempts:
        delivery.state = "failed"
    else:
        delivery.next_attempt_at = now() + backoff_s(delivery.attempts, policy.backoff_s)
    return delivery
