from __future__ import annotations

from pathlib import Path

import pytest

from comfybento.config import Settings
from comfybento.errors import InvalidRequest
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import InvalidItems, JobService, TooManyItems, expand
from comfybento.front.jobs.store import IdempotencyConflict, SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.models.lock import parse_lock
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import load_workflow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(node_defs, tmp_path):
    settings = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")})
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), settings)
    return JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"),
                      AllowList(["127.0.0.1"]), max_items=5, retention_s=60)


def test_fanout_is_the_cartesian_product():
    req = JobSubmit(workflow="w", base={"steps": 4}, fanout={"prompt": ["a", "b"], "seed": [1, 2, 3]})
    items = expand(req, 10)
    assert len(items) == 6 and items[0] == {"steps": 4, "prompt": "a", "seed": 1} and items[-1]["seed"] == 3
    with pytest.raises(InvalidRequest):
        expand(JobSubmit(workflow="w", items=[{}], base={}), 10)


def test_fanout_size_is_checked_before_it_is_built():
    huge = JobSubmit(workflow="w", base={}, fanout={"prompt": list(range(2000)), "seed": list(range(2000))})
    with pytest.raises(TooManyItems, match=r"fanout: 2000 x 2000 = 4000000 items is more than the limit of 10000 \(COMFYBENTO_JOB_MAX_ITEMS\)"):
        expand(huge, 10_000)  # no 4 M dicts: the product of the lengths is checked first
    assert TooManyItems("x").error_code == 413
    with pytest.raises(TooManyItems, match="items: 3 items is more than the limit of 2"):
        expand(JobSubmit(workflow="w", items=[{}] * 3), 2)
    assert len(expand(JobSubmit(workflow="w", base={}, fanout={"a": [1, 2], "b": [1, 2]}), 4)) == 4


def test_invalid_items_reject_the_whole_submission(service):
    req = JobSubmit(workflow="txt2img", items=[{"prompt": "ok"}, {"steps": 0}, {"sampler_name": "x", "nope": 1}])
    with pytest.raises(InvalidItems) as err:
        service.submit(req)
    fields = {(e.index, e.field) for e in err.value.errors}
    assert fields == {(1, "steps"), (2, "sampler_name"), (2, "nope")}
    assert service.store.list_jobs(10, 0) == []


def test_limits_unknown_workflow_and_webhook_allow_list(service):
    with pytest.raises(InvalidRequest, match="limit of 5"):
        service.submit(JobSubmit(workflow="txt2img", items=[{}] * 6))
    with pytest.raises(InvalidRequest, match="unknown workflow"):
        service.submit(JobSubmit(workflow="nope", items=[{}]))
    with pytest.raises(InvalidRequest, match="allow-list"):
        service.submit(JobSubmit(workflow="txt2img", items=[{}], webhook={"url": "http://10.0.0.1/x"}))


def test_seeds_are_drawn_at_submit_and_kept(service):
    job, created = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}, {"prompt": "b", "seed": 7}]))
    items = service.store.get_items(job.id, 0, 10)
    assert created and isinstance(items[0].seed, int) and items[1].seed == 7
    again, created_again = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "x"}], idempotency_key="k"))
    same, created_same = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "x"}], idempotency_key="k"))
    assert created_again and not created_same and same.id == again.id


def test_an_idempotency_key_names_one_owners_job(service):
    req = JobSubmit(workflow="txt2img", items=[{"prompt": "x", "seed": 3}], idempotency_key="owned")
    job, created = service.submit(req, owner="alice")
    assert created and job.owner == "alice" and service.status(job.id).owner == "alice"
    assert service.submit(req, owner="alice") == (job, False)
    for other in ("bob", None):
        with pytest.raises(IdempotencyConflict) as refused:
            service.submit(req, owner=other)
        assert refused.value.error_code == 409
    assert [j.id for j in service.store.list_jobs(10, 0)] == [job.id]
    anonymous, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "x", "seed": 3}], idempotency_key="free"))
    assert anonymous.owner is None and anonymous.request_hash != job.request_hash  # the owner is part of the request
