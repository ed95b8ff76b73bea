"""What a job would cost before it runs (`POST /jobs/estimate`), and the quota check of a real submission.

For each validated item: its work (scheduling/cost.py `work_of`), its images (the
work's batch size x the workflow's output nodes: what a finished item is charged)
and, with `cache: true`, whether the result cache already holds its result (the
runner's `cache_key`; an item without a seed draws a fresh one, so it never hits).
GPU-seconds are the workflow's learned seconds per unit x the work of the items
that would run. A submission whose images the key's remaining daily quota cannot
cover is refused up front (`check_quota`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfybento.errors import RateLimited
from comfybento.front.jobs.api_models import JobEstimate, QuotaOut
from comfybento.front.jobs.records import Lease
from comfybento.front.jobs.runner import cache_key
from comfybento.front.jobs.store import JobStore
from comfybento.scheduling.cost import CostModel, Work, graph_work, work_of
from comfybento.workflows.catalog import WorkflowSpec

# (images per day, images left now; None: the limiter could not be asked) of the submitting key; None: no quota.
Quota = tuple[int, "int | None"] | None


class QuotaExceeded(RateLimited):
    """The job makes more images than the key's daily quota has left; nothing was queued."""


@dataclass(frozen=True)
class Planned:
    """One validated item as the estimate sees it."""

    workflow: str
    params: dict[str, Any]
    seed: int | None
    work: Work
    images: int


def plan(spec: WorkflowSpec, values: dict[str, Any], seed: int | None) -> Planned:
    """A catalog workflow's item, or (spec.params empty) an unmatched graph's, whose graph is its values' `graph`."""
    work = graph_work(values["graph"]) if not spec.params and "graph" in values else work_of(spec.graph, spec.params, values)
    return Planned(spec.name, values, seed, work, images=work.images * max(1, len(spec.outputs)))


def check_quota(owner: str | None, items: list[Planned], quota: Quota) -> None:
    """Refuse (429, naming the quota) a job whose images are more than the key has left today."""
    if quota is None:
        return
    per_day, left = quota
    if left is None:  # the limiter could not be asked: fail open, as every other quota check
        return
    images = sum(p.images for p in items)
    if images > left:
        raise QuotaExceeded(f"API key '{owner}' has {left} of its {per_day} images/day left (images_per_day quota); this job "
                            f"would make {images} images: submit fewer items, or wait for the quota to refill; nothing was queued")


def estimate(items: list[Planned], store: JobStore, costs: CostModel, use_cache: bool, quota: Quota) -> JobEstimate:
    workflow = items[0].workflow
    hits = [use_cache and p.seed is not None and store.cache_get(_key(p)) is not None for p in items]
    running = [p for p, hit in zip(items, hits, strict=True) if not hit]
    images = sum(p.images for p in items)
    left = quota[1] if quota is not None else None
    return JobEstimate(
        workflow=workflow, items=len(items), cache_hits=sum(hits), images=images,
        gpu_seconds=round(sum(costs.estimate(workflow, p.work) for p in running), 3),
        seconds_per_unit=costs.rate(workflow), measured=costs.measured(workflow),
        quota=QuotaOut(images_per_day=quota[0] if quota is not None else None, remaining=left),
        fits_quota=left is None or images <= left,
    )


def _key(item: Planned) -> str:
    """The runner's result-cache key of the item (front/jobs/runner.py `cache_key`)."""
    return cache_key(Lease(job_id="", workflow=item.workflow, index=0, params=item.params, seed=item.seed, attempt=0,
                           use_cache=True, webhook_per_item=False))
