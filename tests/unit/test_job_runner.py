from __future__ import annotations

import uuid

from comfybento.jobs.records import ItemRecord, JobRecord, now
from comfybento.jobs.runner import JobRunner
from comfybento.jobs.store import SQLiteJobStore
from comfybento.jobs.webhooks import AllowList
from comfybento.outputs.encoding import png_bytes
from comfybento.outputs.storage import LocalStorage
from comfybento.serving.messages import ItemResult, OutputBlob
from tests.helpers import sample_image


def _runner(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    storage = LocalStorage(tmp_path / "out")

    async def never(workflow, values, seed, on_event):  # not called here
        raise AssertionError

    runner = JobRunner(store, storage, never, concurrency=4, lease_s=60, max_attempts=3, retry_base_s=1.0, retention_s=60,
                       webhook_secret="s", allow=AllowList([]), webhook_max_attempts=2, webhook_backoff_s=1.0)
    return runner, store, storage


def _result() -> ItemResult:
    png = png_bytes(sample_image(8, 8))
    return ItemResult(ok=True, seed=1, outputs=[OutputBlob(output="save_image", node_id="9", index=0, width=8, height=8,
                                                           media_type="image/png", data=png)])


def test_results_are_stored_once_and_a_lost_lease_leaves_no_files(tmp_path):
    runner, store, _ = _runner(tmp_path)
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=0, created_at=now(), total=1, request_hash="h")
    store.create_job(job, [ItemRecord(job_id=job.id, index=0, params={}, seed=1)])
    (lease,) = store.lease("somebody-else", 1, 60)  # another worker holds the item
    runner._record_success(lease, _result())
    assert list((tmp_path / "out").rglob("*.png")) == []
    assert store.get_items(job.id, 0, 1)[0].result is None
    store.fail("somebody-else", lease, {"kind": "oom"}, retry_at=now())  # it gives the item back
    (mine,) = store.lease(runner.owner, 1, 60)
    runner._record_success(mine, _result())
    (stored,) = (tmp_path / "out").rglob("*.png")
    assert stored.name == "00000-a2-save_image-0.png"
    assert store.get_items(job.id, 0, 1)[0].result["outputs"][0]["key"] == f"{job.id}/00000-a2-save_image-0.png"


def test_transient_errors_retry_and_node_errors_do_not(tmp_path):
    runner, store, _ = _runner(tmp_path)
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=0, created_at=now(), total=2, request_hash="h")
    store.create_job(job, [ItemRecord(job_id=job.id, index=i, params={}, seed=i) for i in range(2)])
    oom, node = store.lease(runner.owner, 2, 60)
    runner._record_failure(oom, ItemResult(ok=False, status=503, error="out of memory", error_kind="oom"))
    runner._record_failure(node, ItemResult(ok=False, status=500, error="boom", error_kind="node", node_id="3", class_type="KSampler"))
    items = store.get_items(job.id, 0, 2)
    assert items[0].state == "queued" and items[0].error["retryable"] and items[0].next_attempt_at > now()
    assert items[1].state == "failed" and items[1].error == {"kind": "node", "message": "boom", "retryable": False,
                                                             "node_id": "3", "class_type": "KSampler"}
