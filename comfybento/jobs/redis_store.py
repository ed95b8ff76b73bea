"""A job store in Redis, so several `bentoml serve` replicas share one queue.

Keys (prefix `cb:`), each deleted with its job by `delete_job`:
- `job:<id>` (fields, per-state counters `n:<state>`, usage counters `images` and
  `gpu_seconds`; a job written before a field existed reads its default), `item:<id>:<index>`
  (fields, its queue score);
- `idem:<key>` -> job id, set in the same MULTI/EXEC as the job, so a create is all or nothing;
- `deliveries:<id>` (the job's delivery ids) and `delivery:<delivery id>` (its attempt log);
- `cache:<key>` (a result and the job whose files it names) and `jobcache:<id>` (the cache keys the job made).
Shared sorted sets hold members `<id>|<index>`: `ready` (by priority, age, index),
`delayed` (retries), `leases` (by expiry), `deliveries:due`, and `jobs` (by
creation); `delete_job` removes the job's members, so nothing outlives it.

Leasing and finishing are Lua scripts, so each is atomic across replicas. Lua
never decodes JSON (seeds are 64-bit integers): parameters and results are
stored as opaque strings.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from comfybento.jobs.events import item_event, job_event
from comfybento.jobs.records import TERMINAL_JOB_STATES, Delivery, ItemRecord, JobRecord, Lease, item_usage, now
from comfybento.jobs.store import check_idempotent

P = "cb:"

# finish(member, state, field, payload, now, due): record an item's final state, count it, queue webhooks, finish the job.
_FINISH_ITEM = """
local function split(m)
  local sep = string.find(m, '|', 1, true)
  return string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
end
local function finish(m, state, field, payload, now, due)
  local job, idx = split(m)
  local jkey, ikey = 'cb:job:' .. job, 'cb:item:' .. job .. ':' .. idx
  redis.call('HINCRBY', jkey, 'n:' .. redis.call('HGET', ikey, 'state'), -1)
  redis.call('HSET', ikey, 'state', state, 'owner', '', field, payload, 'finished_at', now)
  redis.call('HINCRBY', jkey, 'n:' .. state, 1)
  local url = redis.call('HGET', jkey, 'webhook_url')
  if url and url ~= '' and redis.call('HGET', jkey, 'webhook_per_item') == '1' then
    redis.call('ZADD', due, 0, job .. ':item:' .. idx)
  end
  local done = 0
  for _, s in ipairs({'succeeded', 'failed', 'cancelled'}) do done = done + tonumber(redis.call('HGET', jkey, 'n:' .. s) or '0') end
  local jstate = redis.call('HGET', jkey, 'state')
  if done >= tonumber(redis.call('HGET', jkey, 'total')) and jstate ~= 'succeeded' and jstate ~= 'failed' and jstate ~= 'cancelled' then
    local final = 'succeeded'
    if tonumber(redis.call('HGET', jkey, 'n:failed') or '0') > 0 then final = 'failed' end
    redis.call('HSET', jkey, 'state', final, 'finished_at', now)
    if url and url ~= '' then redis.call('ZADD', due, 0, job .. ':job') end
  end
end
"""

# KEYS: ready, leases, delayed, deliveries:due. ARGV: now, owner, limit, lease_s, max_attempts.
_LEASE = _FINISH_ITEM + """
local now, owner, limit, lease_s, max_attempts = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _, zset in ipairs({KEYS[2], KEYS[3]}) do
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now)) do
    redis.call('ZREM', zset, m)
    local job, idx = split(m)
    local score = redis.call('HGET', 'cb:item:' .. job .. ':' .. idx, 'score')
    if score then redis.call('ZADD', KEYS[1], score, m) end
  end
end
local out = {}
while #out < limit do
  local popped = redis.call('ZPOPMIN', KEYS[1], 1)
  if #popped == 0 then break end
  local m = popped[1]
  local job, idx = split(m)
  local jkey, ikey = 'cb:job:' .. job, 'cb:item:' .. job .. ':' .. idx
  local jstate = redis.call('HGET', jkey, 'state')
  local state = redis.call('HGET', ikey, 'state')
  if jstate and jstate ~= 'cancelled' and (state == 'queued' or state == 'running') then
    local attempts = tonumber(redis.call('HGET', ikey, 'attempts') or '0')
    if attempts >= max_attempts then
      local msg = 'gave up after ' .. attempts .. ' attempts: the item never finished (its worker died or hung)'
      finish(m, 'failed', 'error', '{"kind":"internal","message":"' .. msg .. '","retryable":false,"node_id":null,"class_type":null}',
             now, KEYS[4])
    else
      redis.call('HINCRBY', jkey, 'n:' .. state, -1)
      redis.call('HINCRBY', jkey, 'n:running', 1)
      redis.call('HINCRBY', ikey, 'attempts', 1)
      redis.call('HSET', ikey, 'state', 'running', 'owner', owner, 'lease_expires', now + lease_s)
      redis.call('HSETNX', ikey, 'started_at', now)
      redis.call('ZADD', KEYS[2], now + lease_s, m)
      if jstate == 'queued' then redis.call('HSET', jkey, 'state', 'running') end
      table.insert(out, m)
    end
  end
end
return out
"""

# KEYS: ready, leases, delayed, deliveries:due.
# ARGV: member, owner, state, payload, field, now, retry_at ('' = final), images, gpu_seconds (the item's usage, added to its job).
_FINISH = _FINISH_ITEM + """
local m, owner, state, payload, field, now, retry_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local job, idx = split(m)
local jkey, ikey = 'cb:job:' .. job, 'cb:item:' .. job .. ':' .. idx
if redis.call('HGET', ikey, 'state') ~= 'running' or redis.call('HGET', ikey, 'owner') ~= owner then return 0 end
if tonumber(ARGV[8]) ~= 0 then redis.call('HINCRBY', jkey, 'images', ARGV[8]) end
if tonumber(ARGV[9]) ~= 0 then redis.call('HINCRBYFLOAT', jkey, 'gpu_seconds', ARGV[9]) end
redis.call('ZREM', KEYS[2], m)
if retry_at ~= '' then
  redis.call('HINCRBY', jkey, 'n:running', -1)
  redis.call('HSET', ikey, 'state', 'queued', 'owner', '', field, payload)
  redis.call('HINCRBY', jkey, 'n:queued', 1)
  redis.call('ZADD', KEYS[3], tonumber(retry_at), m)
  return 1
end
finish(m, state, field, payload, now, KEYS[4])
return 1
"""

# KEYS: job, cache entry, the job's cache-key set. ARGV: result, job id, cache key. Only while the job exists.
_CACHE_PUT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'result', ARGV[1], 'job_id', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# KEYS: job, delivery, the job's delivery list, deliveries:due. ARGV: delivery json, id, state, next attempt. Only while the job exists.
_SAVE_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[3], ARGV[2]) end
redis.call('SET', KEYS[2], ARGV[1])
if ARGV[3] == 'pending' then redis.call('ZADD', KEYS[4], tonumber(ARGV[4]), ARGV[2]) else redis.call('ZREM', KEYS[4], ARGV[2]) end
return 1
"""

# KEYS: cache entries the job made. ARGV: job id. Deletes those that still name the job (a later job may have replaced one).
_CACHE_DROP = """
for _, k in ipairs(KEYS) do
  if redis.call('HGET', k, 'job_id') == ARGV[1] then redis.call('DEL', k) end
end
return 1
"""

_QUEUES = [P + "ready", P + "leases", P + "delayed", P + "deliveries:due"]


def _member(job_id: str, index: int) -> str:
    return f"{job_id}|{index:06d}"


class RedisJobStore:
    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.r.ping()
        self._lease = self.r.register_script(_LEASE)
        self._finish = self.r.register_script(_FINISH)
        self._cache_put = self.r.register_script(_CACHE_PUT)
        self._save_delivery = self.r.register_script(_SAVE_DELIVERY)
        self._cache_drop = self.r.register_script(_CACHE_DROP)

    # ------------------------------------------------------------ jobs

    def create_job(self, job: JobRecord, items: list[ItemRecord]) -> tuple[JobRecord, bool]:
        """One MULTI/EXEC writes the idempotency key, the job and its items (WATCH on the key: a racing create retries)."""
        idem = P + "idem:" + job.idempotency_key if job.idempotency_key else None
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    if idem is not None:
                        pipe.watch(idem)
                        existing_id = pipe.get(idem)
                        if existing_id is not None and (existing := self.get_job(str(existing_id))) is not None:
                            check_idempotent(existing, job)
                            return existing, False
                    pipe.multi()
                    if idem is not None:
                        pipe.set(idem, job.id)
                    self._write_job(pipe, job, items)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        created = self.get_job(job.id)
        assert created is not None
        return created, True

    @staticmethod
    def _write_job(pipe: Any, job: JobRecord, items: list[ItemRecord]) -> None:
        score = (100 - job.priority) * 1e13 + job.created_at * 1000
        for item in items:
            pipe.hset(P + f"item:{job.id}:{item.index:06d}", mapping={
                "index": item.index, "params": json.dumps(item.params), "seed": "" if item.seed is None else str(item.seed),
                "state": "queued", "attempts": 0, "score": score})
        pipe.zadd(P + "ready", {_member(job.id, item.index): score for item in items})
        pipe.hset(P + "job:" + job.id, mapping={
            "workflow": job.workflow, "priority": job.priority, "created_at": job.created_at, "total": job.total,
            "state": "queued", "idempotency_key": job.idempotency_key or "", "request_hash": job.request_hash,
            "webhook_url": job.webhook_url or "", "webhook_per_item": int(job.webhook_per_item), "use_cache": int(job.use_cache),
            "owner": job.owner or "", "images": 0, "gpu_seconds": 0, "n:queued": job.total})
        pipe.zadd(P + "jobs", {job.id: job.created_at})
        if job.owner is not None:
            pipe.zadd(P + "jobs:owner:" + job.owner, {job.id: job.created_at})

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
            use_cache=h["use_cache"] == "1", counts=counts, owner=h.get("owner") or None, images=int(h.get("images") or 0),
            gpu_seconds=float(h.get("gpu_seconds") or 0))

    def list_jobs(self, limit: int, offset: int, owner: str | None = None) -> list[JobRecord]:
        """Newest first; of one owner from its own index (`jobs:owner:<name>`, kept since owners are listed apart)."""
        ids = self.r.zrevrange(P + ("jobs:owner:" + owner if owner is not None else "jobs"), offset, offset + limit - 1)
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

    def lease(self, owner: str, limit: int, lease_s: float, max_attempts: int) -> list[Lease]:
        members = self._lease(keys=_QUEUES, args=[now(), owner, limit, lease_s, max_attempts])
        leases = []
        for member in members:
            job_id, idx = member.split("|")
            job, item = self.get_job(job_id), self._item(job_id, int(idx))
            if job is None or item is None:
                continue
            leases.append(Lease(job_id=job_id, workflow=job.workflow, index=item.index, params=item.params, seed=item.seed,
                                attempt=item.attempts, use_cache=job.use_cache, webhook_per_item=job.webhook_per_item,
                                job_owner=job.owner))
        return leases

    def renew(self, owner: str, keys: list[tuple[str, int]], lease_s: float) -> None:
        pipe = self.r.pipeline()
        for job_id, idx in keys:
            pipe.zadd(P + "leases", {_member(job_id, idx): now() + lease_s}, xx=True)
        pipe.execute()

    def complete(self, owner: str, lease: Lease, result: dict[str, Any]) -> bool:
        return self._call_finish(owner, lease, "succeeded", json.dumps(result), "result", None, item_usage(result))

    def fail(self, owner: str, lease: Lease, error: dict[str, Any], retry_at: float | None) -> bool:
        return self._call_finish(owner, lease, "failed", json.dumps(error), "error", retry_at)

    def _call_finish(self, owner: str, lease: Lease, state: str, payload: str, field: str, retry_at: float | None,
                     usage: tuple[int, float] = (0, 0.0)) -> bool:
        args = [_member(lease.job_id, lease.index), owner, state, payload, field, now(), "" if retry_at is None else retry_at,
                usage[0], repr(usage[1])]
        return bool(self._finish(keys=_QUEUES, args=args))

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
                pipe.zrem(P + "ready", _member(job.id, idx))
                pipe.execute()

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str) -> dict[str, Any] | None:
        raw = self.r.hget(P + "cache:" + key, "result")
        return json.loads(raw) if raw else None

    def cache_put(self, key: str, result: dict[str, Any], job_id: str) -> None:
        self._cache_put(keys=[P + "job:" + job_id, P + "cache:" + key, P + "jobcache:" + job_id], args=[json.dumps(result), job_id, key])

    def cache_delete(self, key: str) -> None:
        self.r.delete(P + "cache:" + key)

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
            else:  # its job expired
                self.r.zrem(P + "deliveries:due", delivery_id)
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
        return Delivery(id=delivery_id, job_id=job_id, event=payload["type"], payload=payload, url=job.webhook_url)

    def save_delivery(self, delivery: Delivery) -> None:
        self._save_delivery(
            keys=[P + "job:" + delivery.job_id, P + "delivery:" + delivery.id, P + "deliveries:" + delivery.job_id, P + "deliveries:due"],
            args=[json.dumps(delivery.__dict__), delivery.id, delivery.state, delivery.next_attempt_at])

    def deliveries(self, job_id: str) -> list[Delivery]:
        ids = dict.fromkeys(self.r.lrange(P + "deliveries:" + job_id, 0, -1))
        return [d for i in ids if (d := self._delivery(i)) is not None]

    # ------------------------------------------------------------ retention

    def expirable(self, before: float) -> list[str]:
        expired = []
        for job_id in self.r.zrangebyscore(P + "jobs", "-inf", before):
            job = self.get_job(job_id)
            if job is not None and job.state in TERMINAL_JOB_STATES and job.finished_at is not None and job.finished_at < before:
                expired.append(job_id)
        return expired

    def delete_job(self, job_id: str) -> None:
        """Every key of the job, and its members of the shared sets, in one MULTI/EXEC."""
        job = self.get_job(job_id)
        if job is None:
            return
        members = [_member(job.id, i) for i in range(job.total)]
        delivery_ids = self.r.lrange(P + "deliveries:" + job.id, 0, -1)
        cache_keys = [P + "cache:" + k for k in self.r.smembers(P + "jobcache:" + job.id)]
        if cache_keys:
            self._cache_drop(keys=cache_keys, args=[job.id])
        idem = P + "idem:" + job.idempotency_key if job.idempotency_key else None
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(P + "job:" + job.id, P + "deliveries:" + job.id, P + "jobcache:" + job.id,
                    *(P + f"item:{job.id}:{i:06d}" for i in range(job.total)), *(P + "delivery:" + d for d in delivery_ids))
        for queue in (P + "ready", P + "leases", P + "delayed"):
            pipe.zrem(queue, *members)
        pipe.zrem(P + "deliveries:due", f"{job.id}:job", *(f"{job.id}:item:{i:06d}" for i in range(job.total)))
        pipe.zrem(P + "jobs", job.id)
        if job.owner is not None:
            pipe.zrem(P + "jobs:owner:" + job.owner, job.id)
        pipe.execute()
        if idem is not None and self.r.get(idem) == job.id:  # no other job can hold the key while it names this one
            self.r.delete(idem)
