"""`GET /usage`: requests, images and GPU-seconds per API key and UTC day, from the job store.

Every charge (front/access.py: live requests as they finish, job items as they succeed)
is added to the store's counters of its key and day (`JobStore.add_usage`), so usage
survives restarts and every replica sharing the store counts into the same numbers.

Who sees what: a key its own usage; an operator key (`operator: true` in the keys file)
every key's; with API keys off, the totals of the service (one user).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from comfybento.front.jobs.api_models import DayUsage, KeyUsage, UsageCounts, UsageReport
from comfybento.front.jobs.records import UsageRecord, now, usage_day
from comfybento.front.jobs.store import JobStore

MAX_DAYS = 366
Sink = Callable[["str | None", int, float], None]


def usage_sink(store: JobStore, clock: Callable[[], float] = now) -> Sink:
    """What access.py hands each charge to: one more request and its images and GPU-seconds, on today's counters."""

    def add(key: str | None, images: int, gpu_seconds: float) -> None:
        store.add_usage(usage_day(clock()), key, 1, images, gpu_seconds)

    return add


def recent_days(days: int, today: float) -> list[str]:
    """The last `days` UTC days up to `today`, oldest first."""
    last = datetime.fromtimestamp(today, UTC).date()
    return [(last - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def report(store: JobStore, days: int, viewer: str | None, keys_on: bool, operator: bool, today: float | None = None) -> UsageReport:
    """The usage a caller may see: `viewer`'s own (keys on), every key's (an operator), or the totals (keys off)."""
    span = recent_days(days, now() if today is None else today)
    records = store.usage(span)
    groups: dict[str | None, list[UsageRecord]]
    if not keys_on:
        scope, groups = "total", {None: records}
    elif operator:
        scope, groups = "all", _by_key(records)
    else:
        scope, groups = "own", {viewer: [r for r in records if r.key == viewer]}
    return UsageReport(since=span[0], until=span[-1], scope=scope, keys=[_key_usage(k, rs) for k, rs in groups.items()])


def _by_key(records: list[UsageRecord]) -> dict[str | None, list[UsageRecord]]:
    groups: dict[str | None, list[UsageRecord]] = {}
    for record in records:
        groups.setdefault(record.key, []).append(record)
    return dict(sorted(groups.items(), key=lambda kv: kv[0] or ""))


def _key_usage(key: str | None, records: list[UsageRecord]) -> KeyUsage:
    per_day: dict[str, DayUsage] = {}
    for r in records:  # keys off: every key's counters of a day add up
        day = per_day.setdefault(r.day, DayUsage(day=r.day, requests=0, images=0, gpu_seconds=0.0))
        day.requests, day.images, day.gpu_seconds = day.requests + r.requests, day.images + r.images, day.gpu_seconds + r.gpu_seconds
    days = [per_day[d] for d in sorted(per_day)]
    total = UsageCounts(requests=sum(d.requests for d in days), images=sum(d.images for d in days),
                        gpu_seconds=sum(d.gpu_seconds for d in days))
    return KeyUsage(key=key, total=total, days=days)
