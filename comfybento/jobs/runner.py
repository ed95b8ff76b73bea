"""The job worker of one replica: lease items, run them through the engine, store results.

Items go to the engine through the same batchable API as live requests, so a
job's items share GPU batches with them. A lease is renewed while its item
runs; if this replica dies, the lease expires and another replica (or this
one after a restart) runs the item. A result is recorded only while the lease
is held, so it is stored exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from comfybento.jobs.records import Lease, backoff_s, now
from comfybento.jobs.store import JobStore
from comfybento.jobs.webhooks import AllowList, attempt
from comfybento.outputs.encoding import EXTENSIONS
from comfybento.outputs.storage import Storage
from comfybento.serving.messages import ItemResult

log = logging.getLogger(__name__)

OnEvent = Callable[[dict[str, Any]], None]
# (workflow, item values, seed, event callback) -> result; events are the engine's (queued, started, progress ...)
Execute = Callable[[str, dict[str, Any], "int | None", OnEvent], Awaitable[ItemResult]]
PERMANENT_KINDS = ("invalid", "workflow", "node")


def cache_key(lease: Lease) -> str:
    doc = {"workflow": lease.workflow, "params": lease.params, "seed": lease.seed}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class JobRunner:
    def __init__(self, store: JobStore, storage: Storage, execute: Execute, *, concurrency: int, lease_s: int,
                 max_attempts: int, retry_base_s: float, retention_s: int, webhook_secret: str, allow: AllowList,
                 webhook_max_attempts: int, webhook_backoff_s: float) -> None:
        self.store = store
        self.storage = storage
        self.execute = execute
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retention_s = retention_s
        self.webhook = (webhook_secret, allow, webhook_max_attempts, webhook_backoff_s)
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}
        # (job id, index) -> {"step": i, "steps": n} of the items running on this replica
        self.progress: dict[tuple[str, int], dict[str, int]] = {}
        self._stop = asyncio.Event()

    async def run_forever(self) -> None:
        last_renew = last_expire = 0.0
        while not self._stop.is_set():
            try:
                leased = await self._fill()
                t = now()
                if self._running and t - last_renew > self.lease_s / 3:
                    await asyncio.to_thread(self.store.renew, self.owner, list(self._running), self.lease_s)
                    last_renew = t
                await self._deliver()
                if t - last_expire > 60:
                    await self._expire()
                    last_expire = t
            except Exception:
                log.exception("job runner loop failed; retrying")
                leased = 0
            await asyncio.sleep(0.05 if leased else 0.25)

    async def stop(self) -> None:
        self._stop.set()
        for task in list(self._running.values()):
            task.cancel()

    async def _fill(self) -> int:
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        leases = await asyncio.to_thread(self.store.lease, self.owner, free, self.lease_s)
        for lease in leases:
            key = (lease.job_id, lease.index)
            task = asyncio.create_task(self._run_item(lease))
            self._running[key] = task
            task.add_done_callback(lambda _t, k=key: (self._running.pop(k, None), self.progress.pop(k, None)))  # type: ignore[misc]
        return len(leases)

    async def _run_item(self, lease: Lease) -> None:
        try:
            if lease.use_cache and (cached := await asyncio.to_thread(self.store.cache_get, cache_key(lease))):
                await asyncio.to_thread(self.store.complete, self.owner, lease, {**cached, "cached": True})
                return
            def on_event(event: dict[str, Any], key: tuple[str, int] = (lease.job_id, lease.index)) -> None:
                if event.get("event") == "progress":
                    self.progress[key] = {"step": int(event["value"]), "steps": int(event["max"])}

            try:
                result = await self.execute(lease.workflow, lease.params, lease.seed, on_event)
            except Exception as exc:  # engine unreachable, shutting down ...: transient
                log.warning("job %s item %d: engine call failed: %s", lease.job_id, lease.index, exc)
                result = ItemResult(ok=False, status=503, error=f"engine unavailable: {exc}", error_kind="internal")
            if result.ok:
                await asyncio.to_thread(self._record_success, lease, result)
            else:
                await asyncio.to_thread(self._record_failure, lease, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s item %d: could not record the result; the lease will expire and it reruns", lease.job_id, lease.index)

    def _record_success(self, lease: Lease, result: ItemResult) -> None:
        outputs = []
        for blob in result.outputs:
            ext = EXTENSIONS.get(blob.media_type, "bin")
            key = f"{lease.job_id}/{lease.index:05d}-a{lease.attempt}-{blob.output}-{blob.index}.{ext}"
            self.storage.put(key, blob.data, blob.media_type)
            outputs.append({"output": blob.output, "node_id": blob.node_id, "index": blob.index, "width": blob.width,
                            "height": blob.height, "media_type": blob.media_type, "key": key})
        record = {"outputs": outputs, "queue_ms": result.queue_ms, "execution_ms": result.execution_ms, "batch_size": result.batch_size}
        if not self.store.complete(self.owner, lease, record):
            for out in outputs:  # the lease was lost: another worker owns this item now
                self.storage.delete(str(out["key"]))
            return
        if lease.use_cache:
            self.store.cache_put(cache_key(lease), record)

    def _record_failure(self, lease: Lease, result: ItemResult) -> None:
        kind: str = result.error_kind or "internal"
        transient = kind not in PERMANENT_KINDS
        if kind == "internal" and result.status == 503:
            kind = "unavailable"
        error = {"kind": kind, "message": result.error or "failed", "retryable": transient,
                 "node_id": result.node_id, "class_type": result.class_type}
        retry_at = now() + backoff_s(lease.attempt, self.retry_base_s) if transient and lease.attempt < self.max_attempts else None
        self.store.fail(self.owner, lease, error, retry_at)

    async def _deliver(self) -> None:
        secret, allow, max_attempts, base = self.webhook
        due = await asyncio.to_thread(self.store.due_deliveries, self.owner, 20, 30.0)
        for delivery in due:
            done = await asyncio.to_thread(attempt, delivery, secret, allow, max_attempts, base, 10.0)
            await asyncio.to_thread(self.store.save_delivery, done)

    async def _expire(self) -> None:
        expired = await asyncio.to_thread(self.store.expire, now() - self.retention_s)
        for job_id in expired:
            await asyncio.to_thread(self.storage.delete_prefix, job_id)
