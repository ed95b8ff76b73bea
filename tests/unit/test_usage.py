"""GET /usage: who sees what (front/jobs/usage.py), and every charge counted in the store (front/access.py's usage sink)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from comfybento.front import access
from comfybento.front.access import Access
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.usage import recent_days, report, usage_sink
from comfybento.front.keys import ApiKey, hash_key
from comfybento.front.ratelimit import MemoryBuckets

TODAY = datetime(2026, 3, 2, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def store(tmp_path) -> SQLiteJobStore:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    store.add_usage("2026-03-02", "alice", 2, 4, 1.5)
    store.add_usage("2026-02-28", "alice", 1, 1, 0.5)
    store.add_usage("2026-03-01", "bob", 5, 5, 2.0)
    store.add_usage("2026-03-01", None, 1, 2, 0.25)
    store.add_usage("2026-02-01", "alice", 9, 9, 9.0)  # a month ago: not in the last 7 days
    return store


def test_recent_days_end_today_oldest_first():
    assert recent_days(3, TODAY) == ["2026-02-28", "2026-03-01", "2026-03-02"]


def test_a_key_sees_its_own_usage_per_day(store):
    got = report(store, 7, "alice", keys_on=True, operator=False, today=TODAY)
    assert (got.scope, got.since, got.until) == ("own", "2026-02-24", "2026-03-02")
    (mine,) = got.keys
    assert mine.key == "alice" and [(d.day, d.requests, d.images) for d in mine.days] == [("2026-02-28", 1, 1), ("2026-03-02", 2, 4)]
    assert mine.total.model_dump() == {"requests": 3, "images": 5, "gpu_seconds": 2.0}
    nobody = report(store, 7, "carol", keys_on=True, operator=False, today=TODAY)
    assert [(k.key, k.days, k.total.requests) for k in nobody.keys] == [("carol", [], 0)]


def test_an_operator_sees_every_key(store):
    got = report(store, 7, "root", keys_on=True, operator=True, today=TODAY)
    assert got.scope == "all" and [(k.key, k.total.images) for k in got.keys] == [(None, 2), ("alice", 5), ("bob", 5)]


def test_without_keys_the_totals_of_the_service(store):
    got = report(store, 2, None, keys_on=False, operator=False, today=TODAY)
    (total,) = got.keys
    assert got.scope == "total" and total.key is None
    assert [(d.day, d.requests, d.images) for d in total.days] == [("2026-03-01", 6, 7), ("2026-03-02", 2, 4)]


def test_the_operator_flag_is_read_from_the_key():
    plain = ApiKey(name="alice", sha256=hash_key("a"))
    assert not access.is_operator(plain) and not access.is_operator(None)

    class OperatorKey(ApiKey):  # the keys file's `operator: true` (front/keys.py)
        operator: bool = True

    assert access.is_operator(OperatorKey(name="root", sha256=hash_key("r")))


def test_every_charge_is_counted_per_key_and_day_with_keys_on_or_off(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    key = ApiKey(name="alice", sha256=hash_key("a"), images_per_day=10)
    access.record_usage_in(usage_sink(store, clock=lambda: TODAY))
    access._installed["access"] = Access((key,), MemoryBuckets())
    try:
        async def charges() -> None:
            await access.charge_owner("alice", images=2, gpu_seconds=0.5)  # a job item of alice's
            await access.charge_owner("alice", images=1, gpu_seconds=0.25)
            await access.charge(None, images=3, gpu_seconds=1.0)  # a live request without a key
        asyncio.run(charges())
    finally:
        access.record_usage_in(None)
        access._installed.clear()
    got = [(u.key, u.requests, u.images, u.gpu_seconds) for u in store.usage(["2026-03-02"])]
    assert got == [(None, 1, 3, 1.0), ("alice", 2, 3, 0.75)]


def test_a_failing_sink_never_fails_the_charge(caplog):
    def broken(key: str | None, images: int, gpu_seconds: float) -> None:
        raise OSError("disk full")

    access.record_usage_in(broken)
    try:
        asyncio.run(access.charge(None, images=1, gpu_seconds=0.1))
    finally:
        access.record_usage_in(None)
    assert "recording the usage of key None failed" in caplog.text
