"""A job store in Redis, so several `bentoml serve` replicas share one queue.

Keys (prefix `cb:`): a hash per job (fields + per-state counters), a hash per
item, sorted sets for ready items (by priority, age, index), delayed retries
and leases, and pending webhook deliveries. Leasing and finishing are Lua
scripts, so each is atomic across replicas. Lua never decodes JSON (seeds are
64-bit integers): parameters and results are stored as opaque strings.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from comfybento.jobs.events import item_event, job_event
from comfybento.jobs.records import TERMINAL_JOB_STATES, Delivery, ItemRecord, JobRecord, Lease, now
from comfybento.jobs.store import IdempotencyConflict

P = "cb:"

_LEASE = """
local now, owner, limit, lease_s = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for _, zset in ipairs({KEYS[2], KEYS[3]}) do
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now)) do
    redis.call('ZREM', zset, m)
    redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[4], m), m)
  end
end
local out = {}
while #out < limit do
  local popped = redis.call('ZPOPMIN', KEYS[1], 1)
  if #popped == 0 then break end
  local m = popped[1]
  local sep = string.find(m, '|', 1, true)
  local job, idx = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  local jkey, ikey = 'cb:job:' .. job, 'cb:item:' .. job .. ':' .. idx
  local jstate = redis.call('HGET', jkey, 'state')
  local state = redis.call('HGET', ikey, 'state')
  if jstate and jstate ~= 'cancelled' and (state == 'queued' or state == 'running') then
    redis.call('HINCRBY', jkey, 'n:' .. state, -1)
    redis.call('HINCRBY', jkey, 'n:running', 1)
    local attempts = redis.call('HINCRBY', ikey, 'attempts', 1)
    redis.call('HSET', ikey, 'state', 'running', 'owner', owner, 'lease_expires', now + lease_s)
    redis.call('HSETNX', ikey, 'started_at', now)
    redis.call('ZADD', KEYS[2], now + lease_s, m)
    if jstate == 'queued' then redis.call('HSET', jkey, 'state', 'running') end
    table.insert(out, m)
  end
end
return out
"""

_FINISH = """
local m, owner, state, payload, field, now, retry_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local sep = string.find(m, '|', 1, true)
local job, idx = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
local jkey, ikey = 'cb:job:' .. job, 'cb:item:' .. job .. ':' .. idx
if redis.call('HGET', ikey, 'state') ~= 'running' or redis.call('HGET', ikey, 'owner') ~= owner then return 0 end
redis.call('ZREM', KEYS[2], m)
redis.call('HINCRBY', jkey, 'n:running', -1)
if retry_at ~= '' then
  redis.call('HSET', ikey, 'state', 'queued', 'owner', '', field, payload)
  redis.call('HINCRBY', jkey, 'n:queued', 1)
  redis.call('ZADD', KEYS[3], tonumber(retry_at), m)
  return 1
end
redis.call('HSET', ikey, 'state', state, 'owner', '', field, payload, 'finished_at', now)
redis.call('HINCRBY', jkey, 'n:' .. state, 1)
local url = redis.call('HGET', jkey, 'webhook_url')
if url and url ~= '' and redis.call('HGET', jkey, 'webhook_per_item') == '1' then
  redis.call('ZADD', KEYS[5], 0, job .. ':item:' .. idx)
end
local done = 0
for _, s in ipairs({'succeeded', 'failed', 'cancelled'}) do done = done + tonumber(redis.call('HGET', jkey, 'n:' .. s) or '0') end
local jstate = redis.call('HGET', jkey, 'state')
if done >= tonumber(redis.call('HGET', jkey, 'total')) and jstate ~= 'succeeded' and jstate ~= 'failed' and jstate ~= 'cancelled' then
  local final = 'succeeded'
  if tonumber(redis.call('HGET', jkey, 'n:failed') or '0') > 0 then final = 'failed' end
  redis.call('HSET', jkey, 'state', final, 'finished_at', now)
  if url and url ~= '' then redis.call('ZADD', KEYS[5], 0, job .. ':job') end
end
return 1
"""

_KEYS = [P + "ready", P + "leases", P + "delayed", P + "score", P + "deliveries:due"]


class RedisJobStore:
    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.r.ping()
        self._lease = self.r.register_script(_LEASE)
        self._finish = self.r.register_script(_FINISH)

    # ------------------------------------------------------------ jobs

    def create_job(self, job: JobRecord, items: list[ItemRecord]) -> tuple[JobRecord, bool]:
        if job.idempotency_key and not self.r.set(P + "idem:" + job.idempotency_key, job.id, nx=True):
            existing_id = self.r.get(P + "idem:" + job.idempotency_key)
            existing = self.get_job(str(existing_id))
            if existing is None or existing.request_hash != job.request_hash:
                raise IdempotencyConflict(f"idempotency_key {job.idempotency_key!r} was used for job {existing_id} with a different request")
            return existing, False
        score = (100 - job.priority) * 1e13 + job.created_at * 1000
        pipe = self.r.pipeline(transaction=True)
        for item in items:
            member = f"{job.id}|{item.index:06d}"
            pipe.hset(P + f"item:{job.id}:{item.index:06d}", mapping={
                "index": item.index, "params": json.dumps(item.params), "seed": "" if item.seed is None else str(item.seed),
                "state": "queued", "attempts": 0})
            pipe.hset(P + "score", member, score)
            pipe.zadd(P + "ready", {member: score})
        pipe.hset(P + "job:" + job.id, mapping={
            "workflow": job.workflow, "priority": job.priority, "created_at": job.created_at, "total": job.total,
            "state": "queued", "idempotency_key": job.idempotency_key or "", "request_hash": job.request_hash,
            "webhook_url": job.webhook_url or "", "webhook_per_item": int(job.webhook_per_item), "use_cache": int(job.use_cache),
            "n:queued": job.total})
        pipe.zadd(P + "jobs", {job.id: job.created_at})
        pipe.execute()
        created = self.get_job(job.id)
        assert created is not None
        return created, True

    def get_job(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(P + "job:" + job_id)
        if not h:
            return None
        counts = {k[2:]: int(v) for k, v in h.items() if k.startswith("n:") and int(v) > 0}
        return JobRecord(
            id=job_id, workflow=h["workflow"], priority=int(h["priority"]), created_at=float(h["created_at"]), total=int(h["total"]),
            state=h["state"], updated_at=float(h.get("finished_at") or h["created_at"]),  # type: ignore[arg-type]
            finished_at=float(h["finished_at"]) if h.get("finished_at") else None, idempotency_key=h["idempotency_key"] or None,
            request_hash=h["request_hash"], webhook_url=h["webhook_url"] or None, webhook_per_item=h["webhook_per_item"] == "1",
            use_cache=h["use_cache"] == "1", counts=counts)

    def list_jobs(self, limit: int, offset: int) -> list[JobRecord]:
        ids = self.r.zrevrange(P + "jobs", offset, offset + limit - 1)
        return [j for i in ids if (j := self.get_job(i)) is not None]

    def _item(self, job_id: str, index: int) -> ItemRecord | None:
        return self._item_from_hash(job_id, self.r.hgetall(P + f"item:{job_id}:{index:06d}"))

    @staticmethod
    def _item_from_hash(job_id: str, h: dict[str, str]) -> ItemRecord | None:
        if not h:
            return None
        return ItemRecord(
            job_id=job_id, index=int(h["index"]), params=json.loads(h["params"]), seed=int(h["seed"]) if h["seed"] else None,
            state=h["state"], attempts=int(h.get("attempts", 0)), lease_owner=h.get("owner") or None,  # type: ignore[arg-type]
            started_at=float(h["started_at"]) if h.get("started_at") else None,
            finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
            result=json.loads(h["result"]) if h.get("result") else None, error=json.loads(h["error"]) if h.get("error") else None)

    def get_items(self, job_id: str, offset: int, limit: int) -> list[ItemRecord]:
        job = self.get_job(job_id)
        if job is None:
            return []
        pipe = self.r.pipeline(transaction=False)
        for idx in range(offset, min(job.total, offset + limit)):
            pipe.hgetall(P + f"item:{job_id}:{idx:06d}")
        return [i for h in pipe.execute() if (i := self._item_from_hash(job_id, h)) is not None]

    # ------------------------------------------------------------ leases

    def lease(self, owner: str, limit: int, lease_s: float) -> list[Lease]:
        members = self._lease(keys=[P + "ready", P + "leases", P + "delayed", P + "score"], args=[now(), owner, limit, lease_s])
        leases = []
        for member in members:
            job_id, idx = member.split("|")
            job, item = self.get_job(job_id), self._item(job_id, int(idx))
            if job is None or item is None:
                continue
            leases.append(Lease(job_id=job_id, workflow=job.workflow, index=item.index, params=item.params, seed=item.seed,
                                attempt=item.attempts, use_cache=job.use_cache, webhook_per_item=job.webhook_per_item))
        return leases

    def renew(self, owner: str, keys: list[tuple[str, int]], lease_s: float) -> None:
        pipe = self.r.pipeline()
        for job_id, idx in keys:
            pipe.zadd(P + "leases", {f"{job_id}|{idx:06d}": now() + lease_s}, xx=True)
        pipe.execute()

    def complete(self, owner: str, lease: Lease, result: dict[str, Any]) -> bool:
        return self._call_finish(owner, lease, "succeeded", json.dumps(result), "result", None)

    def fail(self, owner: str, lease: Lease, error: dict[str, Any], retry_at: float | None) -> bool:
        return self._call_finish(owner, lease, "failed", json.dumps(error), "error", retry_at)

    def _call_finish(self, owner: str, lease: Lease, state: str, payload: str, field: str, retry_at: float | None) -> bool:
        member = f"{lease.job_id}|{lease.index:06d}"
        return bool(self._finish(keys=_KEYS, args=[member, owner, state, payload, field, now(), "" if retry_at is None else retry_at]))

    def cancel(self, job_id: str) -> JobRecord | None:
        job = self.get_job(job_id)
        if job is None:
            return None
        if job.state not in TERMINAL_JOB_STATES:
            key = P + "job:" + job_id
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(key, mapping={"state": "cancelled", "finished_at": now()})
            if job.webhook_url:
                pipe.zadd(P + "deliveries:due", {f"{job_id}:job": 0})
            pipe.execute()
            self._cancel_items(job)
        return self.get_job(job_id)

    def _cancel_items(self, job: JobRecord) -> None:
        for idx in range(job.total):
            ikey = P + f"item:{job.id}:{idx:06d}"
            state = self.r.hget(ikey, "state")
            if state in ("queued", "running"):
                pipe = self.r.pipeline(transaction=True)
                pipe.hset(ikey, mapping={"state": "cancelled", "owner": "", "finished_at": now()})
                pipe.hincrby(P + "job:" + job.id, f"n:{state}", -1)
                pipe.hincrby(P + "job:" + job.id, "n:cancelled", 1)
                pipe.zrem(P + "ready", f"{job.id}|{idx:06d}")
                pipe.execute()

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str) -> dict[str, Any] | None:
        raw = self.r.get(P + "cache:" + key)
        return json.loads(raw) if raw else None

    def cache_put(self, key: str, result: dict[str, Any]) -> None:
        self.r.set(P + "cache:" + key, json.dumps(result))

    # ------------------------------------------------------------ webhooks

    def due_deliveries(self, owner: str, limit: int, claim_s: float) -> list[Delivery]:
        t = now()
        out = []
        for delivery_id in self.r.zrangebyscore(P + "deliveries:due", "-inf", t, start=0, num=limit):
            # claim: push its due time forward; only the replica whose update lands first takes it
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(P + "deliveries:due")
                    score = pipe.zscore(P + "deliveries:due", delivery_id)
                    if score is None or score > t:
                        continue
                    pipe.multi()
                    pipe.zadd(P + "deliveries:due", {delivery_id: t + claim_s})
                    pipe.execute()
                except redis.WatchError:
                    continue
            delivery = self._delivery(delivery_id)
            if delivery is not None:
                out.append(delivery)
        return out

    def _delivery(self, delivery_id: str) -> Delivery | None:
        saved = self.r.get(P + "delivery:" + delivery_id)
        if saved:
            return Delivery(**json.loads(saved))
        job_id, kind, *rest = delivery_id.split(":")
        job = self.get_job(job_id)
        if job is None or not job.webhook_url:
            return None
        if kind == "item":
            item = self._item(job_id, int(rest[0]))
            if item is None:
                return None
            payload = item_event(job, item)
        else:
            payload = job_event(job)
        self.r.rpush(P + "deliveries:" + job_id, delivery_id)
        return Delivery(id=delivery_id, job_id=job_id, event=payload["type"], payload=payload, url=job.webhook_url)

    def save_delivery(self, delivery: Delivery) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(P + "delivery:" + delivery.id, json.dumps(delivery.__dict__))
        if delivery.state == "pending":
            pipe.zadd(P + "deliveries:due", {delivery.id: delivery.next_attempt_at})
        else:
            pipe.zrem(P + "deliveries:due", delivery.id)
        pipe.execute()

    def deliveries(self, job_id: str) -> list[Delivery]:
        ids = dict.fromkeys(self.r.lrange(P + "deliveries:" + job_id, 0, -1))
        return [d for i in ids if (d := self._delivery(i)) is not None]

    # ------------------------------------------------------------ retention

    def expire(self, before: float) -> list[str]:
        expired = []
        for job_id in self.r.zrangebyscore(P + "jobs", "-inf", before):
            job = self.get_job(job_id)
            if job is None or job.state not in TERMINAL_JOB_STATES or (job.finished_at or now()) >= before:
                continue
            keys = [P + f"item:{job_id}:{i:06d}" for i in range(job.total)]
            keys += [P + "job:" + job_id, P + "deliveries:" + job_id]
            self.r.delete(*keys)
            self.r.zrem(P + "jobs", job_id)
            expired.append(job_id)
        return expired
