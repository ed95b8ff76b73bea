"""Retention: what a replica deletes once it is old enough, and what it may delete early when the disk runs low.

What expires, each by its own age:
- a finished job (succeeded, failed, cancelled), COMFYBENTO_JOB_RETENTION_S after it finished: its files
  (`<job>/`, and `comfy-v2/jobs/<job>/` of a Comfy API v2 job) first, then its record with everything that
  refers to it (front/jobs/store.py), so a crash between the two leaves no orphan;
- a live request's outputs stored for their URLs (`outputs/<folder>/`, front/delivery.py), the folder whole,
  COMFYBENTO_OUTPUT_RETENTION_S after its newest file; its URLs then answer 404;
- a Comfy API v2 asset (record, hold, blob), as long after it was written (front/compat/comfy_v2/assets.py `expire`).
Queued and running jobs are never touched, whatever their age.

The sweep runs every RETENTION_EVERY_S, and at once when the disk watcher (outputs/diskspace.py) goes below its
watermark (`on_low` is its hook). If the disk is still low after it and COMFYBENTO_RETENTION_EARLY is on, it
deletes early, oldest first, one at a time until the watermark is cleared: finished jobs whose webhooks were
all sent (or given up), URL output folders and v2 uploads (a blob with the records and holds over it), each
at least EARLY_MIN_AGE_S old, so a request still answering with a URL, or its client fetching it, keeps it.
A queued job is safe from that too: its items carry their own copies of the assets they name.
A sweep that deletes something, or that a low disk started, logs one line naming what it freed; the watcher
then samples again at once, so new work is accepted as soon as there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from comfybento.config import Settings
from comfybento.front.compat.comfy_v2.assets import PREFIX as V2_PREFIX
from comfybento.front.compat.comfy_v2.assets import AssetStore
from comfybento.front.delivery import LIVE_PREFIX, live_folders
from comfybento.front.jobs.runner import JobRunner
from comfybento.front.jobs.store import JobStore
from comfybento.outputs.diskspace import DiskWatcher, Low, size
from comfybento.outputs.storage import Storage

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 60.0
EARLY_MIN_AGE_S = 60.0
EARLY_SETTING = "COMFYBENTO_RETENTION_EARLY"


@dataclass(frozen=True)
class Candidate:
    """Something that may be deleted early: what it is (a label of the log line), when it was last written, how."""

    kind: str
    modified: float
    delete: Callable[[], None]


@dataclass
class Swept:
    """What one sweep deleted, per kind: past its retention, and early."""

    expired: Counter[str] = field(default_factory=Counter)
    early: Counter[str] = field(default_factory=Counter)
    still_low: Low | None = None

    def describe(self) -> str:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{n} {kind}" for kind, n in c.items() if n) or "nothing"

        text = f"deleted past their retention: {counts(self.expired)}"
        if self.early:
            text += f"; early ({EARLY_SETTING}): {counts(self.early)}"
        return text


class Retention:
    def __init__(self, store: JobStore, storage: Storage, job_retention_s: float, output_retention_s: float,
                 early: bool = False, watcher: DiskWatcher | None = None, clock: Callable[[], float] = time.time,
                 min_age_s: float = EARLY_MIN_AGE_S) -> None:
        self.store = store
        self.storage = storage
        self.assets = AssetStore(storage)
        self.job_retention_s = job_retention_s
        self.output_retention_s = output_retention_s  # 0: URL outputs and assets are kept until deleted
        self.early = early
        self.watcher = watcher
        self.clock = clock  # wall-clock seconds, as jobs' times and files' mtimes are
        self.min_age_s = min_age_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # ------------------------------------------------------------ the loop

    def on_low(self, low: Low) -> None:
        """The disk watcher's hook for going below its watermark (called on any thread): sweep now."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    async def run_forever(self) -> None:
        """Sweep every RETENTION_EVERY_S and whenever `on_low` asks, on a thread of its own, until cancelled."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        thread = ThreadPoolExecutor(1, thread_name_prefix="comfybento-retention")
        woken = False
        try:
            while True:
                self._wake.clear()  # before the sweep: a crossing during it wakes the next one at once
                try:
                    await self._loop.run_in_executor(thread, self.sweep, woken)
                except Exception:
                    log.exception("retention failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), RETENTION_EVERY_S)
                woken = self._wake.is_set()
        finally:
            self._loop = self._wake = None
            thread.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ one sweep

    def sweep(self, low_disk: bool = False) -> Swept:
        """Delete what is past its retention, then (COMFYBENTO_RETENTION_EARLY, disk still low) the oldest of what
        may go early until the watermark is cleared. Blocking. `low_disk`: the watcher asked (logged even if nothing went)."""
        t = self.clock()
        swept = Swept()
        for job_id in self.store.expirable(t - self.job_retention_s):
            self._delete_job(job_id)
            swept.expired["finished jobs"] += 1
        if self.output_retention_s > 0:
            before = t - self.output_retention_s
            for folder in live_folders(list(self.storage.entries(LIVE_PREFIX))):
                if folder.modified < before:
                    self.storage.delete_prefix(folder.prefix)
                    swept.expired["URL output folders"] += 1
            swept.expired["v2 assets"], _ = self.assets.expire(before)
        low = self.watcher.recheck() if self.watcher is not None else None
        if low is not None and self.early:
            low = self._free_early(t - self.min_age_s, swept, low)
        swept.still_low = low
        if low_disk or swept.expired.total() or swept.early:
            self._log(swept)
        return swept

    def _delete_job(self, job_id: str) -> None:
        self.storage.delete_prefix(job_id)  # files first: a crash leaves no orphan
        self.storage.delete_prefix(f"{V2_PREFIX}/jobs/{job_id}")  # a Comfy API v2 job's workflow (front/compat/comfy_v2/routes.py)
        self.store.delete_job(job_id)

    def _free_early(self, before: float, swept: Swept, low: Low | None) -> Low | None:
        """Delete the oldest candidates written before `before`, one at a time, until the watermark is cleared."""
        assert self.watcher is not None
        for candidate in self._early_candidates(before):
            candidate.delete()
            swept.early[candidate.kind] += 1
            low = self.watcher.recheck()
            if low is None:
                break
        return low

    def _early_candidates(self, before: float) -> list[Candidate]:
        """Oldest first: finished jobs with no webhook still to send, URL output folders, v2 uploads."""
        found = []
        for job_id in self.store.expirable(before):
            job = self.store.get_job(job_id)
            if job is None or job.finished_at is None or any(d.state == "pending" for d in self.store.deliveries(job_id)):
                continue
            found.append(Candidate("finished jobs", job.finished_at, partial(self._delete_job, job_id)))
        for folder in live_folders(list(self.storage.entries(LIVE_PREFIX))):
            if folder.modified < before:
                found.append(Candidate("URL output folders", folder.modified, partial(self.storage.delete_prefix, folder.prefix)))
        for upload in self.assets.uploads():
            if upload.modified < before:
                found.append(Candidate("v2 uploads", upload.modified, partial(self.assets.drop, upload)))
        return sorted(found, key=lambda c: c.modified)

    def _log(self, swept: Swept) -> None:
        free = ", ".join(f"{role} {size(n)}" for role, n in self.watcher.free.items()) if self.watcher is not None else ""
        if swept.still_low is None:
            log.info("retention: %s%s", swept.describe(), f" (free now: {free})" if free else "")
            return
        more = "" if self.early else f"; set {EARLY_SETTING}=on to delete finished work before its retention"
        log.warning("retention: %s; still below the watermark (%s)%s", swept.describe(), swept.still_low.reason(), more)


def make_retention(settings: Settings, runner: JobRunner, watcher: DiskWatcher | None = None) -> Retention:
    """This replica's retention over the runner's store and storage; with a watcher, it sweeps at once (and may free
    early) whenever the disk goes below its watermark (the watcher's `on_low` hook)."""
    retention = Retention(runner.store, runner.storage, settings.job_retention_s, settings.output_retention_s,
                          early=settings.retention_early, watcher=watcher)
    if watcher is not None:
        watcher.on_low.append(retention.on_low)
    return retention
