"""A job store in Redis, so several `bentoml serve` replicas share one queue.

Keys (prefix `cb:`), each deleted with its job by `delete_job`:
- `job:<id>` (fields, per-state counters `n:<state>`, usage counters `images` and
  `gpu_seconds`; a job written before a field existed reads its default), `item:<id>:<index>`
  (fields, its queue score);
- `idem:<key>` -> job id, set in the same MULTI/EXEC as the job, so a create is all or nothing;
- `deliveries:<id>` (the job's delivery ids) and `delivery:<delivery id>` (its attempt log);
- `cache:<key>` (a result and the job whose files it names) and `jobcache:<id>` (the cache keys the job made).
Usage, never deleted with jobs: a hash `usage:<day>` per UTC day, fields `<key>:requests`, `<key>:images`
and `<key>:gpu_seconds` (`<key>` empty for requests without API keys).
Shared sorted sets hold members `<id>|<index>`: `ready:<workflow>` (one per workflow, by
priority, age, index; empty ones vanish, as Redis drops an empty set),
`delayed` (retries), `leases` (by expiry), `deliveries:due`, and `jobs` (by
creation); `delete_job` removes the job's members, so nothing outlives it.
A replica leases only from the ready queues of the workflows it serves, in
score order across them, so replicas that serve different workflows share one
store (a rolling deploy, a GPU pool per workflow). A store written before the
queues were per workflow has a single `ready` set; leasing moves its members
into their workflow's queue.

Leasing and finishing are Lua scripts, so each is atomic across replicas. Lua
never decodes JSON (seeds are 64-bit integers): parameters and results are
stored as opaque strings.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import redis

from comfybento.front.jobs.events import item_event, job_event
from comfybento.front.jobs.records import (
    ITEM_STATES,
    TERMINAL_STATES,
    Delivery,
    ItemRecord,
    JobRecord,
    Lease,
    UsageRecord,
    item_usage,
    now,
    retried_delivery_id,
)
from comfybento.front.jobs.store import check_idempotent

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

# KEYS: ready (the old single queue), leases, delayed, deliveries:due, then the ready queue of each workflow served.
# ARGV: now, owner, limit, lease_s, max_attempts.
_LEASE = _FINISH_ITEM + """
local now, owner, limit, lease_s, max_attempts = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function requeue(m, score)
  local job, idx = split(m)
  local workflow = redis.call('HGET', 'cb:job:' .. job, 'workflow')
  score = score or redis.call('HGET', 'cb:item:' .. job .. ':' .. idx, 'score')
  if workflow and score then redis.call('ZADD', 'cb:ready:' .. workflow, score, m) end
end
-- expired leases and due retries go back to their workflow's queue, whichever replica serves it
for _, zset in ipairs({KEYS[2], KEYS[3]}) do
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now)) do
    redis.call('ZREM', zset, m)
    requeue(m, nil)
  end
end
local legacy = redis.call('ZRANGE', KEYS[1], 0, 999, 'WITHSCORES')
for i = 1, #legacy, 2 do
  redis.call('ZREM', KEYS[1], legacy[i])
  requeue(legacy[i], legacy[i + 1])
end
local out = {}
while #out < limit do
  local best, best_score = nil, nil
  for i = 5, #KEYS do
    local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if #head > 0 and (best_score == nil or tonumber(head[2]) < best_score) then best, best_score = KEYS[i], tonumber(head[2]) end
  end
  if best == nil then break end
  local m = redis.call('ZPOPMIN', best, 1)[1]
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

# KEYS: the ready queue of the job's workflow. ARGV: job id. Re-queue the failed items of a job whose state is
# 'failed': the count, -1 for any other job.
_RETRY = """
local job = ARGV[1]
local jkey = 'cb:job:' .. job
if redis.call('HGET', jkey, 'state') ~= 'failed' then return -1 end
local n = 0
for i = 0, tonumber(redis.call('HGET', jkey, 'total')) - 1 do
  local idx = string.format('%06d', i)
  local ikey = 'cb:item:' .. job .. ':' .. idx
  if redis.call('HGET', ikey, 'state') == 'failed' then
    redis.call('HSET', ikey, 'state', 'queued', 'attempts', 0, 'owner', '')
    redis.call('HDEL', ikey, 'error', 'result', 'started_at', 'finished_at', 'lease_expires')
    redis.call('ZADD', KEYS[1], redis.call('HGET', ikey, 'score'), job .. '|' .. idx)
    n = n + 1
  end
end
redis.call('HINCRBY', jkey, 'n:failed', -n)
redis.call('HINCRBY', jkey, 'n:queued', n)
local state = 'queued'
if tonumber(redis.call('HGET', jkey, 'n:succeeded') or '0') > 0 then state = 'running' end
redis.call('HSET', jkey, 'state', state)
redis.call('HDEL', jkey, 'finished_at')
return n
"""
USAGE_FIELDS = ("requests", "images", "gpu_seconds")

_QUEUES = [P + "ready", P + "leases", P + "delayed", P + "deliveries:due"]


def _ready(workflow: str) -> str:
    """The ready queue of one workflow's items."""
    return P + "ready:" + workflow


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
        self._retry = self.r.register_script(_RETRY)

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
        pipe.zadd(_ready(job.workflow), {_member(job.id, item.index): score for item in items})
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

    def item_counts(self) -> dict[str, int]:
        """The jobs' own per-state counters (`n:<state>`) summed: one round trip for every job."""
        fields = [f"n:{state}" for state in ITEM_STATES]
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in self.r.zrange(P + "jobs", 0, -1):
                pipe.hmget(P + "job:" + job_id, fields)
            rows = pipe.execute()
        totals = {state: sum(int(row[i] or 0) for row in rows) for i, state in enumerate(ITEM_STATES)}
        return {state: n for state, n in totals.items() if n > 0}

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

    def lease(self, owner: str, limit: int, lease_s: float, max_attempts: int,
              workflows: Collection[str] | None = None) -> list[Lease]:
        queues = sorted(map(_ready, workflows if workflows is not None else self._every_workflow()))
        members = self._lease(keys=[*_QUEUES, *queues], args=[now(), owner, limit, lease_s, max_attempts])
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

    def _every_workflow(self) -> set[str]:
        """Workflows with a ready queue, or with an item that leasing is about to put back in one (`lease(workflows=None)`)."""
        names = {q.removeprefix(_ready("")) for q in self.r.scan_iter(_ready("*"))}
        due = [m for q in (P + "leases", P + "delayed") for m in self.r.zrangebyscore(q, "-inf", now())]
        return names | {w for m in due if (w := self.r.hget(P + "job:" + m.split("|")[0], "workflow"))}

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
        if job.state not in TERMINAL_STATES:
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
                pipe.zrem(_ready(job.workflow), _member(job.id, idx))
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
            if job is not None and job.state in TERMINAL_STATES and job.finished_at is not None and job.finished_at < before:
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
        for queue in (_ready(job.workflow), P + "ready", P + "leases", P + "delayed"):
            pipe.zrem(queue, *members)
        pipe.zrem(P + "deliveries:due", f"{job.id}:job", *(f"{job.id}:item:{i:06d}" for i in range(job.total)), *delivery_ids)
        pipe.zrem(P + "jobs", job.id)
        if job.owner is not None:
            pipe.zrem(P + "jobs:owner:" + job.owner, job.id)
        pipe.execute()
        if idem is not None and self.r.get(idem) == job.id:  # no other job can hold the key while it names this one
            self.r.delete(idem)

    # ------------------------------------------------------------ retry

    def retry_failed(self, job_id: str) -> tuple[JobRecord, int] | None:
        """(the job, how many items were re-queued), or None for no such job; the re-queue is one Lua script."""
        job = self.get_job(job_id)
        if job is None:
            return None
        if job.state != "failed":
            return job, 0
        pipe = self.r.pipeline(transaction=False)
        for idx in range(job.total):
            pipe.hget(P + f"item:{job_id}:{idx:06d}", "state")
        failed = [idx for idx, state in enumerate(pipe.execute()) if state == "failed"]
        if job.webhook_url:
            self._keep_deliveries(job, [f"{job_id}:job", *(f"{job_id}:item:{i:06d}" for i in failed)])
        count = int(self._retry(keys=[_ready(job.workflow)], args=[job_id]))
        after = self.get_job(job_id)
        return (after, max(0, count)) if after is not None else None

    def _keep_deliveries(self, job: JobRecord, ids: list[str]) -> None:
        """Move the job's earlier deliveries (sent or pending) to new ids, each saved with its payload and log."""
        t = now()
        listed = set(self.r.lrange(P + "deliveries:" + job.id, 0, -1))
        for old in ids:
            score = self.r.zscore(P + "deliveries:due", old)
            if score is None and old not in listed:
                continue  # never queued: nothing to keep
            delivery = self._delivery(old)
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(P + "deliveries:due", old)
            pipe.lrem(P + "deliveries:" + job.id, 0, old)
            pipe.delete(P + "delivery:" + old)
            if delivery is not None:
                delivery.id = retried_delivery_id(old, t)
                pipe.set(P + "delivery:" + delivery.id, json.dumps(delivery.__dict__))
                pipe.rpush(P + "deliveries:" + job.id, delivery.id)
                if score is not None and delivery.state == "pending":
                    pipe.zadd(P + "deliveries:due", {delivery.id: score})
            pipe.execute()

    # ------------------------------------------------------------ usage

    def add_usage(self, day: str, key: str | None, requests: int, images: int, gpu_seconds: float) -> None:
        name = P + "usage:" + day
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(name, f"{key or ''}:requests", requests)
        pipe.hincrby(name, f"{key or ''}:images", images)
        pipe.hincrbyfloat(name, f"{key or ''}:gpu_seconds", gpu_seconds)
        pipe.execute()

    def usage(self, days: list[str]) -> list[UsageRecord]:
        pipe = self.r.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(P + "usage:" + day)
        out = []
        for day, fields in sorted(zip(days, pipe.execute(), strict=True)):
            by_key: dict[str, UsageRecord] = {}
            for name, value in fields.items():
                key, _, counter = name.rpartition(":")
                if counter in USAGE_FIELDS:
                    record = by_key.setdefault(key, UsageRecord(day=day, key=key or None))
                    setattr(record, counter, float(value) if counter == "gpu_seconds" else int(value))
            out += [by_key[k] for k in sorted(by_key)]
        return out
