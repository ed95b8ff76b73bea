"""The job runner, driven through its real `run_forever` loop.

A real SQLite store and a real output folder; the engine is a small coroutine
at the far edge (it sleeps, hangs or fails on demand and counts its calls);
webhooks go to a real HTTP receiver.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.front.jobs.records import ItemRecord, JobRecord, now
from comfybento.front.jobs.runner import JobRunner
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList, WebhookPolicy
from comfybento.front.retention import Retention
from comfybento.outputs.encoding import png_bytes
from comfybento.outputs.storage import LocalStorage
from tests.helpers import sample_image
from tests.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"runner-test-secret-bytes").decode()
PNG = png_bytes(sample_image(8, 8))


class Engine:
    """Stands in for the engine at the far edge: runs an item in `delay_s`, hangs on `hang` seeds, fails from `failures`."""

    def __init__(self, delay_s: float = 0.0, hang: tuple[int, ...] = (), failures: dict[int, list[ItemResult]] | None = None) -> None:
        self.delay_s = delay_s
        self.hang = hang
        self.failures = failures or {}
        self.calls: list[int | None] = []
        self.returned: list[int | None] = []
        self.release = asyncio.Event()
        self.images, self.execution_ms, self.batch_size = 1, 0.0, 1

    async def __call__(self, workflow: str, values: dict[str, Any], seed: int | None, on_event: Callable[[dict[str, Any]], None]) -> ItemResult:
        self.calls.append(seed)
        on_event({"event": "progress", "value": 1, "max": 2})
        if seed in self.hang:
            await self.release.wait()
        await asyncio.sleep(self.delay_s)
        self.returned.append(seed)
        if self.failures.get(seed):
            return self.failures[seed].pop(0)
        blob = OutputBlob(output="save_image", node_id="9", index=0, width=8, height=8, media_type="image/png", data=PNG)
        return ItemResult(ok=True, seed=seed, outputs=[blob] * self.images, execution_ms=self.execution_ms, batch_size=self.batch_size)


def runner(tmp_path: Path, engine: Engine, **options: Any) -> JobRunner:
    """A fresh runner (a new process, as after a restart) on the same store file and output folder."""
    settings: dict[str, Any] = dict(workflows=frozenset({"txt2img"}), concurrency=4, lease_s=60, max_attempts=3, retry_base_s=0.05,
                                    webhook_secret=SECRET, allow=AllowList(["127.0.0.1"]),
                                    webhooks=WebhookPolicy(max_attempts=3, backoff_s=0.1, timeout_s=10))
    settings.update(options)
    return JobRunner(SQLiteJobStore(tmp_path / "jobs.db"), LocalStorage(tmp_path / "out"), engine, **settings)


def submit(tmp_path: Path, n: int, webhook: str | None = None, cache: bool = False, seeds: list[int] | None = None,
           owner: str | None = None, workflow: str = "txt2img") -> JobRecord:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    job = JobRecord(id=uuid.uuid4().hex, workflow=workflow, priority=0, created_at=now(), total=n, request_hash=uuid.uuid4().hex,
                    webhook_url=webhook, webhook_per_item=webhook is not None, use_cache=cache, owner=owner)
    store.create_job(job, [ItemRecord(job_id=job.id, index=i, params={"prompt": "p"}, seed=(seeds or list(range(n)))[i]) for i in range(n)])
    return job


def run_until(job_runner: JobRunner, done: Callable[[], bool], timeout: float = 30) -> None:
    """Run the real loop until `done()` holds, then stop it (a clean stop; items still running keep their leases)."""

    async def main() -> None:
        loop = asyncio.create_task(job_runner.run_forever())
        try:
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, "timed out"
                assert not loop.done(), loop
                await asyncio.sleep(0.02)
        finally:
            await job_runner.stop()
            await asyncio.wait_for(loop, 10)

    asyncio.run(main())


def finished(job_runner: JobRunner, job_id: str) -> Callable[[], bool]:
    return lambda: job_runner.store.get_job(job_id).state in ("succeeded", "failed", "cancelled")  # type: ignore[union-attr]


def test_each_item_runs_once_and_its_files_are_named_by_attempt(tmp_path):
    job = submit(tmp_path, 3)
    engine = Engine()
    r = runner(tmp_path, engine)
    run_until(r, finished(r, job.id))
    assert sorted(engine.calls) == [0, 1, 2]
    items = r.store.get_items(job.id, 0, 10)
    assert [(i.state, i.attempts) for i in items] == [("succeeded", 1)] * 3
    assert sorted(p.name for p in (tmp_path / "out" / job.id).iterdir()) == [f"0000{i}-a1-save_image-0.png" for i in range(3)]
    assert items[0].result["outputs"][0]["key"] == f"{job.id}/00000-a1-save_image-0.png"


def test_transient_errors_retry_and_node_errors_do_not(tmp_path):
    job = submit(tmp_path, 2)
    engine = Engine(failures={0: [ItemResult(ok=False, status=503, error="out of memory", error_kind="oom")],
                              1: [ItemResult(ok=False, status=500, error="boom", error_kind="node", node_id="3", class_type="KSampler")]})
    r = runner(tmp_path, engine)
    run_until(r, finished(r, job.id))
    oom, node = r.store.get_items(job.id, 0, 2)
    assert (oom.state, oom.attempts) == ("succeeded", 2) and sorted(engine.calls) == [0, 0, 1]
    assert (node.state, node.attempts) == ("failed", 1)
    assert node.error == {"kind": "node", "message": "boom", "retryable": False, "node_id": "3", "class_type": "KSampler"}


def test_a_bug_in_execute_fails_the_item_once_with_its_cause_and_is_logged(tmp_path, caplog):
    """An exception `execute` raises is ours: not 'engine unavailable', not retried, logged with job id and index."""
    job = submit(tmp_path, 2)
    calls: list[int | None] = []

    async def broken(workflow: str, values: dict[str, Any], seed: int | None, on_event: Callable[[dict[str, Any]], None]) -> ItemResult:
        calls.append(seed)
        return {"txt2img": None}[workflow + "-typo"]  # type: ignore[return-value]  # a KeyError, as a bug would raise

    r = runner(tmp_path, broken)  # type: ignore[arg-type]
    with caplog.at_level("ERROR", logger="comfybento.front.jobs.runner"):
        run_until(r, finished(r, job.id))
    items = r.store.get_items(job.id, 0, 2)
    assert sorted(calls) == [0, 1] and [(i.state, i.attempts) for i in items] == [("failed", 1)] * 2
    error = items[0].error
    assert error["kind"] == "internal" and error["retryable"] is False
    assert "KeyError" in error["message"] and job.id in error["message"] and "unavailable" not in error["message"]
    assert "txt2img-typo" not in error["message"]  # no internals
    logged = [rec for rec in caplog.records if rec.exc_info and job.id in rec.getMessage()]
    assert len(logged) == 2
    assert sorted(int(rec.getMessage().split(" item ")[1].split(" ")[0]) for rec in logged) == [0, 1]


def test_internal_errors_from_the_engine_are_not_retried_but_unavailable_ones_are(tmp_path):
    job = submit(tmp_path, 2)
    engine = Engine(failures={0: [ItemResult(ok=False, status=500, error="internal error", error_kind="internal")],
                              1: [ItemResult(ok=False, status=503, error="the engine stopped", error_kind="unavailable")] * 2})
    r = runner(tmp_path, engine)
    run_until(r, finished(r, job.id))
    internal, unavailable = r.store.get_items(job.id, 0, 2)
    assert (internal.state, internal.attempts, internal.error["retryable"]) == ("failed", 1, False)
    assert (unavailable.state, unavailable.attempts) == ("succeeded", 3)


def test_a_replica_runs_only_the_workflows_it_serves(tmp_path):
    """Two replicas with different workflows on one store: each item runs on the replica that serves it, at the first try."""
    mine, theirs = submit(tmp_path, 3), submit(tmp_path, 3, workflow="upscale")
    engine = Engine()
    r = runner(tmp_path, engine)
    run_until(r, finished(r, mine.id))
    assert sorted(engine.calls) == [0, 1, 2]
    assert r.store.get_job(theirs.id).counts == {"queued": 3}  # type: ignore[union-attr]
    other_engine = Engine()
    other = runner(tmp_path, other_engine, workflows=frozenset({"upscale"}))
    run_until(other, finished(other, theirs.id))
    assert [(i.state, i.attempts) for i in other.store.get_items(theirs.id, 0, 3)] == [("succeeded", 1)] * 3


def test_a_result_after_the_lease_was_lost_leaves_no_files(tmp_path):
    job = submit(tmp_path, 1)
    engine = Engine(hang=(0,))
    r = runner(tmp_path, engine)

    def cancel_then_release() -> bool:
        if engine.calls and not engine.release.is_set():
            r.store.cancel(job.id)  # the lease is gone while the engine still runs the item
            engine.release.set()
        return bool(engine.returned) and not r.progress  # the item's task ended (its progress entry goes with it)

    run_until(r, cancel_then_release)
    assert list((tmp_path / "out").rglob("*.png")) == []
    assert r.store.get_items(job.id, 0, 1)[0].state == "cancelled"


def test_a_poison_item_is_given_up_after_max_attempts_across_restarts(tmp_path):
    """Each run leases the item, which hangs the engine; the process then dies holding the lease. The 4th run gives it up."""
    job = submit(tmp_path, 2)
    poison_calls = 0
    for restart in range(3):
        engine = Engine(hang=(0,))
        r = runner(tmp_path, engine, lease_s=0.5)
        run_until(r, lambda e=engine: 0 in e.calls)
        poison_calls += engine.calls.count(0)
        assert r.store.get_items(job.id, 0, 1)[0].attempts == restart + 1
    engine = Engine(hang=(0,))
    r = runner(tmp_path, engine, lease_s=0.5)
    run_until(r, finished(r, job.id))
    assert poison_calls == 3 and 0 not in engine.calls
    poison, healthy = r.store.get_items(job.id, 0, 2)
    assert poison.state == "failed" and poison.error["message"].startswith("gave up after 3 attempts")
    assert healthy.state == "succeeded" and healthy.attempts == 1
    assert r.store.get_job(job.id).state == "failed"


def test_a_stalled_webhook_receiver_never_delays_lease_renewal(tmp_path):
    """Every webhook POST hangs for longer than a lease; items still run once each and the job succeeds."""
    with webhook_receiver(stall_s=3, secret=SECRET) as hook:
        job = submit(tmp_path, 6, webhook=hook.url)
        engine = Engine(delay_s=1.2)
        r = runner(tmp_path, engine, concurrency=2, lease_s=1, webhooks=WebhookPolicy(max_attempts=3, backoff_s=0.1, timeout_s=10))
        run_until(r, lambda: r.store.get_job(job.id).state == "succeeded" and len(hook.events()) >= 7, timeout=60)
        assert hook.events()[0]["json"]["type"] == "item.succeeded"
        assert all(call["verified"] for call in hook.events())
    assert sorted(engine.calls) == list(range(6))  # no item ran twice
    assert [i.attempts for i in r.store.get_items(job.id, 0, 10)] == [1] * 6


def test_unanswered_webhooks_are_logged_and_retried_within_their_deadline(tmp_path):
    with webhook_receiver(stall_s=5, secret=SECRET) as hook:
        job = submit(tmp_path, 1, webhook=hook.url)
        r = runner(tmp_path, Engine(), webhooks=WebhookPolicy(max_attempts=2, backoff_s=0.1, timeout_s=0.5))
        run_until(r, lambda: [d.state for d in r.store.deliveries(job.id)] == ["failed", "failed"], timeout=30)
    log = r.store.deliveries(job.id)[0].log
    assert [entry["error"] for entry in log] == ["no answer within 0.5 s"] * 2


def test_cached_results_are_copied_and_outlive_the_job_that_made_them(tmp_path):
    engine = Engine()
    first = submit(tmp_path, 1, cache=True, seeds=[7])
    r = runner(tmp_path, engine)
    run_until(r, finished(r, first.id))
    time.sleep(0.3)
    second = submit(tmp_path, 1, cache=True, seeds=[7])
    r = runner(tmp_path, engine)
    run_until(r, finished(r, second.id))
    assert engine.calls == [7]  # the second job was served from the cache
    (hit,) = r.store.get_items(second.id, 0, 1)
    assert hit.result["cached"] and hit.result["outputs"][0]["key"].startswith(f"{second.id}/")
    # retention removes the first job (finished before the midpoint) but not the second
    midpoint = (r.store.get_job(first.id).finished_at + r.store.get_job(second.id).finished_at) / 2
    Retention(r.store, r.storage, job_retention_s=now() - midpoint, output_retention_s=0).sweep()
    assert r.store.get_job(first.id) is None and r.store.get_job(second.id) is not None
    assert not (tmp_path / "out" / first.id).exists()
    assert r.storage.get(hit.result["outputs"][0]["key"]) == PNG  # the copy is the second job's own
    third = submit(tmp_path, 1, cache=True, seeds=[7])
    r = runner(tmp_path, engine)
    run_until(r, finished(r, third.id))
    assert engine.calls == [7, 7]  # the entry went with the first job: a miss, so it ran
    assert not r.store.get_items(third.id, 0, 1)[0].result.get("cached")


def test_a_cache_entry_whose_files_are_gone_is_a_miss(tmp_path):
    job = submit(tmp_path, 1, cache=True, seeds=[5])
    engine = Engine()
    r = runner(tmp_path, engine)
    run_until(r, finished(r, job.id))
    key = r.store.get_items(job.id, 0, 1)[0].result["outputs"][0]["key"]
    (tmp_path / "out" / key).unlink()  # an entry from before entries were deleted with their job
    again = submit(tmp_path, 1, cache=True, seeds=[5])
    r = runner(tmp_path, engine)
    run_until(r, finished(r, again.id))
    assert engine.calls == [5, 5]
    assert r.store.get_items(again.id, 0, 1)[0].state == "succeeded"


class Charges:
    """The `on_usage` hook: records each call (after `delay_s`); raises on the first `fail_first` calls."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str | None, int, float]] = []
        self.fail_first = fail_first
        self.delay_s = delay_s

    async def __call__(self, owner: str | None, images: int, gpu_seconds: float) -> None:
        await asyncio.sleep(self.delay_s)
        self.calls.append((owner, images, gpu_seconds))
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("the usage backend is down")


def test_each_succeeded_item_is_charged_once_to_the_jobs_owner(tmp_path):
    job = submit(tmp_path, 3, owner="alice", seeds=[0, 1, 2])
    engine = Engine(failures={1: [ItemResult(ok=False, status=500, error="boom", error_kind="node")],
                              2: [ItemResult(ok=False, status=503, error="out of memory", error_kind="oom")]})
    engine.images, engine.execution_ms, engine.batch_size = 2, 3000.0, 2
    charges = Charges()
    r = runner(tmp_path, engine, on_usage=charges)
    run_until(r, finished(r, job.id))
    assert sorted(engine.calls) == [0, 1, 2, 2]  # item 2 failed once (retried), item 1 for good
    assert charges.calls == [("alice", 2, 1.5)] * 2  # the succeeded items only, each once
    done = r.store.get_job(job.id)
    assert (done.images, done.gpu_seconds) == (4, 3.0)
    anonymous = submit(tmp_path, 1, seeds=[9])
    r = runner(tmp_path, engine, on_usage=charges)
    run_until(r, finished(r, anonymous.id))
    assert charges.calls[-1] == (None, 2, 1.5)  # keys off: no owner (the hook decides; access.charge_owner ignores it)


def test_a_cached_item_is_charged_its_images_and_no_gpu_time(tmp_path):
    engine = Engine()
    engine.execution_ms = 800.0
    charges = Charges()
    first = submit(tmp_path, 1, cache=True, seeds=[7], owner="alice")
    r = runner(tmp_path, engine, on_usage=charges)
    run_until(r, finished(r, first.id))
    second = submit(tmp_path, 1, cache=True, seeds=[7], owner="bob")
    r = runner(tmp_path, engine, on_usage=charges)
    run_until(r, finished(r, second.id))
    assert engine.calls == [7] and charges.calls == [("alice", 1, 0.8), ("bob", 1, 0.0)]
    assert (r.store.get_job(second.id).images, r.store.get_job(second.id).gpu_seconds) == (1, 0.0)


def test_a_failing_hook_never_stops_the_runner(tmp_path, caplog):
    job = submit(tmp_path, 4, owner="alice")
    charges = Charges(fail_first=2)
    r = runner(tmp_path, Engine(delay_s=0.05), concurrency=1, on_usage=charges)
    run_until(r, finished(r, job.id))
    assert charges.calls == [("alice", 1, 0.0)] * 4  # one at a time: items 3 and 4 ran after the first two charges failed
    items = r.store.get_items(job.id, 0, 10)
    assert [(i.state, i.attempts) for i in items] == [("succeeded", 1)] * 4
    assert r.store.get_job(job.id).images == 4  # (run_until also checks that the loop never ended on its own)
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "comfybento.front.jobs.runner"]
    assert sum("charging its usage to 'alice' failed" in m for m in logged) == 2
    assert not any("could not record" in m for m in logged)  # reported as what it is: the results were recorded


def test_a_stop_right_after_a_result_is_recorded_still_charges_it(tmp_path):
    """The job is finished in the store before its charge is made; a stop at that moment waits for the charge."""
    job = submit(tmp_path, 1, owner="alice")
    charges = Charges(delay_s=0.5)
    r = runner(tmp_path, Engine(), on_usage=charges)
    run_until(r, finished(r, job.id))
    assert charges.calls == [("alice", 1, 0.0)]
