"""The per-workflow cost model (scheduling/cost.py) and the dry-run estimate and quota check of jobs (front/jobs/estimate.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from comfybento.config import Settings
from comfybento.front.access import Access
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.estimate import QuotaExceeded
from comfybento.front.jobs.records import Lease
from comfybento.front.jobs.runner import cache_key
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.keys import ApiKey, hash_key
from comfybento.front.ratelimit import MemoryBuckets
from comfybento.models.lock import parse_lock
from comfybento.outputs.storage import LocalStorage
from comfybento.scheduling.cost import PRIOR_S_PER_UNIT, CostModel, HeavyRequests, Work, graph_work, work_of
from comfybento.workflows.catalog import load_workflow

ROOT = Path(__file__).resolve().parents[2]


def test_the_prior_until_the_first_result_then_the_measured_rate():
    costs = CostModel()
    small = Work(megapixels=0.25, steps=20, images=1)  # 5 units
    assert costs.rate("w") == PRIOR_S_PER_UNIT and costs.measured("w") == 0
    assert costs.estimate("w", small) == pytest.approx(5 * PRIOR_S_PER_UNIT)
    costs.observe("w", small, gpu_seconds=10.0)  # 2 s per unit
    assert costs.rate("w") == pytest.approx(2.0) and costs.measured("w") == 1
    assert costs.estimate("w", Work(megapixels=1.0, steps=10, images=2)) == pytest.approx(40.0)
    assert costs.rate("other") == PRIOR_S_PER_UNIT  # per workflow


def test_recent_results_weigh_more_so_the_rate_follows_a_change():
    costs = CostModel(decay=0.5)
    unit = Work(megapixels=1.0, steps=1, images=1)
    for _ in range(5):
        costs.observe("w", unit, 1.0)
    for _ in range(5):
        costs.observe("w", unit, 3.0)
    assert 2.8 < costs.rate("w") < 3.0  # mostly the recent 3 s, a little of the older 1 s
    costs.observe("w", unit, 0.0)  # no time measured (a failure, a cache hit): ignored
    assert costs.measured("w") == 10


def test_a_bad_prior_or_decay_is_refused():
    with pytest.raises(ValueError):
        CostModel(prior_s_per_unit=0)
    with pytest.raises(ValueError):
        CostModel(decay=1.0)


def test_work_is_pixels_times_steps_times_images_of_the_bound_graph(node_defs):
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"),
                         Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")}))
    work = work_of(spec.graph, spec.params, {"width": 512, "height": 256, "steps": 10, "batch_size": 3})
    assert work == Work(megapixels=512 * 256 / 1e6, steps=10, images=3)
    assert work_of(spec.graph, spec.params, {}) == Work(megapixels=128 * 128 / 1e6, steps=20, images=1)  # the graph's own
    sized_by_an_input = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                         "2": {"class_type": "KSampler", "inputs": {"steps": 8, "seed": 1}}}
    assert graph_work(sized_by_an_input) == Work(megapixels=1.0, steps=8, images=1)


@pytest.fixture
def jobs(node_defs, tmp_path) -> JobService:
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"),
                         Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")}))
    return JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"), AllowList([]),
                      max_items=100, retention_s=60)


def test_a_dry_run_estimates_items_cache_hits_images_and_gpu_seconds(jobs):
    jobs.costs.observe("txt2img", Work(megapixels=64 * 64 / 1e6, steps=4, images=1), gpu_seconds=0.5)
    base = {"width": 64, "height": 64, "steps": 4}
    job, _ = jobs.submit(JobSubmit(workflow="txt2img", items=[{**base, "prompt": "b", "seed": 2}]))  # its result is cached
    (item,) = jobs.store.get_items(job.id, 0, 1)
    lease = Lease(job_id=job.id, workflow="txt2img", index=0, params=item.params, seed=2, attempt=1, use_cache=True,
                  webhook_per_item=False)
    jobs.store.cache_put(cache_key(lease), {"outputs": []}, job.id)
    req = JobSubmit(workflow="txt2img", base={**base, "batch_size": 2}, fanout={"prompt": ["a", "b"], "seed": [1, 2, 3]}, cache=True)
    got = jobs.estimate(req.model_copy(update={"base": base}), quota=(100, 40))
    assert (got.items, got.cache_hits, got.images, got.measured) == (6, 1, 6, 1)
    assert got.gpu_seconds == pytest.approx(5 * 0.5) and got.seconds_per_unit == pytest.approx(0.5 / (64 * 64 / 1e6 * 4))
    assert got.quota.model_dump() == {"images_per_day": 100, "remaining": 40} and got.fits_quota
    doubled = jobs.estimate(req, quota=(100, 8))  # batch_size 2: two images an item
    assert doubled.images == 12 and doubled.cache_hits == 0 and not doubled.fits_quota
    assert jobs.estimate(req.model_copy(update={"cache": False}), quota=None).cache_hits == 0
    assert len(jobs.store.list_jobs(10, 0)) == 1  # nothing queued by the estimates


def test_a_job_over_the_remaining_quota_is_refused_up_front(jobs):
    req = JobSubmit(workflow="txt2img", items=[{"prompt": "a", "batch_size": 2}, {"prompt": "b"}])
    with pytest.raises(QuotaExceeded) as refused:
        jobs.submit(req, owner="tiny", quota=(10, 2))
    assert refused.value.error_code == 429
    assert str(refused.value).startswith("API key 'tiny' has 2 of its 10 images/day left (images_per_day quota); this job would make 3")
    assert jobs.store.list_jobs(10, 0) == []
    assert jobs.submit(req, owner="tiny", quota=(10, 3))[1]  # just fits
    assert jobs.submit(req.model_copy(update={"idempotency_key": "k"}), owner="tiny", quota=(10, None))[1]  # limiter down: open


def test_images_left_is_read_without_drawing():
    key = ApiKey(name="k", sha256=hash_key("secret"), images_per_day=10)
    acl = Access((key, ApiKey(name="free", sha256=hash_key("other"))), MemoryBuckets(clock=lambda: 0.0))

    async def scenario() -> list[int | None]:
        seen = [await acl.images_left(key), await acl.images_left(key)]
        await acl.charge(key, images=3, gpu_seconds=0.0)
        return [*seen, await acl.images_left(key), await acl.images_left(acl.by_name["free"])]

    assert asyncio.run(scenario()) == [10, 10, 7, None]


def test_a_request_far_heavier_than_its_neighbours_is_heavy():
    heavy = HeavyRequests(factor=4, window=16, min_seen=4)
    small, big = Work(megapixels=0.016, steps=20, images=1), Work(megapixels=0.26, steps=20, images=1)
    assert not any(heavy.is_heavy("txt2img", big if i == 0 else small) for i in range(4))  # too few seen yet
    assert heavy.is_heavy("txt2img", big)
    assert not heavy.is_heavy("txt2img", small)
    assert not heavy.is_heavy("other", big)  # per workflow
