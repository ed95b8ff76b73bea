"""The job follower (front/jobs/follow.py) on its own: real stores (SQLite; two replicas over one SQLite file or one
redis-server) and real live events (front/jobs/live.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from comfybento.front.jobs import follow
from comfybento.front.jobs.live import JobEvents
from comfybento.front.jobs.records import ItemRecord, JobRecord, now
from comfybento.front.jobs.redis_store import RedisJobStore
from comfybento.front.jobs.store import JobStore, SQLiteJobStore
from tests.redis_server import redis_server

OUTPUT = {"output": "save_image", "node_id": "9", "index": 0, "media_type": "image/png"}


@pytest.fixture
def store(tmp_path) -> JobStore:
    return SQLiteJobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request, tmp_path) -> tuple[JobStore, JobStore]:
    """Two replicas' stores over the same data: one SQLite file, or one redis-server."""
    if request.param == "sqlite":
        return SQLiteJobStore(tmp_path / "shared.sqlite3"), SQLiteJobStore(tmp_path / "shared.sqlite3")
    url = request.getfixturevalue("redis_url")
    first = RedisJobStore(url)
    first.r.flushdb()
    return first, RedisJobStore(url)


def _job(store: JobStore, n: int) -> str:
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=0, created_at=now(), total=n, request_hash=uuid.uuid4().hex)
    store.create_job(job, [ItemRecord(job_id=job.id, index=i, params={}, seed=i) for i in range(n)])
    return job.id


def _complete(store: JobStore, job_id: str) -> int:
    """Lease the job's next item and record it done with one output (what a runner does); its index."""
    (lease,) = store.lease("other", 1, 60, 3)
    assert lease.job_id == job_id
    assert store.complete("other", lease, {"outputs": [{**OUTPUT, "key": f"{job_id}/{lease.index}.png"}]})
    return lease.index


def _event(job_id: str, kind: str, index: int = 0, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "job_id": job_id, "index": index, **fields}


async def _next(changes: AsyncGenerator[follow.Change], n: int = 1) -> list[follow.Change]:
    return [await asyncio.wait_for(anext(changes), 5) for _ in range(n)]


async def _rest(changes: AsyncGenerator[follow.Change]) -> list[follow.Change]:
    return [c async for c in changes]


def test_live_events_become_typed_changes_and_a_finished_item_is_told_once(store):
    job_id = _job(store, 1)
    live = JobEvents()

    async def go() -> tuple[list[follow.Change], list[follow.Change]]:
        with live.subscription(job_id) as queue:
            changes = follow.follow_job(store, queue, job_id, keepalive_s=60, poll_s=60)
            first = await _next(changes)
            live.publish(job_id, _event(job_id, "queued", position=2))
            live.publish(job_id, _event(job_id, "progress", value=1, max=4, node_id=3))
            live.publish(job_id, _event(job_id, "preview", media_type="image/jpeg", data="AAAA"))
            live.publish(job_id, _event(job_id, "output"))  # (outputs are told by the item, once recorded)
            seen = await _next(changes, 3)
            index = _complete(store, job_id)
            live.publish(job_id, _event(job_id, "item", index, status="succeeded", outputs=[{**OUTPUT, "key": "k"}]))
            live.publish(job_id, _event(job_id, "item", index, status="succeeded", outputs=[]))  # told already: dropped
            return first + seen, await asyncio.wait_for(_rest(changes), 5)

    (snapshot, queued, progress, preview), rest = asyncio.run(go())
    assert isinstance(snapshot, follow.JobSnapshot) and snapshot.job.state == "queued" and not snapshot.terminal
    assert queued == follow.Queued(job_id, 0, 2)
    assert progress == follow.Progress(job_id, 0, 1, 4, "3")
    assert preview == follow.Preview(job_id, 0, "image/jpeg", "AAAA")
    outcome, last = rest  # the item (live, told once), then the terminal job: the follow ends
    assert outcome == follow.ItemOutcome(job_id, 0, "succeeded", ({**OUTPUT, "key": "k"},))
    assert isinstance(last, follow.JobSnapshot) and last.terminal and last.job.counts["succeeded"] == 1


def test_a_replica_that_sees_only_the_store_follows_the_job_to_its_end(replicas):
    """Another replica runs every item: no live event reaches this one, which follows by polling its store."""
    runner, here = replicas
    job_id = _job(runner, 2)

    async def go() -> list[follow.Change]:
        with JobEvents().subscription(job_id) as queue:
            changes = follow.follow_job(here, queue, job_id, keepalive_s=60, poll_s=0.05)
            seen = await _next(changes)
            _complete(runner, job_id)
            seen += await _next(changes, 2)
            _complete(runner, job_id)
            return seen + await asyncio.wait_for(_rest(changes), 5)

    first, item0, running, item1, done = asyncio.run(go())
    assert isinstance(first, follow.JobSnapshot) and first.job.state == "queued"
    assert item0 == follow.ItemOutcome(job_id, 0, "succeeded", ({**OUTPUT, "key": f"{job_id}/0.png"},))
    assert isinstance(running, follow.JobSnapshot) and running.job.state == "running" and running.job.counts["succeeded"] == 1
    assert isinstance(item1, follow.ItemOutcome) and item1.index == 1
    assert isinstance(done, follow.JobSnapshot) and done.terminal and done.job.state == "succeeded"


def test_a_lagging_subscription_rereads_the_store_at_once(store):
    """Events lost to lag are made up by a re-read right away, not at the next poll (here: never)."""
    job_id = _job(store, 2)
    live = JobEvents(max_queued=2)

    async def go() -> list[follow.Change]:
        with live.subscription(job_id) as queue:
            changes = follow.follow_job(store, queue, job_id, keepalive_s=60, poll_s=3600)
            await _next(changes)
            index = _complete(store, job_id)
            live.publish(job_id, _event(job_id, "item", index, status="succeeded", outputs=[]))  # lost to the lag below
            for step in range(5):
                live.publish(job_id, _event(job_id, "progress", 1, value=step, max=5))
            return await _next(changes, 3)

    outcome, snapshot, progress = asyncio.run(go())
    assert outcome == follow.ItemOutcome(job_id, 0, "succeeded", ({**OUTPUT, "key": f"{job_id}/0.png"},))
    assert isinstance(snapshot, follow.JobSnapshot) and snapshot.job.counts["succeeded"] == 1 and not snapshot.terminal
    assert progress == follow.Progress(job_id, 1, 4, 5, None)  # the newest event survives the lag; the others were lost


def test_a_job_over_before_the_follow_is_told_then_its_items_then_itself_again(store):
    done = _job(store, 1)
    _complete(store, done)
    cancelled = _job(store, 2)
    store.cancel(cancelled)

    async def go(job_id: str) -> list[follow.Change]:
        with JobEvents().subscription(job_id) as queue:
            return await asyncio.wait_for(_rest(follow.follow_job(store, queue, job_id, keepalive_s=60)), 5)

    first, outcome, last = asyncio.run(go(done))
    assert first is last and isinstance(last, follow.JobSnapshot) and last.terminal  # the terminal job comes last
    assert isinstance(outcome, follow.ItemOutcome) and outcome.status == "succeeded"
    changes = asyncio.run(go(cancelled))
    assert [type(c) for c in changes] == [follow.JobSnapshot, follow.ItemOutcome, follow.ItemOutcome, follow.JobSnapshot]
    assert [c.status for c in changes if isinstance(c, follow.ItemOutcome)] == ["cancelled", "cancelled"]


def test_a_job_deleted_while_followed_ends_the_follow_and_a_quiet_one_gets_keepalives(store):
    job_id = _job(store, 1)
    live = JobEvents()

    async def go() -> tuple[list[follow.Change], list[follow.Change]]:
        with live.subscription(job_id) as queue:
            changes = follow.follow_job(store, queue, job_id, keepalive_s=0.05, poll_s=0.02)
            seen = await _next(changes, 3)
            store.delete_job(job_id)
            return seen, await asyncio.wait_for(_rest(changes), 5)

    (first, *quiet), rest = asyncio.run(go())
    assert isinstance(first, follow.JobSnapshot)
    assert quiet == [follow.Keepalive(), follow.Keepalive()]
    assert rest[-1] == follow.JobGone(job_id) and all(c == follow.Keepalive() for c in rest[:-1])
    assert live.subscribers == 0


def test_following_a_changing_set_of_jobs(store):
    """ComfyUI's /ws: the client's prompts join as they are submitted and leave when over; another job's item is told."""
    mine, other = _job(store, 1), _job(store, 1)
    followed: dict[str, None] = {}
    live = JobEvents()

    async def go() -> list[follow.Change]:
        with live.subscription(None) as queue:
            changes = follow.follow_jobs(store, queue, lambda: followed.keys(), poll_s=0.05)
            live.publish(other, _event(other, "progress", value=1, max=2))  # not followed: not told
            live.publish(other, _event(other, "item", status="failed", error="boom", error_kind="node"))
            seen = await _next(changes)
            followed[mine] = None  # submitted after the client connected
            live.publish(mine, _event(mine, "started"))
            seen += await _next(changes, 2)
            _complete(store, mine)  # no live event: the poll sees it
            seen += await _next(changes, 2)
            del followed[mine]  # (the client was told its end)
            await asyncio.sleep(0.2)
            live.publish(mine, _event(mine, "progress", value=1, max=2))  # no longer followed
            live.publish(other, _event(other, "item", status="retrying"))
            seen += await _next(changes)
            await changes.aclose()
            return seen

    others, started, snapshot, outcome, done, retrying = asyncio.run(go())
    assert others == follow.ItemOutcome(other, 0, "failed", None, "boom", "node")
    assert started == follow.Started(mine, 0)  # then the store re-read: the job as it is
    assert isinstance(snapshot, follow.JobSnapshot) and snapshot.job.id == mine and snapshot.job.state == "queued"
    assert isinstance(outcome, follow.ItemOutcome) and outcome.job_id == mine
    assert isinstance(done, follow.JobSnapshot) and done.job.id == mine and done.terminal
    assert retrying == follow.ItemOutcome(other, 0, "retrying", None)
