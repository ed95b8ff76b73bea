"""The job store contract, and the default store: an embedded SQLite file.

Contract (both stores keep it; tests run against both):
- `create_job` is atomic and idempotent per idempotency key.
- `lease` hands each runnable item to one owner until its lease expires; an
  expired lease (a dead worker) makes the item runnable again. Every lease
  counts an attempt; an item that has used `max_attempts` leases without
  finishing (a poison item that kills or hangs the engine) is failed with
  "gave up after N attempts" instead of being leased again.
- `complete`/`fail` record a result only while the caller still holds the
  lease, so a result is stored exactly once and a finished item never reruns.
  `complete` adds the item's usage (`records.item_usage`: images, GPU-seconds)
  to its job in the same transaction, so a job's usage counts each item once.
- When an item or job reaches a final state and a webhook is configured, the
  delivery is queued in the same transaction, so a crash cannot lose it.
- Retention is two steps, so a crash between them leaves no orphan: the
  runner asks `expirable` for jobs finished before a time, deletes their
  files, then `delete_job` deletes the job with everything that refers to
  it: items, deliveries, its idempotency key and the result-cache entries it made.
- `retry_failed` re-queues the failed items of a job that finished `failed` (same
  parameters and seeds, attempts from zero), in one transaction; succeeded items
  keep their results. Any other job is left as it is, so a second call changes
  nothing. The job's earlier webhook deliveries (its `job` event, the retried items'
  events) keep their logs under new ids (`records.retried_delivery_id`), so the
  retried job's own events are queued again when it finishes.
- `item_counts` counts the items of every job in the store by state (a state with none is absent).
- `add_usage` adds to a key's counters of a UTC day (`records.usage_day`); `usage`
  reads every key's counters of the given days. Usage is never deleted with jobs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from comfybento.errors import ComfyBentoError, storage_full
from comfybento.front.jobs.events import item_event, job_event
from comfybento.front.jobs.records import (
    TERMINAL_STATES,
    Delivery,
    ItemRecord,
    JobRecord,
    Lease,
    UsageRecord,
    gave_up_error,
    item_usage,
    job_state_from_counts,
    now,
    retried_delivery_id,
)


class IdempotencyConflict(ComfyBentoError):
    error_code = 409  # type: ignore[assignment]


def check_idempotent(existing: JobRecord, job: JobRecord) -> None:
    """Raise unless `job` repeats the request that made `existing` (the job its idempotency key names).

    A key is one namespace for every API key; the request hash covers the owner, and a job
    of another owner is not named in the refusal.
    """
    if existing.owner != job.owner:
        raise IdempotencyConflict(f"idempotency_key {job.idempotency_key!r} is in use by another API key's job")
    if existing.request_hash != job.request_hash:
        raise IdempotencyConflict(f"idempotency_key {job.idempotency_key!r} was used for job {existing.id} with a different request")


class JobStore(Protocol):
    def create_job(self, job: JobRecord, items: list[ItemRecord]) -> tuple[JobRecord, bool]: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, limit: int, offset: int, owner: str | None = None) -> list[JobRecord]: ...  # newest first; owner: its jobs only
    def get_items(self, job_id: str, offset: int, limit: int) -> list[ItemRecord]: ...
    def item_counts(self) -> dict[str, int]: ...
    def lease(self, owner: str, limit: int, lease_s: float, max_attempts: int,
              workflows: Collection[str] | None = None) -> list[Lease]:
        """Lease up to `limit` runnable items, by job priority, then age, then index; only items of `workflows` (the
        workflows this replica serves; None: any), so replicas serving different workflows can share one store."""
        ...
    def renew(self, owner: str, keys: list[tuple[str, int]], lease_s: float) -> None: ...
    def complete(self, owner: str, lease: Lease, result: dict[str, Any]) -> bool: ...
    def fail(self, owner: str, lease: Lease, error: dict[str, Any], retry_at: float | None) -> bool: ...
    def cancel(self, job_id: str) -> JobRecord | None: ...
    def cache_get(self, key: str) -> dict[str, Any] | None: ...
    def cache_put(self, key: str, result: dict[str, Any], job_id: str) -> None: ...
    def cache_delete(self, key: str) -> None: ...
    def due_deliveries(self, owner: str, limit: int, claim_s: float) -> list[Delivery]: ...
    def save_delivery(self, delivery: Delivery) -> None: ...
    def deliveries(self, job_id: str) -> list[Delivery]: ...
    def expirable(self, before: float) -> list[str]: ...
    def delete_job(self, job_id: str) -> None: ...
    def retry_failed(self, job_id: str) -> tuple[JobRecord, int] | None: ...
    def add_usage(self, day: str, key: str | None, requests: int, images: int, gpu_seconds: float) -> None: ...
    def usage(self, days: list[str]) -> list[UsageRecord]: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, workflow TEXT NOT NULL, priority INTEGER NOT NULL, created_at REAL NOT NULL,
  total INTEGER NOT NULL, state TEXT NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
  idempotency_key TEXT UNIQUE, request_hash TEXT NOT NULL, webhook_url TEXT, webhook_per_item INTEGER NOT NULL,
  use_cache INTEGER NOT NULL, expires_at REAL, owner TEXT, images INTEGER NOT NULL DEFAULT 0, gpu_seconds REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS items (
  job_id TEXT NOT NULL, idx INTEGER NOT NULL, params TEXT NOT NULL, seed INTEGER, state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_expires REAL, next_attempt_at REAL NOT NULL DEFAULT 0,
  started_at REAL, finished_at REAL, result TEXT, error TEXT, PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS items_runnable ON items (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS deliveries (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL, event TEXT NOT NULL, payload TEXT NOT NULL, url TEXT NOT NULL,
  attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, state TEXT NOT NULL, log TEXT NOT NULL,
  claim_owner TEXT, claim_expires REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS result_cache (key TEXT PRIMARY KEY, result TEXT NOT NULL, created_at REAL NOT NULL, job_id TEXT);
"""

# Items a worker may lease: queued and due, or running under an expired lease (a dead or hung worker).
_RUNNABLE = """jobs.state NOT IN ('cancelled') AND (
    (items.state = 'queued' AND items.next_attempt_at <= ?) OR (items.state = 'running' AND items.lease_expires < ?))"""

_JOB_COLS = ("id, workflow, priority, created_at, total, state, updated_at, finished_at, idempotency_key, "
             "request_hash, webhook_url, webhook_per_item, use_cache, expires_at, owner, images, gpu_seconds")
# Columns added since the first schema: a file made before them gets them when it is opened.
_ADDED_COLUMNS = {
    "result_cache": (("job_id", "TEXT"),),
    "jobs": (("owner", "TEXT"), ("images", "INTEGER NOT NULL DEFAULT 0"), ("gpu_seconds", "REAL NOT NULL DEFAULT 0")),
}


class SQLiteJobStore:
    """Jobs in one SQLite file (WAL); safe across threads and processes sharing the file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._db.execute("CREATE INDEX IF NOT EXISTS result_cache_job ON result_cache (job_id)")
        self._db.executescript(_USAGE_SCHEMA)
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)")

    def _migrate(self) -> None:
        """Add the columns a file made by an older version lacks (in one transaction: processes opening it together agree)."""
        with self._tx() as db:
            for table, columns in _ADDED_COLUMNS.items():
                present = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns:
                    if name not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A full disk (SQLITE_FULL, in a statement or the COMMIT) is a StorageFull, and the
        transaction is rolled back unless SQLite already did: the next one starts clean once space is freed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                full = storage_full(exc) if isinstance(exc, sqlite3.OperationalError) else None
                if full is not None:
                    raise full from exc
                raise

    # ------------------------------------------------------------ jobs

    def create_job(self, job: JobRecord, items: list[ItemRecord]) -> tuple[JobRecord, bool]:
        with self._tx() as db:
            if job.idempotency_key:
                row = db.execute("SELECT id, request_hash FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)).fetchone()
                if row is not None:
                    existing = self._job(db, row["id"])
                    assert existing is not None
                    check_idempotent(existing, job)
                    return existing, False
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLS}) VALUES ({','.join('?' * 17)})",
                (job.id, job.workflow, job.priority, job.created_at, job.total, "queued", job.created_at, None,
                 job.idempotency_key, job.request_hash, job.webhook_url, int(job.webhook_per_item), int(job.use_cache), job.expires_at,
                 job.owner, 0, 0.0),
            )
            db.executemany(
                "INSERT INTO items (job_id, idx, params, seed, state) VALUES (?,?,?,?, 'queued')",
                [(job.id, it.index, json.dumps(it.params), _seed_in(it.seed)) for it in items],
            )
            created = self._job(db, job.id)
        assert created is not None
        return created, True

    def _job(self, db: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        counts = {r["state"]: r["n"] for r in db.execute("SELECT state, COUNT(*) AS n FROM items WHERE job_id = ? GROUP BY state", (job_id,))}
        return _job_from_row(row, counts)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._job(self._db, job_id)

    def list_jobs(self, limit: int, offset: int, owner: str | None = None) -> list[JobRecord]:
        where, args = ("WHERE owner = ? ", (owner,)) if owner is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM jobs {where}ORDER BY created_at DESC LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
            return [j for r in rows if (j := self._job(self._db, r["id"])) is not None]

    def get_items(self, job_id: str, offset: int, limit: int) -> list[ItemRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM items WHERE job_id = ? ORDER BY idx LIMIT ? OFFSET ?", (job_id, limit, offset))
            return [_item_from_row(r) for r in rows]

    def item_counts(self) -> dict[str, int]:
        with self._lock:
            return {r["state"]: r["n"] for r in self._db.execute("SELECT state, COUNT(*) AS n FROM items GROUP BY state")}

    # ------------------------------------------------------------ leases

    def lease(self, owner: str, limit: int, lease_s: float, max_attempts: int,
              workflows: Collection[str] | None = None) -> list[Lease]:
        t = now()
        served, args = "", ()  # type: tuple[str, tuple[str, ...]]
        if workflows is not None:
            if not workflows:
                return []
            served, args = f" AND jobs.workflow IN ({','.join('?' * len(workflows))})", tuple(workflows)
        with self._tx() as db:
            self._give_up(db, t, max_attempts)
            rows = db.execute(
                f"""SELECT items.job_id, items.idx, items.params, items.seed, items.attempts, jobs.workflow,
                          jobs.use_cache, jobs.webhook_per_item, jobs.owner
                   FROM items JOIN jobs ON jobs.id = items.job_id
                   WHERE {_RUNNABLE}{served} ORDER BY jobs.priority DESC, jobs.created_at, items.idx LIMIT ?""",
                (t, t, *args, limit),
            ).fetchall()
            leases = []
            for r in rows:
                db.execute(
                    "UPDATE items SET state='running', lease_owner=?, lease_expires=?, attempts=attempts+1, "
                    "started_at=COALESCE(started_at, ?) WHERE job_id=? AND idx=?",
                    (owner, t + lease_s, t, r["job_id"], r["idx"]),
                )
                db.execute("UPDATE jobs SET state='running', updated_at=? WHERE id=? AND state='queued'", (t, r["job_id"]))
                leases.append(Lease(job_id=r["job_id"], workflow=r["workflow"], index=r["idx"], params=json.loads(r["params"]),
                                    seed=_seed_out(r["seed"]), attempt=r["attempts"] + 1, use_cache=bool(r["use_cache"]),
                                    webhook_per_item=bool(r["webhook_per_item"]), job_owner=r["owner"]))
        return leases

    def _give_up(self, db: sqlite3.Connection, t: float, max_attempts: int) -> None:
        """Fail the runnable items that have had every attempt (each lease was one) without finishing."""
        rows = db.execute(f"SELECT items.job_id, items.idx, items.attempts FROM items JOIN jobs ON jobs.id = items.job_id "
                          f"WHERE {_RUNNABLE} AND items.attempts >= ?", (t, t, max_attempts)).fetchall()
        for r in rows:
            db.execute("UPDATE items SET state='failed', error=?, finished_at=?, lease_owner=NULL, lease_expires=NULL "
                       "WHERE job_id=? AND idx=?", (json.dumps(gave_up_error(r["attempts"])), t, r["job_id"], r["idx"]))
            self._after_item(db, r["job_id"], r["idx"], t)

    def renew(self, owner: str, keys: list[tuple[str, int]], lease_s: float) -> None:
        with self._tx() as db:
            db.executemany("UPDATE items SET lease_expires=? WHERE job_id=? AND idx=? AND lease_owner=? AND state='running'",
                           [(now() + lease_s, job, idx, owner) for job, idx in keys])

    def complete(self, owner: str, lease: Lease, result: dict[str, Any]) -> bool:
        return self._finish(owner, lease, "succeeded", json.dumps(result), None, None, item_usage(result))

    def fail(self, owner: str, lease: Lease, error: dict[str, Any], retry_at: float | None) -> bool:
        return self._finish(owner, lease, "failed", None, json.dumps(error), retry_at)

    def _finish(self, owner: str, lease: Lease, state: str, result: str | None, error: str | None, retry_at: float | None,
                usage: tuple[int, float] = (0, 0.0)) -> bool:
        t = now()
        with self._tx() as db:
            if retry_at is not None:
                cur = db.execute(
                    "UPDATE items SET state='queued', lease_owner=NULL, lease_expires=NULL, next_attempt_at=?, error=? "
                    "WHERE job_id=? AND idx=? AND state='running' AND lease_owner=?",
                    (retry_at, error, lease.job_id, lease.index, owner))
                return cur.rowcount == 1
            cur = db.execute(
                "UPDATE items SET state=?, result=?, error=?, finished_at=?, lease_owner=NULL, lease_expires=NULL "
                "WHERE job_id=? AND idx=? AND state='running' AND lease_owner=?",
                (state, result, error, t, lease.job_id, lease.index, owner))
            if cur.rowcount != 1:
                return False  # the lease was lost (expired and taken over, or the job was cancelled)
            if usage != (0, 0.0):
                db.execute("UPDATE jobs SET images=images+?, gpu_seconds=gpu_seconds+? WHERE id=?", (usage[0], usage[1], lease.job_id))
            self._after_item(db, lease.job_id, lease.index, t)
        return True

    def _after_item(self, db: sqlite3.Connection, job_id: str, index: int, t: float) -> None:
        job = self._job(db, job_id)
        assert job is not None
        if job.webhook_url and job.webhook_per_item:
            item = _item_from_row(db.execute("SELECT * FROM items WHERE job_id=? AND idx=?", (job_id, index)).fetchone())
            self._add_delivery(db, f"{job_id}:item:{index}", job, item_event(job, item))
        state = job_state_from_counts(job.counts, job.total, cancelled=False)
        if state in TERMINAL_STATES and job.state not in TERMINAL_STATES:
            db.execute("UPDATE jobs SET state=?, finished_at=?, updated_at=? WHERE id=?", (state, t, t, job_id))
            job.state = state
            if job.webhook_url:
                self._add_delivery(db, f"{job_id}:job", job, job_event(job))
        else:
            db.execute("UPDATE jobs SET updated_at=? WHERE id=?", (t, job_id))

    def cancel(self, job_id: str) -> JobRecord | None:
        t = now()
        with self._tx() as db:
            job = self._job(db, job_id)
            if job is None:
                return None
            if job.state not in TERMINAL_STATES:
                db.execute("UPDATE items SET state='cancelled', lease_owner=NULL, finished_at=? "
                           "WHERE job_id=? AND state IN ('queued', 'running')", (t, job_id))
                db.execute("UPDATE jobs SET state='cancelled', finished_at=?, updated_at=? WHERE id=?", (t, t, job_id))
                job = self._job(db, job_id)
                assert job is not None
                if job.webhook_url:
                    self._add_delivery(db, f"{job_id}:job", job, job_event(job))
            return job

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM result_cache WHERE key=?", (key,)).fetchone()
        return json.loads(row["result"]) if row else None

    def cache_put(self, key: str, result: dict[str, Any], job_id: str) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone() is None:
                return  # the job expired meanwhile: its files are gone
            db.execute("INSERT OR REPLACE INTO result_cache (key, result, created_at, job_id) VALUES (?,?,?,?)",
                       (key, json.dumps(result), now(), job_id))

    def cache_delete(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM result_cache WHERE key=?", (key,))

    # ------------------------------------------------------------ webhooks

    def _add_delivery(self, db: sqlite3.Connection, delivery_id: str, job: JobRecord, payload: dict[str, Any]) -> None:
        db.execute(
            "INSERT OR IGNORE INTO deliveries (id, job_id, event, payload, url, attempts, next_attempt_at, state, log) "
            "VALUES (?,?,?,?,?,0,0,'pending','[]')",
            (delivery_id, job.id, payload["type"], json.dumps(payload), job.webhook_url))

    def due_deliveries(self, owner: str, limit: int, claim_s: float) -> list[Delivery]:
        t = now()
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE state='pending' AND next_attempt_at<=? AND (claim_expires IS NULL OR claim_expires<?) "
                "ORDER BY next_attempt_at LIMIT ?", (t, t, limit)).fetchall()
            for r in rows:
                db.execute("UPDATE deliveries SET claim_owner=?, claim_expires=? WHERE id=?", (owner, t + claim_s, r["id"]))
            return [_delivery_from_row(r) for r in rows]

    def save_delivery(self, delivery: Delivery) -> None:
        with self._tx() as db:
            db.execute("UPDATE deliveries SET attempts=?, next_attempt_at=?, state=?, log=?, claim_owner=NULL, claim_expires=NULL WHERE id=?",
                       (delivery.attempts, delivery.next_attempt_at, delivery.state, json.dumps(delivery.log), delivery.id))

    def deliveries(self, job_id: str) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM deliveries WHERE job_id=? ORDER BY rowid", (job_id,)).fetchall()
        return [_delivery_from_row(r) for r in rows]

    # ------------------------------------------------------------ retention

    def expirable(self, before: float) -> list[str]:
        with self._lock:
            states = sorted(TERMINAL_STATES)
            return [r["id"] for r in self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(states))}) AND finished_at < ?", (*states, before))]

    def delete_job(self, job_id: str) -> None:
        with self._tx() as db:
            for table, col in (("items", "job_id"), ("deliveries", "job_id"), ("result_cache", "job_id"), ("jobs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {col}=?", (job_id,))

    # ------------------------------------------------------------ retry

    def retry_failed(self, job_id: str) -> tuple[JobRecord, int] | None:
        """(the job, how many items were re-queued), or None for no such job."""
        t = now()
        with self._tx() as db:
            job = self._job(db, job_id)
            if job is None:
                return None
            if job.state != "failed":
                return job, 0
            failed = [r["idx"] for r in db.execute("SELECT idx FROM items WHERE job_id=? AND state='failed'", (job_id,))]
            earlier = [f"{job_id}:job", *(f"{job_id}:item:{i}" for i in failed)]
            db.executemany("UPDATE deliveries SET id=? WHERE id=?", [(retried_delivery_id(d, t), d) for d in earlier])
            db.execute("UPDATE items SET state='queued', attempts=0, lease_owner=NULL, lease_expires=NULL, next_attempt_at=0, "
                       "started_at=NULL, finished_at=NULL, result=NULL, error=NULL WHERE job_id=? AND state='failed'", (job_id,))
            job = self._job(db, job_id)
            assert job is not None
            state = job_state_from_counts(job.counts, job.total, cancelled=False)
            db.execute("UPDATE jobs SET state=?, finished_at=NULL, updated_at=? WHERE id=?", (state, t, job_id))
            job = self._job(db, job_id)
        assert job is not None
        return job, len(failed)

    # ------------------------------------------------------------ usage

    def add_usage(self, day: str, key: str | None, requests: int, images: int, gpu_seconds: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO usage (day, key, requests, images, gpu_seconds) VALUES (?,?,?,?,?) ON CONFLICT (day, key) DO "
                       "UPDATE SET requests=requests+excluded.requests, images=images+excluded.images, "
                       "gpu_seconds=gpu_seconds+excluded.gpu_seconds", (day, key or "", requests, images, gpu_seconds))

    def usage(self, days: list[str]) -> list[UsageRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM usage WHERE day IN ({','.join('?' * len(days))}) ORDER BY day, key", days).fetchall()
        return [UsageRecord(day=r["day"], key=r["key"] or None, requests=r["requests"], images=r["images"],
                            gpu_seconds=r["gpu_seconds"]) for r in rows]


# Per API key ('' without keys) and UTC day: what `add_usage` counted.
_USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
  day TEXT NOT NULL, key TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0, images INTEGER NOT NULL DEFAULT 0,
  gpu_seconds REAL NOT NULL DEFAULT 0, PRIMARY KEY (day, key)
);
"""


def _job_from_row(row: sqlite3.Row, counts: dict[str, int]) -> JobRecord:
    return JobRecord(
        id=row["id"], workflow=row["workflow"], priority=row["priority"], created_at=row["created_at"], total=row["total"],
        state=row["state"], updated_at=row["updated_at"], finished_at=row["finished_at"], idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"], webhook_url=row["webhook_url"], webhook_per_item=bool(row["webhook_per_item"]),
        use_cache=bool(row["use_cache"]), expires_at=row["expires_at"], counts=counts, owner=row["owner"], images=row["images"],
        gpu_seconds=row["gpu_seconds"],
    )


# Seeds are unsigned 64-bit (ComfyUI's range), SQLite's INTEGER signed: the upper half is stored as its negative twin.
_U64 = 1 << 64


def _seed_in(seed: int | None) -> int | None:
    return seed - _U64 if seed is not None and seed >= _U64 >> 1 else seed


def _seed_out(value: int | None) -> int | None:
    return value + _U64 if value is not None and value < 0 else value


def _item_from_row(row: sqlite3.Row) -> ItemRecord:
    return ItemRecord(
        job_id=row["job_id"], index=row["idx"], params=json.loads(row["params"]), seed=_seed_out(row["seed"]), state=row["state"],
        attempts=row["attempts"], lease_owner=row["lease_owner"], lease_expires=row["lease_expires"],
        next_attempt_at=row["next_attempt_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        result=json.loads(row["result"]) if row["result"] else None, error=json.loads(row["error"]) if row["error"] else None,
    )


def _delivery_from_row(row: sqlite3.Row) -> Delivery:
    return Delivery(id=row["id"], job_id=row["job_id"], event=row["event"], payload=json.loads(row["payload"]), url=row["url"],
                    attempts=row["attempts"], next_attempt_at=row["next_attempt_at"], state=row["state"], log=json.loads(row["log"]))
