"""Token buckets, in memory and in a real redis-server, through the same primitive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from comfybento.front.ratelimit import ALWAYS, Buckets, MemoryBuckets, Policy, RedisBuckets
from tests.redis_server import redis_server

pytestmark = pytest.mark.anyio
PER_MIN = Policy(limit=2, window_s=60)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def buckets(request, redis_url) -> AsyncIterator[Buckets]:
    made: Buckets = MemoryBuckets() if request.param == "memory" else RedisBuckets(redis_url, prefix=f"test:{request.node.name}:")
    yield made
    await made.aclose()


async def test_rate_limit_allows_the_burst_then_refuses_with_retry_after(buckets):
    first = await buckets.take("k", PER_MIN, cost=1, require=1)
    second = await buckets.take("k", PER_MIN, cost=1, require=1)
    third = await buckets.take("k", PER_MIN, cost=1, require=1)
    assert first.allowed and second.allowed and not third.allowed
    assert (first.remaining, second.remaining, third.remaining) == (1, 0, 0)
    assert 29 <= third.retry_after_s <= 30  # one token comes back every 30 s
    assert 59 <= third.reset_s <= 60
    assert (await buckets.take("other", PER_MIN, cost=1, require=1)).allowed  # buckets are per name


async def test_quota_is_checked_up_front_and_charged_after(buckets):
    day = Policy(limit=3, window_s=86400)
    assert (await buckets.take("q", day, cost=0, require=1)).allowed
    charged = await buckets.take("q", day, cost=5, require=ALWAYS)  # a response with more images than are left
    assert charged.allowed and charged.tokens == pytest.approx(-2, abs=1e-3)
    refused = await buckets.take("q", day, cost=0, require=1)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(3 * 86400 / 3, rel=1e-3)  # 3 images to earn back at 3/day


async def test_tokens_come_back_with_time(buckets):
    fast = Policy(limit=2, window_s=1)  # 2 per second
    for _ in range(2):
        assert (await buckets.take("f", fast, cost=1, require=1)).allowed
    assert not (await buckets.take("f", fast, cost=1, require=1)).allowed
    await asyncio.sleep(0.6)
    assert (await buckets.take("f", fast, cost=1, require=1)).allowed


async def test_memory_bucket_refills_by_the_clock():
    now = [1000.0]
    buckets = MemoryBuckets(clock=lambda: now[0])
    for _ in range(2):
        assert (await buckets.take("k", PER_MIN, cost=1, require=1)).allowed
    assert not (await buckets.take("k", PER_MIN, cost=1, require=1)).allowed
    now[0] += 29.9
    assert not (await buckets.take("k", PER_MIN, cost=1, require=1)).allowed
    now[0] += 0.1
    assert (await buckets.take("k", PER_MIN, cost=1, require=1)).allowed
    now[0] += 3600
    assert (await buckets.take("k", PER_MIN, cost=0, require=1)).tokens == 2  # never above the limit


async def test_redis_buckets_are_shared_and_atomic_across_replicas(redis_url):
    replicas = [RedisBuckets(redis_url, prefix="test:shared:") for _ in range(3)]
    policy = Policy(limit=10, window_s=3600)
    try:
        decisions = await asyncio.gather(*(replicas[i % 3].take("k", policy, cost=1, require=1) for i in range(40)))
        assert sum(d.allowed for d in decisions) == 10
        assert not (await replicas[0].take("k", policy, cost=1, require=1)).allowed
    finally:
        for r in replicas:
            await r.aclose()
