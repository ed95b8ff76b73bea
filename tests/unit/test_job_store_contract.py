"""The job-store contract: one suite, run against SQLite and against a real redis-server.

Covers create/lease/finish, idempotency (also after retention), expiry (nothing
left behind), the result cache, attempts (a poison item is given up), owners and
usage, and opening a SQLite file made with the first schema.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest

from comfybento.front.jobs.records import Delivery, ItemRecord, JobRecord, now
from comfybento.front.jobs.redis_store import RedisJobStore
from comfybento.front.jobs.store import IdempotencyConflict, JobStore, SQLiteJobStore
from tests.redis_server import redis_server

MAX = 3  # max_attempts in these tests


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_url) -> JobStore:
    if request.param == "sqlite":
        return SQLiteJobStore(tmp_path / "jobs.sqlite3")
    s = RedisJobStore(redis_url)
    s.r.flushdb()
    return s


def _job(n: int, priority: int = 0, key: str | None = None, webhook: str | None = None, per_item: bool = False,
         request_hash: str | None = None, owner: str | None = None, workflow: str = "txt2img"):
    job = JobRecord(id=uuid.uuid4().hex, workflow=workflow, priority=priority, created_at=now(), total=n,
                    idempotency_key=key, request_hash=request_hash or f"h{n}", webhook_url=webhook, webhook_per_item=per_item,
                    owner=owner)
    items = [ItemRecord(job_id=job.id, index=i, params={"prompt": f"p{i}"}, seed=2**53 - i) for i in range(n)]
    return job, items


def _run_to_end(store: JobStore, job: JobRecord, result: dict | None = None) -> None:
    for lease in store.lease("w", job.total, 60, MAX):
        assert store.complete("w", lease, result or {"outputs": []})


def _expire_all(store: JobStore, before: float | None = None) -> list[str]:
    """What the runner's retention does (less the files): delete every job finished before `before`."""
    ids = store.expirable(now() + 1 if before is None else before)
    for job_id in ids:
        store.delete_job(job_id)
    return ids


# ------------------------------------------------------------ create / lease / finish


def test_every_item_leased_once_and_completed_once(store):
    job, items = _job(5)
    store.create_job(job, items)
    a = store.lease("a", 3, 60, MAX)
    b = store.lease("b", 10, 60, MAX)
    assert sorted(x.index for x in a + b) == [0, 1, 2, 3, 4]
    assert a[0].seed == 2**53 and a[0].params == {"prompt": "p0"} and a[0].attempt == 1
    assert store.lease("c", 10, 60, MAX) == []
    assert store.complete("a", a[0], {"outputs": []})
    assert not store.complete("a", a[0], {"outputs": []})  # already recorded
    assert not store.complete("b", a[1], {"outputs": []})  # not b's lease
    for lease in a[1:]:
        assert store.complete("a", lease, {"outputs": []})
    for lease in b:
        assert store.complete("b", lease, {"outputs": []})
    done = store.get_job(job.id)
    assert done.state == "succeeded" and done.counts == {"succeeded": 5}


def test_item_counts_sum_every_job_by_state(store):
    assert store.item_counts() == {}
    first, first_items = _job(3)
    second, second_items = _job(2, workflow="img2img")
    store.create_job(first, first_items)
    store.create_job(second, second_items)
    assert store.item_counts() == {"queued": 5}
    leases = sorted(store.lease("w", 3, 60, MAX, workflows=["txt2img"]), key=lambda x: x.index)
    assert [x.job_id for x in leases] == [first.id] * 3
    assert store.item_counts() == {"queued": 2, "running": 3}
    assert store.complete("w", leases[0], {"outputs": []})
    assert store.fail("w", leases[1], {"error": "boom"}, None)
    store.cancel(second.id)
    assert store.item_counts() == {"running": 1, "succeeded": 1, "failed": 1, "cancelled": 2}
    assert store.complete("w", leases[2], {"outputs": []})
    assert sorted(_expire_all(store)) == sorted([first.id, second.id])
    assert store.item_counts() == {}


def test_seeds_keep_their_whole_unsigned_64_bit_range(store):
    seeds = [0, 2**63 - 1, 2**63, 2**64 - 1, None]  # ComfyUI's seed range; SQLite's INTEGER is signed
    job, _ = _job(len(seeds))
    items = [ItemRecord(job_id=job.id, index=i, params={}, seed=seed) for i, seed in enumerate(seeds)]
    store.create_job(job, items)
    assert [lease.seed for lease in sorted(store.lease("w", 10, 60, MAX), key=lambda x: x.index)] == seeds
    assert [item.seed for item in store.get_items(job.id, 0, 10)] == seeds


def test_a_replica_leases_only_the_workflows_it_serves(store):
    """Replicas serving different workflows share one store: none leases an item it cannot run (the cause of
    'engine unavailable: <workflow>' failures when a second server with other workflows shared the job store)."""
    other, other_items = _job(3, workflow="upscale")
    mine, mine_items = _job(2, priority=1)
    store.create_job(other, other_items)
    store.create_job(mine, mine_items)
    assert store.lease("w", 10, 60, MAX, workflows=[]) == []
    leased = store.lease("w", 10, 60, MAX, workflows={"txt2img", "img2img"})
    assert sorted((x.job_id, x.index) for x in leased) == [(mine.id, 0), (mine.id, 1)]
    assert all(x.workflow == "txt2img" for x in leased)
    assert store.lease("w", 10, 60, MAX, workflows=["txt2img"]) == []
    # a retry and an expired lease go back to their own workflow's queue, not to a replica that cannot run them
    (up,) = store.lease("u", 1, 0.01, MAX, workflows=["upscale"])
    assert store.fail("w", leased[0], {"kind": "unavailable", "retryable": True}, retry_at=now())
    time.sleep(0.05)
    (retried,) = store.lease("w", 10, 60, MAX, workflows=["txt2img"])
    assert (retried.job_id, retried.index, retried.attempt) == (mine.id, 0, 2)
    rest = store.lease("u", 10, 60, MAX, workflows=["upscale"])
    assert sorted(x.index for x in rest) == [0, 1, 2] and {x.attempt for x in rest if x.index == up.index} == {2}
    assert store.lease("any", 10, 60, MAX) == []  # None: every workflow; nothing is left


def test_mixed_workflows_lease_in_priority_order_across_queues(store):
    first, first_items = _job(2, workflow="a")
    second, second_items = _job(2, workflow="b")
    urgent, urgent_items = _job(1, priority=9, workflow="b")
    for job, items in ((first, first_items), (second, second_items), (urgent, urgent_items)):
        store.create_job(job, items)
    leased = store.lease("w", 5, 60, MAX, workflows=["a", "b"])
    assert [x.job_id for x in leased] == [urgent.id, first.id, first.id, second.id, second.id]


def test_redis_items_queued_before_per_workflow_queues_are_still_leased(redis_url):
    store = RedisJobStore(redis_url)
    store.r.flushdb()
    job, items = _job(2)
    store.create_job(job, items)
    queue = "cb:ready:txt2img"  # as a store written by the previous version left it: one queue for every workflow
    store.r.zadd("cb:ready", dict(store.r.zrange(queue, 0, -1, withscores=True)))
    store.r.delete(queue)
    assert store.lease("w", 10, 60, MAX, workflows=["other"]) == []
    assert sorted(x.index for x in store.lease("w", 10, 60, MAX, workflows=["txt2img"])) == [0, 1]
    assert store.r.zcard("cb:ready") == 0


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_record(store):
    job, items = _job(1)
    store.create_job(job, items)
    (first,) = store.lease("dead", 1, 0.01, MAX)
    time.sleep(0.05)
    (second,) = store.lease("alive", 1, 60, MAX)
    assert second.index == first.index and second.attempt == 2
    assert not store.complete("dead", first, {"outputs": ["late"]})
    assert store.complete("alive", second, {"outputs": ["ok"]})
    assert store.get_items(job.id, 0, 10)[0].result == {"outputs": ["ok"]}


def test_renewed_lease_is_not_taken_over(store):
    job, items = _job(1)
    store.create_job(job, items)
    (lease,) = store.lease("a", 1, 0.3, MAX)
    for _ in range(4):
        time.sleep(0.1)
        store.renew("a", [(job.id, 0)], 0.3)
    assert store.lease("b", 1, 60, MAX) == []
    assert store.complete("a", lease, {"outputs": []})


def test_retry_later_then_permanent_failure(store):
    job, items = _job(1)
    store.create_job(job, items)
    (lease,) = store.lease("w", 1, 60, MAX)
    assert store.fail("w", lease, {"kind": "oom", "retryable": True}, retry_at=now() + 0.05)
    assert store.lease("w", 1, 60, MAX) == []  # not before its retry time
    time.sleep(0.1)
    (again,) = store.lease("w", 1, 60, MAX)
    assert again.attempt == 2
    assert store.fail("w", again, {"kind": "node", "retryable": False}, retry_at=None)
    job_now = store.get_job(job.id)
    assert job_now.state == "failed" and store.get_items(job.id, 0, 1)[0].error["kind"] == "node"


def test_priority_orders_leases(store):
    low, low_items = _job(2, priority=0)
    high, high_items = _job(2, priority=5)
    store.create_job(low, low_items)
    store.create_job(high, high_items)
    leases = store.lease("w", 4, 60, MAX)
    assert [x.job_id for x in leases] == [high.id, high.id, low.id, low.id]


def test_cancel_stops_leasing_and_queues_the_webhook(store):
    job, items = _job(3, webhook="http://127.0.0.1:1/hook")
    store.create_job(job, items)
    (lease,) = store.lease("w", 1, 60, MAX)
    cancelled = store.cancel(job.id)
    assert cancelled.state == "cancelled"
    assert store.lease("w", 10, 60, MAX) == []
    assert not store.complete("w", lease, {"outputs": []})
    due = store.due_deliveries("w", 10, 30)
    assert [d.event for d in due] == ["job.cancelled"]
    assert store.due_deliveries("other", 10, 30) == []  # claimed


def test_completion_queues_job_and_item_webhooks_once(store):
    job, items = _job(2, webhook="http://127.0.0.1:1/hook", per_item=True)
    store.create_job(job, items)
    _run_to_end(store, job)
    events = sorted(d.event for d in store.due_deliveries("w", 10, 30))
    assert events == ["item.succeeded", "item.succeeded", "job.succeeded"]


# ------------------------------------------------------------ attempts: a poison item is given up


def test_every_lease_counts_and_a_poison_item_is_given_up(store):
    """Lease, crash (never finish), lease again after expiry ... until max attempts: then failed, not leased again."""
    job, items = _job(2, webhook="http://127.0.0.1:1/hook")
    store.create_job(job, items)
    healthy = None
    for attempt in range(1, MAX + 1):
        leases = store.lease(f"worker-{attempt}", 2, 0.05, MAX)  # each worker "dies" holding its leases
        poison = next(x for x in leases if x.index == 0)
        assert poison.attempt == attempt
        healthy = healthy or next((x for x in leases if x.index == 1), None)
        if attempt == 1:
            assert healthy is not None and store.complete("worker-1", healthy, {"outputs": []})
        time.sleep(0.1)
    assert store.lease("worker-last", 2, 60, MAX) == []
    item = store.get_items(job.id, 0, 1)[0]
    assert item.state == "failed" and item.attempts == MAX
    assert item.error["message"].startswith(f"gave up after {MAX} attempts") and item.error["retryable"] is False
    final = store.get_job(job.id)
    assert final.state == "failed" and final.counts == {"succeeded": 1, "failed": 1}
    assert [d.event for d in store.due_deliveries("w", 10, 30)] == ["job.failed"]


def test_attempts_survive_a_new_store_on_the_same_data(store, tmp_path, redis_url):
    """A restart: the count lives in the store, so a new process continues it."""
    job, items = _job(1)
    store.create_job(job, items)
    for _ in range(MAX - 1):
        store.lease("before-restart", 1, 0.05, MAX)
        time.sleep(0.1)
    reopened = SQLiteJobStore(tmp_path / "jobs.sqlite3") if isinstance(store, SQLiteJobStore) else RedisJobStore(redis_url)
    (last,) = reopened.lease("after-restart", 1, 0.05, MAX)
    assert last.attempt == MAX
    time.sleep(0.1)
    assert reopened.lease("after-restart", 1, 60, MAX) == []
    assert reopened.get_items(job.id, 0, 1)[0].error["message"].startswith(f"gave up after {MAX} attempts")


# ------------------------------------------------------------ idempotency


def test_idempotency_key(store):
    job, items = _job(2, key="nightly-1")
    first, created = store.create_job(job, items)
    again, created_again = store.create_job(_job(2, key="nightly-1")[0], items)
    assert created and not created_again and again.id == first.id
    assert len(store.list_jobs(10, 0)) == 1
    other = _job(3, key="nightly-1")
    with pytest.raises(IdempotencyConflict):
        store.create_job(*other)


def test_idempotency_key_is_free_again_after_retention(store):
    job, items = _job(1, key="weekly")
    store.create_job(job, items)
    _run_to_end(store, job)
    assert _expire_all(store) == [job.id]
    different = _job(4, key="weekly", request_hash="another request")
    fresh, created = store.create_job(*different)  # not a 409: the old job and its key are gone
    assert created and fresh.id == different[0].id and fresh.total == 4


# ------------------------------------------------------------ cache


def test_cache_hit_and_no_hit_after_the_source_job_expired(store):
    job, items = _job(1)
    store.create_job(job, items)
    _run_to_end(store, job, {"outputs": [{"key": f"{job.id}/a.png"}]})
    store.cache_put("k", {"outputs": [{"key": f"{job.id}/a.png"}]}, job.id)
    assert store.cache_get("k") == {"outputs": [{"key": f"{job.id}/a.png"}]} and store.cache_get("missing") is None
    assert _expire_all(store) == [job.id]
    assert store.cache_get("k") is None


def test_cache_entry_of_an_expired_job_is_not_written(store):
    job, items = _job(1)
    store.create_job(job, items)
    _run_to_end(store, job)
    _expire_all(store)
    store.cache_put("late", {"outputs": []}, job.id)
    assert store.cache_get("late") is None


def test_cache_delete(store):
    job, items = _job(1)
    store.create_job(job, items)
    store.cache_put("k", {"outputs": []}, job.id)
    store.cache_delete("k")
    assert store.cache_get("k") is None


# ------------------------------------------------------------ expiry


def test_expiry_deletes_finished_jobs_only_after_retention(store):
    done, done_items = _job(1)
    running, running_items = _job(1)
    store.create_job(done, done_items)
    _run_to_end(store, done)
    store.create_job(running, running_items)
    assert _expire_all(store, now() - 3600) == []
    assert _expire_all(store) == [done.id]
    assert store.get_job(done.id) is None and store.get_items(done.id, 0, 10) == []
    assert store.get_job(running.id) is not None


def test_expiry_leaves_nothing_behind(store):
    """A job that used every feature (key, webhooks with saved attempts, a retry, cache, a cancelled sibling) leaves no trace."""
    job, items = _job(3, key="all-features", webhook="http://127.0.0.1:1/hook", per_item=True)
    store.create_job(job, items)
    first, *rest = store.lease("w", 3, 60, MAX)
    store.fail("w", first, {"kind": "oom", "retryable": True}, retry_at=now())
    for lease in rest + store.lease("w", 1, 60, MAX):
        store.complete("w", lease, {"outputs": []})
    store.cache_put("k", {"outputs": []}, job.id)
    cancelled, cancelled_items = _job(4, webhook="http://127.0.0.1:1/hook")
    store.create_job(cancelled, cancelled_items)
    store.lease("w", 1, 60, MAX)
    store.cancel(cancelled.id)
    for delivery in store.due_deliveries("w", 10, 30):
        store.save_delivery(Delivery(**{**delivery.__dict__, "attempts": 1, "state": "delivered", "log": [{"ok": True}]}))
    assert len(store.deliveries(job.id)) == 4
    assert sorted(_expire_all(store)) == sorted([job.id, cancelled.id])
    assert store.list_jobs(10, 0) == [] and store.deliveries(job.id) == [] and store.cache_get("k") is None
    if isinstance(store, RedisJobStore):
        assert sorted(store.r.scan_iter("*")) == []
    else:
        db = store._db
        assert [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("jobs", "items", "deliveries", "result_cache")] == [0] * 4


def test_a_delivery_finished_after_its_job_expired_leaves_nothing(store):
    job, items = _job(1, webhook="http://127.0.0.1:1/hook")
    store.create_job(job, items)
    _run_to_end(store, job)
    (delivery,) = store.due_deliveries("w", 10, 30)
    _expire_all(store)
    delivery.state = "delivered"
    store.save_delivery(delivery)  # the POST was in flight while retention ran
    assert store.deliveries(job.id) == [] and store.due_deliveries("w", 10, 0) == []
    if isinstance(store, RedisJobStore):
        assert sorted(store.r.scan_iter("*")) == []


def test_redis_create_is_one_transaction(store):
    """A key left naming no job (what a crash between two writes used to leave) is no 409; a create writes all or nothing."""
    if not isinstance(store, RedisJobStore):
        pytest.skip("Redis only: SQLite creates in one transaction")
    store.r.set("cb:idem:crashed", "a-job-that-was-never-written")
    job, items = _job(2, key="crashed")
    created, is_new = store.create_job(job, items)
    assert is_new and created.id == job.id and store.r.get("cb:idem:crashed") == job.id
    with pytest.raises(IdempotencyConflict):
        store.create_job(*_job(3, key="crashed"))
    assert store.r.zcard("cb:jobs") == 1 and store.r.zcard("cb:ready:txt2img") == 2  # the refused create wrote nothing


# ------------------------------------------------------------ owner and usage


def _result(images: int, execution_ms: float, batch_size: int, cached: bool = False) -> dict:
    result = {"outputs": [{"key": f"k{i}"} for i in range(images)], "execution_ms": execution_ms, "batch_size": batch_size}
    return {**result, "cached": True} if cached else result


def test_owner_is_stored_and_leases_carry_it(store, tmp_path, redis_url):
    owned, owned_items = _job(1, owner="alice")
    anonymous, anonymous_items = _job(1)
    assert store.create_job(owned, owned_items)[0].owner == "alice"
    store.create_job(anonymous, anonymous_items)
    reopened = SQLiteJobStore(tmp_path / "jobs.sqlite3") if isinstance(store, SQLiteJobStore) else RedisJobStore(redis_url)
    assert reopened.get_job(owned.id).owner == "alice" and reopened.get_job(anonymous.id).owner is None
    assert {x.job_id: x.job_owner for x in reopened.lease("w", 2, 60, MAX)} == {owned.id: "alice", anonymous.id: None}
    assert [j.owner for j in reopened.list_jobs(10, 0)] == [None, "alice"]
    fresh = reopened.get_job(owned.id)
    assert (fresh.images, fresh.gpu_seconds) == (0, 0.0)


def test_jobs_are_listed_per_owner_newest_first_and_leave_the_listing_when_deleted(store):
    made = {}
    for n, owner in enumerate(("alice", "bob", None, "alice")):
        job, items = _job(1, owner=owner)
        job.created_at += n  # distinct, increasing creation times
        made[n] = store.create_job(job, items)[0].id
    assert [j.id for j in store.list_jobs(10, 0, owner="alice")] == [made[3], made[0]]
    assert [j.id for j in store.list_jobs(1, 1, owner="alice")] == [made[0]]
    assert [j.id for j in store.list_jobs(10, 0, owner="bob")] == [made[1]]
    assert store.list_jobs(10, 0, owner="carol") == []
    assert [j.id for j in store.list_jobs(10, 0)] == [made[3], made[2], made[1], made[0]]  # no owner given: every job
    store.delete_job(made[3])
    assert [j.id for j in store.list_jobs(10, 0, owner="alice")] == [made[0]]


def test_usage_adds_up_over_completions_and_only_for_successes(store):
    job, items = _job(4, owner="alice")
    store.create_job(job, items)
    a, b, c, d = store.lease("w", 4, 60, MAX)
    assert store.complete("w", a, _result(2, 3000, 2))  # 2 images, 1.5 s (its half of a batch of 2)
    assert store.complete("w", b, _result(1, 500, 1))
    assert store.complete("w", c, _result(3, 9000, 3, cached=True))  # reused from the cache: images, no GPU time
    assert store.fail("w", d, {"kind": "node", "retryable": False}, retry_at=None)
    done = store.get_job(job.id)
    assert done.state == "failed" and done.images == 6 and done.gpu_seconds == pytest.approx(2.0)


def test_missing_result_fields_count_as_zero(store):
    job, items = _job(2)
    store.create_job(job, items)
    first, second = store.lease("w", 2, 60, MAX)
    assert store.complete("w", first, {"outputs": [{"key": "a"}], "execution_ms": 250})  # no batch size: a batch of 1
    assert store.complete("w", second, {})
    done = store.get_job(job.id)
    assert (done.images, done.gpu_seconds) == (1, pytest.approx(0.25))


def test_a_stale_owner_adds_no_usage(store):
    job, items = _job(1, owner="alice")
    store.create_job(job, items)
    (first,) = store.lease("dead", 1, 0.01, MAX)
    time.sleep(0.05)
    (second,) = store.lease("alive", 1, 60, MAX)
    assert not store.complete("dead", first, _result(4, 8000, 1))
    assert store.complete("alive", second, _result(1, 1000, 1))
    assert not store.complete("alive", second, _result(1, 1000, 1))  # recorded once
    done = store.get_job(job.id)
    assert (done.images, done.gpu_seconds) == (1, pytest.approx(1.0))
    cancelled, cancelled_items = _job(1, owner="alice")
    store.create_job(cancelled, cancelled_items)
    (lease,) = store.lease("w", 1, 60, MAX)
    store.cancel(cancelled.id)
    assert not store.complete("w", lease, _result(1, 1000, 1))
    assert store.get_job(cancelled.id).images == 0


def test_an_idempotency_key_of_another_owner_is_a_conflict(store):
    job, items = _job(1, key="shared", owner="alice", request_hash="same")
    store.create_job(job, items)
    again, created = store.create_job(*_job(1, key="shared", owner="alice", request_hash="same"))
    assert not created and again.id == job.id
    for owner in ("bob", None):
        with pytest.raises(IdempotencyConflict, match="another API key") as refused:
            store.create_job(*_job(1, key="shared", owner=owner, request_hash="same"))
        assert job.id not in str(refused.value)  # another key's job is not named
    assert [j.id for j in store.list_jobs(10, 0)] == [job.id]


# The layout of the jobs tables before owners, usage and result_cache.job_id (as a first release wrote them).
OLD_SCHEMA = """
CREATE TABLE jobs (
  id TEXT PRIMARY KEY, workflow TEXT NOT NULL, priority INTEGER NOT NULL, created_at REAL NOT NULL,
  total INTEGER NOT NULL, state TEXT NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
  idempotency_key TEXT UNIQUE, request_hash TEXT NOT NULL, webhook_url TEXT, webhook_per_item INTEGER NOT NULL,
  use_cache INTEGER NOT NULL, expires_at REAL
);
CREATE TABLE items (
  job_id TEXT NOT NULL, idx INTEGER NOT NULL, params TEXT NOT NULL, seed INTEGER, state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_expires REAL, next_attempt_at REAL NOT NULL DEFAULT 0,
  started_at REAL, finished_at REAL, result TEXT, error TEXT, PRIMARY KEY (job_id, idx)
);
CREATE TABLE deliveries (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL, event TEXT NOT NULL, payload TEXT NOT NULL, url TEXT NOT NULL,
  attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, state TEXT NOT NULL, log TEXT NOT NULL,
  claim_owner TEXT, claim_expires REAL
);
CREATE TABLE result_cache (key TEXT PRIMARY KEY, result TEXT NOT NULL, created_at REAL NOT NULL);
"""


def test_a_sqlite_file_of_the_old_schema_is_migrated_on_open(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute("INSERT INTO jobs VALUES ('old', 'txt2img', 0, ?, 2, 'queued', ?, NULL, 'legacy', 'h', NULL, 0, 0, NULL)", (now(), now()))
    old.executemany("INSERT INTO items (job_id, idx, params, seed, state) VALUES ('old', ?, ?, ?, 'queued')",
                    [(i, json.dumps({"prompt": f"p{i}"}), i) for i in range(2)])
    old.execute("INSERT INTO result_cache VALUES ('k', '{}', ?)", (now(),))
    old.commit()
    old.close()
    store = SQLiteJobStore(path)
    legacy = store.get_job("old")
    assert (legacy.owner, legacy.images, legacy.gpu_seconds, legacy.counts) == (None, 0, 0.0, {"queued": 2})
    first, second = store.lease("w", 2, 60, MAX)
    assert first.job_owner is None
    assert store.complete("w", first, _result(1, 2000, 2)) and store.complete("w", second, _result(1, 2000, 2))
    done = store.get_job("old")
    assert done.state == "succeeded" and (done.images, done.gpu_seconds) == (2, pytest.approx(2.0))
    assert store.create_job(*_job(1, key="legacy", request_hash="h"))[0].id == "old"  # its idempotency key still answers
    new, new_items = _job(1, owner="alice")
    assert store.create_job(new, new_items)[0].owner == "alice"
    store.cache_put("k2", {"outputs": []}, new.id)
    assert store.cache_get("k") == {} and store.cache_get("k2") == {"outputs": []}
    assert SQLiteJobStore(path).get_job(new.id).owner == "alice"  # opening a migrated file again changes nothing


# ------------------------------------------------------------ retry of failed items


def _finish_with_one_failure(store: JobStore, job: JobRecord) -> None:
    """Item 1 fails for good, the others succeed (2 images each)."""
    for lease in store.lease("w", job.total, 60, MAX):
        if lease.index == 1:
            assert store.fail("w", lease, {"kind": "node", "retryable": False}, retry_at=None)
        else:
            assert store.complete("w", lease, {"outputs": [{"key": "a"}, {"key": "b"}], "execution_ms": 1000, "batch_size": 1})


def test_retry_requeues_only_the_failed_items_with_their_seeds(store):
    job, items = _job(3)
    store.create_job(job, items)
    _finish_with_one_failure(store, job)
    kept = store.get_items(job.id, 0, 3)[0]
    assert store.get_job(job.id).state == "failed"
    retried, count = store.retry_failed(job.id)
    assert count == 1 and retried.state == "running" and retried.finished_at is None
    assert retried.counts == {"succeeded": 2, "queued": 1} and retried.images == 4  # the succeeded items' usage stays
    item = store.get_items(job.id, 1, 1)[0]
    assert (item.state, item.attempts, item.error, item.seed, item.params) == ("queued", 0, None, 2**53 - 1, {"prompt": "p1"})
    assert store.get_items(job.id, 0, 1)[0] == kept  # untouched
    assert store.retry_failed(job.id) == (retried, 0)  # again while it is queued: nothing changes
    (lease,) = store.lease("w", 10, 60, MAX)
    assert (lease.index, lease.seed, lease.attempt) == (1, 2**53 - 1, 1)
    assert store.retry_failed(job.id)[1] == 0 and store.get_items(job.id, 1, 1)[0].state == "running"  # and while it runs
    assert store.complete("w", lease, {"outputs": [{"key": "c"}], "execution_ms": 500, "batch_size": 1})
    done = store.get_job(job.id)
    assert done.state == "succeeded" and done.counts == {"succeeded": 3} and done.images == 5
    assert store.retry_failed(job.id) == (done, 0)  # nothing failed: nothing to do
    assert store.retry_failed("no-such-job") is None


def test_retry_gives_an_item_that_used_every_attempt_new_attempts(store):
    job, items = _job(1)
    store.create_job(job, items)
    for _ in range(MAX):
        store.lease("dies", 1, 0.01, MAX)
        time.sleep(0.05)
    assert store.lease("w", 1, 60, MAX) == [] and store.get_job(job.id).state == "failed"  # given up
    assert store.retry_failed(job.id)[1] == 1
    (lease,) = store.lease("w", 1, 60, MAX)
    assert lease.attempt == 1 and store.complete("w", lease, {"outputs": []})
    assert store.get_job(job.id).state == "succeeded"


def test_a_cancelled_job_is_not_retried(store):
    job, items = _job(2)
    store.create_job(job, items)
    (lease,) = store.lease("w", 1, 60, MAX)
    store.fail("w", lease, {"kind": "node", "retryable": False}, retry_at=None)
    store.cancel(job.id)
    cancelled, count = store.retry_failed(job.id)
    assert count == 0 and cancelled.state == "cancelled" and store.lease("w", 10, 60, MAX) == []


def test_a_retried_job_sends_its_webhooks_again_and_keeps_the_earlier_ones(store):
    job, items = _job(2, webhook="http://127.0.0.1:1/hook", per_item=True)
    store.create_job(job, items)
    _finish_with_one_failure(store, job)
    first = store.due_deliveries("w", 10, 0)  # claimed for no time: what is not saved is due again at once
    assert sorted(d.event for d in first) == ["item.failed", "item.succeeded", "job.failed"]
    for delivery in first:
        if delivery.event != "item.failed":  # the failed item's event is still pending when the job is retried
            store.save_delivery(Delivery(**{**delivery.__dict__, "attempts": 1, "state": "delivered", "log": [{"ok": True}]}))
    store.retry_failed(job.id)
    (lease,) = store.lease("w", 10, 60, MAX)
    store.complete("w", lease, {"outputs": []})
    due = sorted((d.event, d.payload["data"].get("state")) for d in store.due_deliveries("w2", 10, 30))
    assert due == [("item.failed", "failed"), ("item.succeeded", "succeeded"), ("job.succeeded", "succeeded")]
    kept = {(d.event, d.state) for d in store.deliveries(job.id)}  # the earlier ones, with their logs
    assert {("job.failed", "delivered"), ("item.succeeded", "delivered"), ("item.failed", "pending")} <= kept
    assert _expire_all(store) == [job.id] and store.deliveries(job.id) == []
    if isinstance(store, RedisJobStore):
        assert sorted(store.r.scan_iter("*")) == []
    else:
        assert store._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0


# ------------------------------------------------------------ usage per key and day


def test_usage_adds_up_per_key_and_day(store):
    store.add_usage("2026-01-02", "alice", 1, 4, 1.5)
    store.add_usage("2026-01-02", "alice", 1, 2, 0.25)
    store.add_usage("2026-01-02", None, 1, 1, 0.5)
    store.add_usage("2026-01-01", "bob", 3, 0, 0.0)
    store.add_usage("2025-12-01", "alice", 9, 9, 9.0)  # outside the days asked for
    got = [(u.day, u.key, u.requests, u.images, u.gpu_seconds) for u in store.usage(["2026-01-01", "2026-01-02"])]
    assert got == [("2026-01-01", "bob", 3, 0, 0.0), ("2026-01-02", None, 1, 1, 0.5), ("2026-01-02", "alice", 2, 6, 1.75)]
    assert store.usage(["2030-01-01"]) == []


def test_usage_survives_a_new_store_on_the_same_data(store, tmp_path, redis_url):
    store.add_usage("2026-01-02", "alice", 1, 4, 1.5)
    job, items = _job(1)
    store.create_job(job, items)
    _run_to_end(store, job)
    _expire_all(store)  # usage is not the job's: it outlives it
    reopened = SQLiteJobStore(tmp_path / "jobs.sqlite3") if isinstance(store, SQLiteJobStore) else RedisJobStore(redis_url)
    reopened.add_usage("2026-01-02", "alice", 1, 1, 0.5)
    assert [(u.requests, u.images, u.gpu_seconds) for u in reopened.usage(["2026-01-02"])] == [(2, 5, 2.0)]
