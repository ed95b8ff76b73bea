"""Retention (jobs/retention.py): finished jobs, URL outputs and Comfy API v2 assets deleted once old, and at once (and,
when allowed, early, oldest first) when the disk watcher goes below its watermark.

A real SQLite store, a real output folder and the real routes (jobs API, Comfy API v2). The disk is the watcher's
`free_bytes` seam: a disk of a fixed capacity whose used bytes are the files in the output folder, so deleting frees it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from comfybento.config import Settings
from comfybento.front.compat.comfy_v2.assets import AssetStore
from comfybento.front.jobs.records import ItemRecord, JobRecord
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.ownership import OPEN
from comfybento.front.retention import Retention
from comfybento.front.root import root_app
from comfybento.outputs.diskspace import DiskWatcher, Folder
from comfybento.outputs.storage import LocalStorage

DAY = 24 * 3600
WATERMARK = 100_000


def age(path: Path, seconds: float) -> None:
    """Make every file under `path` (or the file) look written `seconds` ago."""
    t = time.time() - seconds
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.utime(file, (t, t))


class Disk:
    """A disk of `capacity` bytes holding the files under `root` (and nothing else); a clock for the watcher's interval."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root, self.capacity, self.t = root, capacity, 0.0

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def free_bytes(self, path: Path) -> int:
        return self.capacity - self.used()

    def watcher(self) -> DiskWatcher:
        return DiskWatcher([Folder("outputs", self.root, "COMFYBENTO_OUTPUT_DIR")], WATERMARK, 1.0, free_bytes=self.free_bytes,
                           clock=lambda: self.t)


def make_job(store: SQLiteJobStore, storage: LocalStorage, state: str, data: bytes = b"", webhook: str | None = None) -> str:
    """A one-item job left `state` ("queued", "running" or "succeeded"), with `data` stored under it as its output."""
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=0, created_at=time.time(), total=1,
                    request_hash=uuid.uuid4().hex, webhook_url=webhook)
    store.create_job(job, [ItemRecord(job_id=job.id, index=0, params={"prompt": "p"}, seed=1)])
    if data:
        storage.put(f"{job.id}/00000-a1-save_image-0.png", data, "image/png")
    if state != "queued":
        (lease,) = store.lease("w", 1, 600, 3)
        if state == "succeeded":
            assert store.complete("w", lease, {"outputs": []})
    return job.id


@pytest.fixture
def served(tmp_path):
    """The jobs API and Comfy API v2 routes over one store and output folder."""
    store, storage = SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out")
    app = root_app(lambda: storage)
    app.state.jobs = JobService({}, store, storage, AllowList(["127.0.0.1"]), max_items=10, retention_s=DAY)
    with TestClient(app) as client:
        yield store, storage, client, client


def test_expired_url_outputs_and_assets_are_deleted_and_their_urls_answer_404(served, tmp_path):
    store, storage, jobs_client, v2_client = served
    old, new = "outputs/" + uuid.uuid4().hex, "outputs/" + uuid.uuid4().hex
    storage.put(f"{old}/save_image-0.png", b"old", "image/png")
    storage.put(f"{new}/save_image-0.png", b"new", "image/png")
    age(tmp_path / "out" / old, 2 * DAY)
    old_asset = v2_client.post("/api/v2/assets", files={"file": ("a.png", b"old bytes", "image/png")}).json()["id"]
    age(tmp_path / "out" / "comfy-v2", 2 * DAY)
    new_asset = v2_client.post("/api/v2/assets", files={"file": ("b.png", b"new bytes", "image/png")}).json()["id"]
    assert jobs_client.get(f"/{old}/save_image-0.png").status_code == 200  # not yet swept

    swept = Retention(store, storage, job_retention_s=DAY, output_retention_s=DAY).sweep()

    assert (swept.expired["URL output folders"], swept.expired["v2 assets"]) == (1, 1)
    gone = jobs_client.get(f"/{old}/save_image-0.png")
    assert gone.status_code == 404 and gone.json()["error_kind"] == "not_found", gone.text
    assert not (tmp_path / "out" / old).exists()
    assert jobs_client.get(f"/{new}/save_image-0.png").content == b"new"
    expired = v2_client.get(f"/api/v2/assets/{old_asset}")
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "not_found", expired.text
    assert v2_client.get(f"/api/v2/assets/{old_asset}/content").status_code == 404
    assert v2_client.get(f"/api/v2/assets/{new_asset}/content").content == b"new bytes"
    left = sorted(p.relative_to(tmp_path / "out" / "comfy-v2").parts[0] for p in (tmp_path / "out" / "comfy-v2").rglob("*") if p.is_file())
    assert left == ["assets", "blobs", "holds"]  # the new asset's record, bytes and hold only


def test_a_blob_outlives_every_record_over_it_and_each_owner_keeps_its_own_hold(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    assets = AssetStore(storage)
    first, _ = assets.upload(b"shared", "image/png", "a.png", owner="alice")
    age(tmp_path / "out" / "comfy-v2", 2 * DAY)
    assets.from_hash(first.hash, "again.png", owner="alice")  # minted from the hash today: renews alice's hold
    bob, _ = assets.upload(b"shared", "image/png", "b.png", owner="bob")

    assert assets.expire(time.time() - DAY) == (1, 0)  # alice's first record only; the blob is held
    assert assets.mintable(first.hash, "alice") and assets.mintable(first.hash, "bob")
    assert assets.content(assets.get(bob.id, OPEN)) == b"shared"
    age(tmp_path / "out" / "comfy-v2", 2 * DAY)
    assert assets.expire(time.time() - DAY) == (2, len(b"shared"))
    assert not assets.mintable(first.hash, "bob") and not list(storage.entries("comfy-v2"))


def test_going_below_the_watermark_sweeps_at_once_and_frees_the_oldest_finished_work_first(tmp_path, caplog):
    store, storage = SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out")
    shift = 3 * 3600  # the retention's clock runs ahead: the jobs finished now are 3 h old to it
    oldest, newer = "outputs/" + uuid.uuid4().hex, "outputs/" + uuid.uuid4().hex
    storage.put(f"{oldest}/save_image-0.png", b"o" * 30_000, "image/png")
    finished = make_job(store, storage, "succeeded", b"f" * 30_000)  # finished 3 h ago (to the retention)
    storage.put(f"{newer}/save_image-0.png", b"n" * 30_000, "image/png")
    age(tmp_path / "out" / oldest, -shift + 4 * 3600)
    age(tmp_path / "out" / newer, -shift + 3600)
    notified = make_job(store, storage, "succeeded", b"w" * 30_000, webhook="http://127.0.0.1:9/hook")  # webhook not yet sent
    running = make_job(store, storage, "running", b"r" * 30_000)
    queued = make_job(store, storage, "queued")
    for job_id in (notified, running):
        age(tmp_path / "out" / job_id, 10 * DAY)
    disk = Disk(tmp_path / "out", capacity=0)
    disk.capacity = disk.used() + 2 * WATERMARK  # room, until a filler comes
    watcher = disk.watcher()
    retention = Retention(store, storage, job_retention_s=7 * DAY, output_retention_s=7 * DAY, early=True, watcher=watcher,
                          clock=lambda: time.time() + shift)
    watcher.on_low.append(retention.on_low)
    sweeps: list[Any] = []
    sweep = retention.sweep
    retention.sweep = lambda low_disk=False: sweeps.append(sweep(low_disk)) or sweeps[-1]  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="comfybento.front.retention")

    async def main() -> None:
        loop = asyncio.create_task(retention.run_forever())
        try:
            while not sweeps:  # the first sweep, at start: nothing to do
                await asyncio.sleep(0.01)
            assert watcher.low() is None and sum(sweeps[0].expired.values()) == 0
            storage.put("filler", b"x" * (WATERMARK + 45_000), "application/octet-stream")  # 45 kB below the watermark
            disk.t += 1
            assert await asyncio.to_thread(watcher.low) is not None  # a request asks, on another thread
            deadline = time.monotonic() + 10  # the next periodic sweep is a minute away
            while len(sweeps) < 2:
                assert time.monotonic() < deadline, "going below the watermark did not start a sweep"
                await asyncio.sleep(0.01)
        finally:
            loop.cancel()

    asyncio.run(main())
    swept = sweeps[1]
    assert swept.early == {"URL output folders": 1, "finished jobs": 1} and swept.still_low is None
    assert not (tmp_path / "out" / oldest).exists() and store.get_job(finished) is None  # the two oldest ...
    assert (tmp_path / "out" / newer).exists()  # ... were enough
    for job_id in (notified, running, queued):  # a webhook to send, an item running, an item queued: never early
        assert store.get_job(job_id) is not None
    assert (tmp_path / "out" / running).exists() and (tmp_path / "out" / notified).exists()
    assert watcher.low() is None  # sampled again after freeing, the clock unmoved: new work is accepted at once
    line = [r.getMessage() for r in caplog.records if "early" in r.getMessage()]
    assert line == ["retention: deleted past their retention: nothing; early (COMFYBENTO_RETENTION_EARLY): 1 URL output "
                    f"folders, 1 finished jobs (free now: outputs {line[0].rsplit('outputs ', 1)[1]}"], line


def test_without_early_deletion_a_low_disk_deletes_only_what_is_past_its_retention(tmp_path, caplog):
    store, storage = SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out")
    expired, kept = "outputs/" + uuid.uuid4().hex, "outputs/" + uuid.uuid4().hex
    storage.put(f"{expired}/save_image-0.png", b"e" * 1000, "image/png")
    storage.put(f"{kept}/save_image-0.png", b"k" * 1000, "image/png")
    age(tmp_path / "out" / expired, 8 * DAY)
    age(tmp_path / "out" / kept, 6 * DAY)
    finished = make_job(store, storage, "succeeded", b"f" * 1000)
    disk = Disk(tmp_path / "out", capacity=WATERMARK)  # low whatever goes
    swept = Retention(store, storage, job_retention_s=7 * DAY, output_retention_s=7 * DAY, watcher=disk.watcher()).sweep(True)
    assert swept.expired["URL output folders"] == 1 and not swept.early and swept.still_low is not None
    assert not (tmp_path / "out" / expired).exists() and (tmp_path / "out" / kept).exists() and store.get_job(finished)
    assert "still below the watermark" in caplog.text and "set COMFYBENTO_RETENTION_EARLY=on" in caplog.text


def test_the_retention_settings():
    default = Settings.from_env({})
    assert (default.output_retention_s, default.retention_early) == (7 * DAY, False)
    custom = Settings.from_env({"COMFYBENTO_OUTPUT_RETENTION_S": "0", "COMFYBENTO_RETENTION_EARLY": "on"})
    assert (custom.output_retention_s, custom.retention_early) == (0, True)


def test_s3_storage_lists_its_files_and_retention_deletes_there_too(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from comfybento.outputs.storage import S3Storage

    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="retention-test")
        storage = S3Storage("retention-test", None, "pre", 60)
        folder = "outputs/" + uuid.uuid4().hex
        storage.put(f"{folder}/save_image-0.png", b"abc", "image/png")
        AssetStore(storage).upload(b"bytes", "image/png", "a.png", owner=None)
        assert {e.key for e in storage.entries("outputs")} == {f"{folder}/save_image-0.png"}
        assert [e.size for e in storage.entries("outputs")] == [3]
        store = SQLiteJobStore(tmp_path / "j.db")
        week_on = lambda: time.time() + 8 * DAY  # noqa: E731
        swept = Retention(store, storage, job_retention_s=7 * DAY, output_retention_s=7 * DAY, clock=week_on).sweep()
        assert (swept.expired["URL output folders"], swept.expired["v2 assets"]) == (1, 1)
        assert not list(storage.entries("outputs")) and not list(storage.entries("comfy-v2"))
