"""A full disk is an answer: the free-space watcher (outputs/diskspace.py), the one error mapping of a failed write
(errors.storage_full, in every API's shape), a stream whose output cannot be stored, and jobs that wait for room.

The free space is a seam (`free_bytes`) in the watcher's tests; a full SQLite file is real (PRAGMA max_page_count);
a full output folder is an ENOSPC raised where the OS would raise it (the write).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from comfybento.config import Settings
from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.errors import InvalidRequest, StorageFull, describe, storage_full
from comfybento.front.compat.comfy_v2.errors import error_envelope
from comfybento.front.http import error_response
from comfybento.front.jobs.records import ItemRecord, JobRecord, now
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.renderers import render
from comfybento.front.stream import OutputEvent, parse_sse, request_events
from comfybento.limits import Limits
from comfybento.outputs import diskspace
from comfybento.outputs.diskspace import DiskWatcher, Folder
from comfybento.outputs.storage import LocalStorage
from comfybento.runtime.errors import from_execution
from tests.unit.test_job_runner import Engine, finished, run_until, runner, submit

MiB = 1024 * 1024
FOLDERS = (Folder("work", Path("/w"), "COMFYBENTO_WORK_DIR"), Folder("outputs", Path("/o"), "COMFYBENTO_OUTPUT_DIR"))


class Disk:
    """The free bytes per folder and a clock, set by the test; counts the samples."""

    def __init__(self, **free: int) -> None:
        self.free = {Path(f"/{role[0]}"): n for role, n in free.items()}
        self.t = 0.0
        self.samples = 0

    def free_bytes(self, path: Path) -> int:
        self.samples += 1
        return self.free[path]

    def watcher(self, watermark: int = 10 * MiB, interval_s: float = 1.0, **options: Any) -> DiskWatcher:
        return DiskWatcher(FOLDERS, watermark, interval_s, free_bytes=self.free_bytes, clock=lambda: self.t, **options)


# ---------------------------------------------------------------- the watcher


def test_below_the_watermark_names_the_folder_and_its_free_space():
    disk = Disk(work=50 * MiB, outputs=3 * MiB)
    low = disk.watcher().low()
    assert low is not None and low.folder.role == "outputs" and low.free_bytes == 3 * MiB
    with pytest.raises(StorageFull) as refused:
        disk.watcher().require_room()
    assert str(refused.value).startswith("the outputs folder (COMFYBENTO_OUTPUT_DIR) has 3.0 MiB free, below the watermark "
                                         "of 10.0 MiB (COMFYBENTO_MIN_FREE_BYTES)")
    assert refused.value.details() == {"folder": "outputs", "free_bytes": 3 * MiB, "watermark_bytes": 10 * MiB}
    assert Disk(work=50 * MiB, outputs=10 * MiB).watcher().has_room()


def test_free_space_is_sampled_at_most_every_interval_and_recovers_without_a_restart():
    disk = Disk(work=50 * MiB, outputs=3 * MiB)
    watcher = disk.watcher(interval_s=1.0)
    for _ in range(100):
        assert not watcher.has_room()
    assert disk.samples == 2  # one sample of each folder for 100 questions
    disk.free[Path("/o")] = 40 * MiB
    disk.t = 0.5
    assert not watcher.has_room()  # not sampled again yet
    disk.t = 1.0
    assert watcher.has_room() and disk.samples == 4


def test_crossing_the_watermark_logs_one_line_each_way_exports_the_gauge_and_calls_the_hooks(caplog):
    exported: list[tuple[str, int]] = []
    disk = Disk(work=50 * MiB, outputs=30 * MiB)
    watcher = disk.watcher(export=lambda role, free: exported.append((role, free)))
    went_low: list[str] = []
    watcher.on_low.append(lambda low: went_low.append(low.folder.role))
    caplog.set_level(logging.INFO, logger="comfybento.outputs.diskspace")
    for free in (30, 5, 4, 3, 20, 21, 2):
        disk.free[Path("/o")] = free * MiB
        disk.t += 1
        watcher.low()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("disk space: below the watermark of 10.0 MiB (free: work (/w) 50.0 MiB, outputs (/o) 5.0 MiB): "
                               "new work that writes to disk is refused")
    assert lines[1].startswith("disk space: above the watermark of 10.0 MiB again (free: work (/w) 50.0 MiB, outputs (/o) 20.0 MiB)")
    assert lines[2].startswith("disk space: below the watermark of 10.0 MiB (free: work (/w) 50.0 MiB, outputs (/o) 2.0 MiB)")
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]
    assert went_low == ["outputs", "outputs"]
    assert exported[-2:] == [("work", 50 * MiB), ("outputs", 2 * MiB)] and len(exported) == 14


def test_a_watermark_of_zero_checks_nothing_and_a_failing_hook_is_only_logged(caplog):
    disk = Disk(work=0, outputs=0)
    assert disk.watcher(watermark=0).has_room() and disk.samples == 0
    watcher = disk.watcher()
    watcher.on_low.append(lambda low: 1 / 0)  # type: ignore[func-returns-value]
    assert not watcher.has_room()
    assert "a hook for going below the watermark failed" in caplog.text


def test_the_default_watermark_is_room_for_two_of_the_largest_writes_a_workflow_can_make(tmp_path):
    settings = Settings.from_env({"COMFYBENTO_WORK_DIR": str(tmp_path)})
    assert diskspace.watermark_for(settings, [Limits()]) == 128 * MiB  # 16 Mpx x 4 bytes, twice
    big = Limits(max_request_pixels=64 * 1024 * 1024)
    assert diskspace.watermark_for(settings, [Limits(), big]) == 512 * MiB
    assert diskspace.watermark_for(settings, [Limits(max_request_pixels=1024, max_upload_bytes=1024)]) == 64 * MiB  # the floor
    assert diskspace.watermark_for(Settings.from_env({"COMFYBENTO_MIN_FREE_BYTES": "0"}), [big]) == 0
    explicit = Settings.from_env({"COMFYBENTO_MIN_FREE_BYTES": str(5 * MiB), "COMFYBENTO_DISK_CHECK_MS": "250"})
    watcher = diskspace.watcher_for(explicit, [big])
    assert (watcher.watermark_bytes, watcher.interval_s) == (5 * MiB, 0.25)
    assert [f.role for f in watcher.folders] == ["work", "outputs", "jobs"]
    remote = Settings.from_env({"COMFYBENTO_STORAGE": "s3", "COMFYBENTO_S3_BUCKET": "b", "COMFYBENTO_JOBS_BACKEND": "redis",
                                "COMFYBENTO_REDIS_URL": "redis://x"})
    assert [f.role for f in diskspace.watched_folders(remote)] == ["work"]
    assert diskspace.free_bytes_of(tmp_path / "not" / "made" / "yet") > 0  # its nearest existing parent's


# ---------------------------------------------------------------- the one error mapping


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    OSError(errno.EROFS, "Read-only file system"),
    sqlite3.OperationalError("database or disk is full"),
    redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
    redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"),
    RuntimeError("wrapped"),
])
def test_a_write_that_found_no_room_is_a_retryable_storage_full_never_a_500(exc):
    if isinstance(exc, RuntimeError):
        exc.__cause__ = OSError(errno.ENOSPC, "No space left on device: '/srv/secret/path'")
    fields = describe(exc)
    assert (fields["status"], fields["error_kind"]) == (507, "storage_full")
    assert "retry later" in fields["error"] and "/srv" not in fields["error"]
    answer = error_response(exc)
    assert answer.status_code == 507 and answer.headers["Retry-After"] == str(StorageFull.retry_after_s)
    assert json.loads(answer.body)["error_kind"] == "storage_full"


def test_other_errors_keep_their_kind():
    assert storage_full(OSError(errno.EACCES, "Permission denied")) is None
    assert describe(OSError(errno.EACCES, "Permission denied"))["status"] == 500
    assert storage_full(sqlite3.OperationalError("database is locked")) is None
    assert storage_full(InvalidRequest("x")) is None
    assert storage_full(redis.exceptions.ResponseError("WRONGTYPE Operation against a key")) is None


def test_each_api_answers_storage_full_in_its_own_shape():
    full = StorageFull("the outputs folder has 1.0 MiB free", folder="outputs", free_bytes=MiB, watermark_bytes=8 * MiB)
    ours = error_response(full)
    assert ours.status_code == 507 and json.loads(ours.body) == {
        "error": "the outputs folder has 1.0 MiB free", "error_kind": "storage_full", "request_id": "-",
        "folder": "outputs", "free_bytes": MiB, "watermark_bytes": 8 * MiB}
    v2 = error_envelope(full)  # the Comfy API v2 spec has no 507
    assert v2.status_code == 503 and v2.headers["Retry-After"] == "30"
    assert json.loads(v2.body)["error"] == {"code": "storage_full", "message": "the outputs folder has 1.0 MiB free",
                                            "details": {"folder": "outputs", "free_bytes": MiB, "watermark_bytes": 8 * MiB}}
    assert error_envelope(OSError(errno.ENOSPC, "No space left")).status_code == 503
    comfy = render(full, "comfyui")  # nor has ComfyUI's
    assert comfy.status_code == 503 and comfy.headers["Retry-After"] == "30"
    assert json.loads(comfy.body)["error"]["type"] == "storage_full"


def test_a_file_writing_node_that_finds_the_disk_full_is_a_storage_error_not_a_node_error():
    error = from_execution([("execution_error", {"node_id": "9", "node_type": "SaveAnimatedWEBP", "exception_type": "OSError",
                                                 "exception_message": "[Errno 28] No space left on device: '/w/output/x.webp'"})])
    assert isinstance(error, StorageFull) and describe(error)["error_kind"] == "storage_full" and "/w/" not in str(error)
    other = from_execution([("execution_error", {"node_id": "9", "node_type": "SaveImage", "exception_type": "OSError",
                                                 "exception_message": "[Errno 13] Permission denied"})])
    assert describe(other)["error_kind"] == "node"


# ---------------------------------------------------------------- writes that fail


def _enospc_on_write(monkeypatch: pytest.MonkeyPatch, times: int = 10**9) -> list[Path]:
    """Path.write_bytes writes nothing and raises ENOSPC (the first `times` calls), as a full file system does."""
    attempts: list[Path] = []
    real = Path.write_bytes

    def write_bytes(self: Path, data: Any) -> int:
        attempts.append(self)
        if len(attempts) <= times:
            self.touch()  # the file was created, then the data found no room
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return attempts


def test_a_full_output_folder_is_a_storage_full_and_leaves_no_partial_file(tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path)
    _enospc_on_write(monkeypatch, times=1)
    with pytest.raises(StorageFull) as refused:
        storage.put("job/a.png", b"x" * 100, "image/png")
    assert refused.value.folder == "outputs" and "COMFYBENTO_OUTPUT_DIR" in str(refused.value)
    assert [p.name for p in (tmp_path / "job").iterdir()] == []
    storage.put("job/a.png", b"x" * 100, "image/png")  # room again
    assert storage.get("job/a.png") == b"x" * 100


def _job(n: int = 1) -> tuple[JobRecord, list[ItemRecord]]:
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=0, created_at=now(), total=n, request_hash="h")
    return job, [ItemRecord(job_id=job.id, index=i, params={"prompt": "p" * 2000}, seed=i) for i in range(n)]


def test_a_full_job_store_is_a_storage_full_and_works_again_once_there_is_room(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages + 2}")  # the file cannot grow: SQLITE_FULL, as on a full disk
    with pytest.raises(StorageFull) as refused:
        store.create_job(*_job(50))
    assert describe(refused.value)["status"] == 507 and isinstance(refused.value.__cause__, sqlite3.OperationalError)
    assert store.list_jobs(10, 0) == []  # nothing half-written
    store._db.execute("PRAGMA max_page_count=1073741823")  # space freed
    created, new = store.create_job(*_job(50))
    assert new and store.get_job(created.id).total == 50  # type: ignore[union-attr]


def test_an_output_that_cannot_be_stored_ends_the_stream_with_a_failed_event():
    blob = OutputBlob(output="image", node_id="9", index=0, width=8, height=8, media_type="image/png", data=b"\x89PNG")

    async def run(on_event: Callable[[Any], None], on_output: Callable[[Any], None]) -> ItemResult:
        on_output(blob)
        await asyncio.sleep(10)  # cancelled when the stream ends
        return ItemResult(ok=True)

    async def deliver(b: OutputBlob) -> OutputEvent:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def finish(result: ItemResult) -> Any:
        raise AssertionError("not reached")

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        body = b"".join([c async for c in request_events(run, deliver, finish, "rid")])
        return [(k, json.loads(d)) for k, d in parse_sse(body.decode())]

    frames = asyncio.run(asyncio.wait_for(collect(), 5))
    assert [k for k, _ in frames] == ["failed"]
    assert frames[0][1]["status"] == 507 and frames[0][1]["error_kind"] == "storage_full" and frames[0][1]["request_id"] == "rid"


# ---------------------------------------------------------------- jobs wait for room


def test_jobs_are_not_leased_below_the_watermark_and_run_once_each_when_space_frees(tmp_path):
    job = submit(tmp_path, 3)
    engine = Engine()
    disk = Disk(work=MiB, outputs=MiB)
    watcher = disk.watcher(interval_s=0.0)
    r = runner(tmp_path, engine, may_lease=watcher.has_room)
    polls = [0]

    def after_a_while_free_it() -> bool:
        polls[0] += 1
        if polls[0] == 25:  # ~0.5 s of the real loop with no room: nothing ran
            assert engine.calls == [] and r.store.get_job(job.id).state == "queued"  # type: ignore[union-attr]
            disk.free = {p: 50 * MiB for p in disk.free}
        return finished(r, job.id)()

    run_until(r, after_a_while_free_it)
    assert polls[0] > 25 and sorted(engine.calls) == [0, 1, 2]
    assert [(i.state, i.attempts) for i in r.store.get_items(job.id, 0, 10)] == [("succeeded", 1)] * 3


def test_an_item_whose_outputs_find_no_room_is_rerun_not_failed(tmp_path, monkeypatch, caplog):
    job = submit(tmp_path, 1)
    engine = Engine()
    r = runner(tmp_path, engine, lease_s=1)
    _enospc_on_write(monkeypatch, times=1)
    run_until(r, finished(r, job.id))
    item = r.store.get_items(job.id, 0, 1)[0]
    assert (item.state, item.attempts) == ("succeeded", 2) and engine.calls == [0, 0]
    assert [p.name for p in (tmp_path / "out" / job.id).iterdir()] == ["00000-a2-save_image-0.png"]  # one result, no partial file
    assert "the lease will expire and it reruns" in caplog.text and "Traceback" not in caplog.text
