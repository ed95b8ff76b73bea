"""The job-store contract, against SQLite and a real redis-server."""

from __future__ import annotations

import uuid

import pytest

from comfybento.jobs.records import ItemRecord, JobRecord, now
from comfybento.jobs.redis_store import RedisJobStore
from comfybento.jobs.store import IdempotencyConflict, SQLiteJobStore
from tests.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return SQLiteJobStore(tmp_path / "jobs.sqlite3")
    s = RedisJobStore(redis_url)
    s.r.flushdb()
    return s


def _job(n: int, priority: int = 0, key: str | None = None, webhook: str | None = None, per_item: bool = False):
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=priority, created_at=now(), total=n,
                    idempotency_key=key, request_hash=f"h{n}", webhook_url=webhook, webhook_per_item=per_item)
    items = [ItemRecord(job_id=job.id, index=i, params={"prompt": f"p{i}"}, seed=2**53 - i) for i in range(n)]
    return job, items


def test_every_item_leased_once_and_completed_once(store):
    job, items = _job(5)
    store.create_job(job, items)
    a = store.lease("a", 3, 60)
    b = store.lease("b", 10, 60)
    assert sorted(x.index for x in a + b) == [0, 1, 2, 3, 4]
    assert a[0].seed == 2**53 and a[0].params == {"prompt": "p0"} and a[0].attempt == 1
    assert store.lease("c", 10, 60) == []
    assert store.complete("a", a[0], {"outputs": []})
    assert not store.complete("a", a[0], {"outputs": []})  # already recorded
    assert not store.complete("b", a[1], {"outputs": []})  # not b's lease
    for lease in a[1:]:
        assert store.complete("a", lease, {"outputs": []})
    for lease in b:
        assert store.complete("b", lease, {"outputs": []})
    done = store.get_job(job.id)
    assert done.state == "succeeded" and done.counts == {"succeeded": 5}


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_record(store):
    job, items = _job(1)
    store.create_job(job, items)
    (first,) = store.lease("dead", 1, 0.01)
    import time

    time.sleep(0.05)
    (second,) = store.lease("alive", 1, 60)
    assert second.index == first.index and second.attempt == 2
    assert not store.complete("dead", first, {"outputs": ["late"]})
    assert store.complete("alive", second, {"outputs": ["ok"]})
    assert store.get_items(job.id, 0, 10)[0].result == {"outputs": ["ok"]}


def test_retry_later_then_permanent_failure(store):
    job, items = _job(1)
    store.create_job(job, items)
    (lease,) = store.lease("w", 1, 60)
    assert store.fail("w", lease, {"kind": "oom", "retryable": True}, retry_at=now() + 0.05)
    assert store.lease("w", 1, 60) == []  # not before its retry time
    import time

    time.sleep(0.1)
    (again,) = store.lease("w", 1, 60)
    assert again.attempt == 2
    assert store.fail("w", again, {"kind": "node", "retryable": False}, retry_at=None)
    job_now = store.get_job(job.id)
    assert job_now.state == "failed" and store.get_items(job.id, 0, 1)[0].error["kind"] == "node"


def test_priority_orders_leases(store):
    low, low_items = _job(2, priority=0)
    high, high_items = _job(2, priority=5)
    store.create_job(low, low_items)
    store.create_job(high, high_items)
    leases = store.lease("w", 4, 60)
    assert [x.job_id for x in leases] == [high.id, high.id, low.id, low.id]


def test_idempotency_key(store):
    job, items = _job(2, key="nightly-1")
    first, created = store.create_job(job, items)
    again, created_again = store.create_job(_job(2, key="nightly-1")[0], items)
    assert created and not created_again and again.id == first.id
    other = _job(3, key="nightly-1")
    with pytest.raises(IdempotencyConflict):
        store.create_job(*other)


def test_cancel_stops_leasing_and_queues_the_webhook(store):
    job, items = _job(3, webhook="http://127.0.0.1:1/hook")
    store.create_job(job, items)
    (lease,) = store.lease("w", 1, 60)
    cancelled = store.cancel(job.id)
    assert cancelled.state == "cancelled"
    assert store.lease("w", 10, 60) == []
    assert not store.complete("w", lease, {"outputs": []})
    due = store.due_deliveries("w", 10, 30)
    assert [d.event for d in due] == ["job.cancelled"]
    assert store.due_deliveries("other", 10, 30) == []  # claimed


def test_completion_queues_job_and_item_webhooks_once(store):
    job, items = _job(2, webhook="http://127.0.0.1:1/hook", per_item=True)
    store.create_job(job, items)
    for lease in store.lease("w", 2, 60):
        store.complete("w", lease, {"outputs": []})
    events = sorted(d.event for d in store.due_deliveries("w", 10, 30))
    assert events == ["item.succeeded", "item.succeeded", "job.succeeded"]


def test_result_cache_and_expiry(store):
    store.cache_put("k", {"outputs": [1]})
    assert store.cache_get("k") == {"outputs": [1]} and store.cache_get("missing") is None
    job, items = _job(1)
    store.create_job(job, items)
    (lease,) = store.lease("w", 1, 60)
    store.complete("w", lease, {"outputs": []})
    assert store.expire(now() - 3600) == []
    assert store.expire(now() + 1) == [job.id]
    assert store.get_job(job.id) is None
