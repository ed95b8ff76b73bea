"""Token buckets: per key and policy, in this process's memory or shared by replicas through Redis.

A bucket holds at most `capacity` tokens and gains `per_second` tokens a second.
One primitive serves every use, `take(name, policy, cost, require)`: refill, then,
if the bucket holds at least `require` tokens, remove `cost` of them.

- a request under a rate limit: cost 1, require 1;
- a quota checked before a request (its images are not known yet): cost 0, require 1;
- a quota charged after the response: cost n, require `ALWAYS` (the bucket may go
  below zero; the key is refused until it has refilled past one image again).

With Redis the whole step is one Lua script, atomic however many replicas call it,
and timed by the Redis server's clock so that replicas' clocks need not agree.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# `require` that every bucket meets (a charge after the fact is never refused).
ALWAYS = -1e18


class LimiterUnavailable(Exception):
    """The shared store (Redis) could not be asked; the caller decides whether to let the request through."""


@dataclass(frozen=True)
class Policy:
    """A limit as a bucket: `limit` units per `window_s` seconds, with a burst of up to `limit`."""

    limit: int
    window_s: int

    @property
    def per_second(self) -> float:
        return self.limit / self.window_s


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Tokens left after this step (may be negative after a charge).
    tokens: float
    policy: Policy
    require: float = 1.0

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.tokens))

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until the bucket holds `require` tokens again (at least 1)."""
        return max(1, math.ceil((self.require - self.tokens) / self.policy.per_second))

    @property
    def reset_s(self) -> int:
        """Whole seconds until the bucket is full again."""
        return max(0, math.ceil((self.policy.limit - self.tokens) / self.policy.per_second))


class Buckets(Protocol):
    async def take(self, name: str, policy: Policy, cost: float, require: float) -> Decision: ...

    async def aclose(self) -> None: ...


class MemoryBuckets:
    """Buckets in this process (one replica, one worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # name -> (tokens, time of last update)
        self._lock = asyncio.Lock()

    async def take(self, name: str, policy: Policy, cost: float, require: float) -> Decision:
        async with self._lock:
            now = self._clock()
            tokens, then = self._state.get(name, (float(policy.limit), now))
            tokens = min(float(policy.limit), tokens + max(0.0, now - then) * policy.per_second)
            allowed = tokens >= require
            if allowed:
                tokens -= cost
            self._state[name] = (tokens, now)
        return Decision(allowed=allowed, tokens=tokens, policy=policy, require=require)

    async def aclose(self) -> None:
        return None


_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local require = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= require then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 60000)
return {allowed, string.format('%.17g', tokens)}
"""


class RedisBuckets:
    """Buckets in Redis, shared by every replica that uses the same server (COMFYBENTO_REDIS_URL)."""

    def __init__(self, url: str, prefix: str = "comfybento:bucket:") -> None:
        import redis.asyncio

        self._redis: Any = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self._redis.register_script(_TAKE)
        self._prefix = prefix

    async def take(self, name: str, policy: Policy, cost: float, require: float) -> Decision:
        from redis.exceptions import RedisError

        try:
            allowed, tokens = await self._script(keys=[self._prefix + name], args=[policy.limit, policy.per_second, cost, require])
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"redis: {exc}") from exc
        return Decision(allowed=bool(int(allowed)), tokens=float(tokens), policy=policy, require=require)

    async def aclose(self) -> None:
        await self._redis.aclose()
