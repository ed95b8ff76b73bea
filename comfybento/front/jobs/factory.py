"""Build the job store and services from the settings (the output storage: outputs/storage.py make_storage)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from comfybento.config import Settings
from comfybento.front.jobs.live import JobEvents
from comfybento.front.jobs.runner import Execute, JobRunner, OnUsage, no_usage_hook
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import JobStore, SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList, WebhookPolicy, load_or_create_secret
from comfybento.outputs.storage import make_storage
from comfybento.scheduling.cost import CostModel
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs
from comfybento.workflows.versions import Alias


def make_store(settings: Settings) -> JobStore:
    if settings.jobs_backend == "redis":
        from comfybento.front.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url)
    return SQLiteJobStore(settings.jobs_db)


def make_jobs(settings: Settings, catalog: dict[str, WorkflowSpec], execute: Execute,
              costs: CostModel | None = None, may_lease: Callable[[], bool] = lambda: True,
              on_usage: OnUsage = no_usage_hook, aliases: Mapping[str, Alias] | None = None) -> tuple[JobService, JobRunner]:
    """The job service and this replica's runner. `on_usage`: the charge hook, given each succeeded item's owner (the API key
    that submitted its job), images and GPU-seconds (front/access.py `charge_owner`); `may_lease`: False pauses the runner's
    leasing (the disk watcher's `has_room`: a full disk)."""
    store, storage = make_store(settings), make_storage(settings)
    allow = AllowList(settings.webhook_allowlist)
    served = frozenset(catalog) | ({FREE_GRAPH} if settings.runs_unmatched_graphs else frozenset())
    concurrency = settings.job_concurrency or 4 * max((spec.max_batch_size for spec in catalog.values()), default=1)
    runner = JobRunner(
        store, storage, execute, workflows=served, concurrency=concurrency, lease_s=settings.job_lease_s,
        max_attempts=settings.job_max_attempts, retry_base_s=settings.job_retry_base_s,
        webhook_secret=settings.webhook_secret or load_or_create_secret(settings.webhook_secret_file), allow=allow,
        webhooks=WebhookPolicy(max_attempts=settings.webhook_max_attempts, backoff_s=settings.webhook_backoff_s,
                               timeout_s=settings.webhook_timeout_s, min_bytes_per_s=settings.webhook_min_bytes_per_s),
        on_usage=on_usage,
        live=JobEvents(),
        may_lease=may_lease,
    )
    service = JobService(catalog, store, storage, allow, settings.job_max_items, settings.job_retention_s,
                         live_progress=runner.progress, live=runner.live,
                         free_graphs=FreeGraphs(settings) if settings.runs_unmatched_graphs else None, costs=costs,
                         aliases=aliases)
    return service, runner
