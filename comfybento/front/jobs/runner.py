"""The job worker of one replica: lease items, run them through the engine, store results.

Items go to the engine through the same batchable API as live requests, so a
job's items share GPU batches with them. A lease is renewed while its item
runs; if this replica dies, the lease expires and another replica (or this
one after a restart) runs the item. A result is recorded only while the lease
is held, so it is stored exactly once. Every lease counts an attempt, so an
item that kills or hangs the engine each time is given up after
`max_attempts` leases.

Each succeeded item's usage (`records.item_usage`: images, GPU-seconds; a
cached result counts its images and no GPU-seconds) is added to its job by the
store, and, once the store accepted the result, handed to `on_usage(owner,
images, gpu_seconds)` with the job's owner (the API key that submitted it), which
charges that key (front/access.py `charge_owner`). A failing hook is logged;
it never stops the runner. Recording a success and charging it run to their end
even when a stop cancels the item (`run_forever` waits up to FINISH_TIMEOUT_S for
them), so a result the store accepted is charged.

A replica leases only items of the workflows it serves (`workflows`): replicas
with different workflows can share one store.

Retries are for transient causes only (`TRANSIENT_KINDS`: a full disk, the engine restarting
or shedding load, out of memory, a cancelled engine call), with exponential
backoff. Any other failure (an invalid item, a node error, a bug) fails the
item on its first attempt with its real cause. An exception that `execute`
raises is a bug of ours: it is logged once with its traceback, the job id and
the item index, and the item fails with an internal error that names the
exception's type but shows no internals (`errors.describe`).

`run_forever` runs three loops side by side, so none can hold up another:
leasing, lease renewal (on its own thread, so slow storage writes or store
reads never delay it) and webhook delivery (its own task, a bounded number of
POSTs in flight, each with a deadline). Finished jobs are deleted by the
front's retention (jobs/retention.py), with URL outputs and v2 assets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from standardwebhooks import Webhook

from comfybento.engine.messages import ItemResult
from comfybento.errors import ComfyBentoError, NotFound, StorageFull, describe
from comfybento.front.jobs.live import JobEvents
from comfybento.front.jobs.records import Delivery, Lease, backoff_s, item_usage, now
from comfybento.front.jobs.store import JobStore
from comfybento.front.jobs.webhooks import AllowList, WebhookPolicy, attempt
from comfybento.outputs.media import extension_for
from comfybento.outputs.storage import Storage

log = logging.getLogger(__name__)

OnEvent = Callable[[dict[str, Any]], None]
# (workflow, item values, seed, event callback) -> result; events are the engine's (queued, started, progress ...)
Execute = Callable[[str, dict[str, Any], "int | None", OnEvent], Awaitable[ItemResult]]
# (owner: the job's API key name or None, images, GPU-seconds) of a succeeded item
OnUsage = Callable[["str | None", int, float], Awaitable[None]]
# Error kinds worth another attempt later; every other kind fails the item at once.
TRANSIENT_KINDS = frozenset({"unavailable", "oom", "cancelled", "storage_full"})
# How long a stop waits for successes being recorded and charged.
FINISH_TIMEOUT_S = 10.0
RECORD_THREADS = 2  # threads that store results (files, then the store's record)
T = TypeVar("T")


def cache_key(lease: Lease) -> str:
    doc = {"workflow": lease.workflow, "params": lease.params, "seed": lease.seed}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


async def no_usage_hook(owner: str | None, images: int, gpu_seconds: float) -> None:
    """The default `on_usage`: nothing to charge (API keys are off)."""


def output_key(lease: Lease, output: str, index: int, ext: str) -> str:
    """Where an item's output goes: under its job, named by attempt (a lost lease's files never collide with the winner's)."""
    return f"{lease.job_id}/{lease.index:05d}-a{lease.attempt}-{output}-{index}.{ext}"


class JobRunner:
    def __init__(self, store: JobStore, storage: Storage, execute: Execute, *, workflows: frozenset[str], concurrency: int,
                 lease_s: float, max_attempts: int, retry_base_s: float, webhook_secret: str,
                 allow: AllowList, webhooks: WebhookPolicy, on_usage: OnUsage = no_usage_hook,
                 live: JobEvents | None = None, may_lease: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.workflows = workflows  # what this replica's engine runs: the only items it leases
        self.storage = storage
        self.execute = execute
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.signer = Webhook(webhook_secret)  # an empty secret raises: no webhook is ever sent unsigned
        self.allow = allow
        self.webhooks = webhooks
        self.on_usage = on_usage
        self.live = live if live is not None else JobEvents()  # items' events as they happen, to streams (front/jobs/live.py)
        self.may_lease = may_lease  # False pauses leasing (a disk below its watermark: outputs/diskspace.py); items wait
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._finishing: set[asyncio.Task[Any]] = set()  # successes being recorded and charged (see `_unstoppable`)
        self._deliveries: set[asyncio.Task[None]] = set()
        # (job id, index) -> {"step": i, "steps": n} of the items running on this replica
        self.progress: dict[tuple[str, int], dict[str, int]] = {}
        self._stop = asyncio.Event()
        self._leases = ThreadPoolExecutor(1, thread_name_prefix="comfybento-leases")
        self._records = ThreadPoolExecutor(RECORD_THREADS, thread_name_prefix="comfybento-job-records")
        self._resolver = ThreadPoolExecutor(webhooks.concurrency, thread_name_prefix="comfybento-webhooks")

    async def run_forever(self) -> None:
        client = httpx.AsyncClient(follow_redirects=False, timeout=self.webhooks.timeout_s)
        loops = [self._lease_loop(), self._renew_loop(), self._webhook_loop(client)]
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            await self._stop.wait()
        finally:
            for task in [*tasks, *self._deliveries, *self._running.values()]:
                task.cancel()
            await asyncio.gather(*tasks, *self._deliveries, *self._running.values(), return_exceptions=True)
            await self._drain_finishing()
            await client.aclose()
            self._leases.shutdown(wait=False, cancel_futures=True)
            self._records.shutdown(wait=False)
            self._resolver.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        """Stop every loop; items still running keep their leases until they expire (then they rerun, counted)."""
        self._stop.set()
        for task in list(self._running.values()):
            task.cancel()

    async def _drain_finishing(self) -> None:
        """Wait for the successes still being recorded and charged; log what failed (their item tasks are gone)."""
        if not self._finishing:
            return
        done, pending = await asyncio.wait(list(self._finishing), timeout=FINISH_TIMEOUT_S)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("job runner: recording a result during the stop failed", exc_info=task.exception())
        if pending:
            log.warning("job runner: %d results were still being recorded after %.0f s", len(pending), FINISH_TIMEOUT_S)

    async def _unstoppable(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` to its end even if the calling item task is cancelled (a stop); `run_forever` waits for it."""
        task = asyncio.create_task(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return await asyncio.shield(task)

    async def _idle(self, seconds: float) -> bool:
        """Sleep, waking early on stop; False once stopping."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass
        return not self._stop.is_set()

    async def _on_leases(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._leases, fn, *args)

    async def _on_records(self, fn: Callable[..., T], *args: Any) -> T:
        """Storing results on threads of the runner's own: a backlog of them never delays live requests' work (they
        use the event loop's default threads)."""
        return await asyncio.get_running_loop().run_in_executor(self._records, fn, *args)

    # ------------------------------------------------------------ loops

    async def _lease_loop(self) -> None:
        leased = 0
        while await self._idle(0.05 if leased else 0.25):
            try:
                leased = await self._fill()
            except Exception:
                log.exception("job runner: leasing failed; retrying")
                leased = 0

    async def _renew_loop(self) -> None:
        while await self._idle(self.lease_s / 3):
            if not self._running:
                continue
            try:
                await self._on_leases(self.store.renew, self.owner, list(self._running), self.lease_s)
            except Exception:
                log.exception("job runner: renewing leases failed; retrying")

    async def _webhook_loop(self, client: httpx.AsyncClient) -> None:
        claim_s = 2 * self.webhooks.timeout_s + 30  # longer than an attempt can take: nobody else sends it meanwhile
        while await self._idle(0.25):
            free = self.webhooks.concurrency - len(self._deliveries)
            if free <= 0:
                continue
            try:
                due = await asyncio.to_thread(self.store.due_deliveries, self.owner, free, claim_s)
            except Exception:
                log.exception("job runner: reading due webhooks failed; retrying")
                continue
            for delivery in due:
                task = asyncio.create_task(self._deliver(delivery, client))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, delivery: Delivery, client: httpx.AsyncClient) -> None:
        try:
            done = await attempt(delivery, self.signer, self.allow, client, self.webhooks, self._resolver)
            await asyncio.to_thread(self.store.save_delivery, done)
        except Exception:
            log.exception("webhook %s: delivery failed; its claim expires and it is retried", delivery.id)

    # ------------------------------------------------------------ items

    async def _fill(self) -> int:
        free = self.concurrency - len(self._running)
        if free <= 0 or not self.may_lease():
            return 0
        leases = await self._on_leases(self.store.lease, self.owner, free, self.lease_s, self.max_attempts, self.workflows)
        for lease in leases:
            key = (lease.job_id, lease.index)
            task = asyncio.create_task(self._run_item(lease))
            self._running[key] = task
            task.add_done_callback(lambda _t, k=key: (self._running.pop(k, None), self.progress.pop(k, None)))  # type: ignore[misc]
        return len(leases)

    async def _run_item(self, lease: Lease) -> None:
        try:
            if lease.use_cache and await self._unstoppable(self._complete_from_cache(lease)):
                return

            def on_event(event: dict[str, Any], key: tuple[str, int] = (lease.job_id, lease.index)) -> None:
                if event.get("event") == "progress":
                    self.progress[key] = {"step": int(event["value"]), "steps": int(event["max"])}
                self.live.publish(lease.job_id, {**event, "job_id": lease.job_id, "index": lease.index})

            try:
                result = await self.execute(lease.workflow, lease.params, lease.seed, on_event)
            except Exception as exc:  # `execute` answers every failure it knows as a result: this is a bug
                result = self._unexpected(lease, exc)
            if result.ok:
                recorded = await self._unstoppable(self._record_and_charge(lease, result))
                if recorded is not None:
                    self._publish_item(lease, "succeeded", outputs=recorded["outputs"])
            else:
                retrying = await self._on_records(self._record_failure, lease, result)
                self._publish_item(lease, "retrying" if retrying else "failed", error=result.error, error_kind=result.error_kind)
        except asyncio.CancelledError:
            raise
        except StorageFull as exc:  # no room for its outputs or its record: a retry, once space is back
            log.warning("job %s item %d: %s; the lease will expire and it reruns", lease.job_id, lease.index, exc)
        except Exception:
            log.exception("job %s item %d: could not record the result; the lease will expire and it reruns", lease.job_id, lease.index)

    @staticmethod
    def _unexpected(lease: Lease, exc: Exception) -> ItemResult:
        """An exception `execute` raised: logged once with its traceback; the item's error names it without internals."""
        log.error("job %s item %d (%s, attempt %d): unexpected error", lease.job_id, lease.index, lease.workflow,
                  lease.attempt, exc_info=exc)
        if isinstance(exc, ComfyBentoError):
            return ItemResult.failure(exc, lease.seed)
        message = (f"internal error ({type(exc).__name__}) while running item {lease.index} of job {lease.job_id}; "
                   "the server log has the details")
        return ItemResult(ok=False, seed=lease.seed, **{**describe(exc), "error": message})

    async def _complete_from_cache(self, lease: Lease) -> bool:
        """Complete the item from the result cache and charge it; False on a miss."""
        hit, recorded = await self._on_records(self._reuse_cached, lease)
        if hit:
            await self._charge(lease, recorded)
            if recorded is not None:
                self._publish_item(lease, "succeeded", outputs=recorded["outputs"], cached=True)
        return hit

    async def _record_and_charge(self, lease: Lease, result: ItemResult) -> dict[str, Any] | None:
        recorded = await self._on_records(self._record_success, lease, result)
        await self._charge(lease, recorded)
        return recorded

    def _publish_item(self, lease: Lease, status: str, **fields: Any) -> None:
        self.live.publish(lease.job_id, {"event": "item", "job_id": lease.job_id, "index": lease.index, "status": status, **fields})

    async def _charge(self, lease: Lease, recorded: dict[str, Any] | None) -> None:
        """Hand a recorded success's usage to `on_usage` (nothing when the store refused the result: the lease was lost)."""
        if recorded is None:
            return
        images, gpu_seconds = item_usage(recorded)
        try:
            await self.on_usage(lease.job_owner, images, gpu_seconds)
        except Exception:
            log.exception("job %s item %d: charging its usage to %r failed", lease.job_id, lease.index, lease.job_owner)

    def _reuse_cached(self, lease: Lease) -> tuple[bool, dict[str, Any] | None]:
        """Complete the item from the result cache, copying the files into its own job.

        (hit, the recorded result, or None when the store refused it); (False, None) on a miss.
        """
        key = cache_key(lease)
        cached = self.store.cache_get(key)
        if cached is None:
            return False, None
        copied: list[dict[str, Any]] = []
        try:
            for out in cached["outputs"]:
                new_key = output_key(lease, out["output"], out["index"], str(out["key"]).rsplit(".", 1)[-1])
                self.storage.put(new_key, self.storage.get(out["key"]), out["media_type"])
                copied.append({**out, "key": new_key})
        except NotFound:  # the files went (an entry made before entries were deleted with their job): a miss
            self.store.cache_delete(key)
            self._delete_outputs(copied)
            return False, None
        record = {**cached, "outputs": copied, "cached": True}
        if not self.store.complete(self.owner, lease, record):
            self._delete_outputs(copied)
            return True, None
        return True, record

    def _record_success(self, lease: Lease, result: ItemResult) -> dict[str, Any] | None:
        """Store the outputs and the result; the recorded result, or None when the lease was lost."""
        outputs = []
        for blob in result.outputs:
            key = output_key(lease, blob.output, blob.index, extension_for(blob.media_type))
            self.storage.put(key, blob.data, blob.media_type)
            outputs.append({"output": blob.output, "node_id": blob.node_id, "index": blob.index, "kind": blob.kind,
                            "width": blob.width, "height": blob.height, "media_type": blob.media_type, "key": key})
        record = {"outputs": outputs, "queue_ms": result.queue_ms, "execution_ms": result.execution_ms, "batch_size": result.batch_size}
        if not self.store.complete(self.owner, lease, record):
            self._delete_outputs(outputs)  # the lease was lost: another worker owns this item now
            return None
        if lease.use_cache:
            try:
                self.store.cache_put(cache_key(lease), record, lease.job_id)
            except Exception:  # the item is recorded (and is charged); only a later reuse is lost
                log.exception("job %s item %d: could not add the result to the cache", lease.job_id, lease.index)
        return record

    def _delete_outputs(self, outputs: list[dict[str, Any]]) -> None:
        for out in outputs:
            self.storage.delete(str(out["key"]))

    def _record_failure(self, lease: Lease, result: ItemResult) -> bool:
        """Record a failed attempt; True when the item will be retried."""
        kind: str = result.error_kind or "internal"
        if kind == "internal" and result.status == 503:
            kind = "unavailable"
        transient = kind in TRANSIENT_KINDS
        error = {"kind": kind, "message": result.error or "failed", "retryable": transient,
                 "node_id": result.node_id, "class_type": result.class_type}
        retry_at = now() + backoff_s(lease.attempt, self.retry_base_s) if transient and lease.attempt < self.max_attempts else None
        self.store.fail(self.owner, lease, error, retry_at)
        return retry_at is not None
