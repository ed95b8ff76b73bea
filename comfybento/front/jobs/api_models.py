"""Request and response models of the jobs API (they are its OpenAPI documentation)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from comfybento.errors import ErrorKind
from comfybento.outputs.media import OutputKind


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="Callback URL; must pass the service's webhook allow-list.")
    per_item: bool = Field(default=False, strict=True, description="Also POST when each item finishes, not only when the job does.")


class JobSubmit(BaseModel):
    """A batch job: a workflow and its items, given as a list or as a base plus a fan-out."""

    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(description="Name of the workflow (its endpoint is POST /<workflow>); for a workflow with versions, "
                                      "<name>/<version> or the alias <name> (the version its versions.yaml picks).")
    items: list[dict[str, Any]] | None = Field(
        default=None, description="Parameter sets, each validated like a request to the workflow's endpoint.")
    base: dict[str, Any] | None = Field(default=None, description="Parameters shared by every item of a fan-out.")
    fanout: dict[str, list[Any]] | None = Field(
        default=None, description="Field -> values; items are the cartesian product, e.g. prompts x seeds.")
    priority: int = Field(default=0, ge=-100, le=100, strict=True, description="Higher runs first.")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="Submitting again with the same key returns the same job.")
    webhook: WebhookSpec | None = Field(default=None, description="Where to POST signed completion events.")
    cache: bool = Field(default=False, strict=True, description="Reuse a stored result for an identical (workflow, parameters, seed) item.")
    preset: str | None = Field(default=None, min_length=1, max_length=32, description=(
        "A preset of the workflow's sidecar for every item (an item's own `preset` and its explicit fields override it)."))


class ItemError(BaseModel):
    index: int = Field(description="Position of the item in the submission.")
    field: str = Field(description="The field that is wrong.")
    message: str


class OutputRef(BaseModel):
    output: str = Field(description="Name of the output node.")
    node_id: str
    index: int = Field(description="Position in that node's batch.")
    kind: OutputKind = Field(default="image", description="image | animation | video | audio | text | file.")
    width: int | None = Field(default=None, description="Width in pixels (images, animations, videos).")
    height: int | None = Field(default=None, description="Height in pixels (images, animations, videos).")
    media_type: str = Field(default="image/png", description="The file's content type (image/png, video/webm, audio/flac ...).")
    url: str = Field(description="Where to download the file (a presigned URL with S3 storage).")


class ItemFailure(BaseModel):
    kind: ErrorKind = Field(description="The kind of error: the same kinds in every answer, event and job record.")
    message: str
    retryable: bool = Field(description="Whether the error was transient (retried with backoff).")
    node_id: str | None = None
    class_type: str | None = None


class ItemResultOut(BaseModel):
    index: int
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    seed: int | None
    attempts: int
    cached: bool = Field(default=False, description="The result was reused from the result cache.")
    outputs: list[OutputRef] = Field(default_factory=list)
    queue_ms: float | None = None
    execution_ms: float | None = None
    batch_size: int | None = None
    error: ItemFailure | None = None


class ItemProgress(BaseModel):
    index: int
    state: str
    attempts: int
    step: int | None = Field(default=None, description="Sampler step of a running item (from the engine's events).")
    steps: int | None = Field(default=None, description="Sampler steps of a running item.")


class DeliveryOut(BaseModel):
    id: str
    event: str
    url: str
    state: str = Field(description="pending | delivered | failed")
    attempts: list[dict[str, Any]] = Field(description="One entry per attempt: time, status code or error.")


class JobUsage(BaseModel):
    """What the job's succeeded items used so far; charged to the owner's API key as each item finishes."""

    images: int = Field(ge=0, description="Images made (a result reused from the cache counts its images).")
    gpu_seconds: float = Field(ge=0, description="GPU-seconds: each item's share of its engine batch (0 for a cached result).")


class JobStatus(BaseModel):
    id: str
    workflow: str
    version: str | None = Field(default=None, description=(
        "The version of the workflow the job runs (a folder of versions: workflows/<name>/<version>.json); null for a "
        "workflow without versions. A job submitted to the alias <name> runs the version it picked then."))
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    priority: int
    total: int
    counts: dict[str, int] = Field(description="Items by state.")
    created_at: float
    finished_at: float | None
    eta_s: float | None = Field(description="Estimated seconds to completion, from the rate so far.")
    items: list[ItemProgress] = Field(description="Per-item progress (first 1000 items; see /results for all).")
    webhooks: list[DeliveryOut] = Field(description="Webhook delivery log.")
    owner: str | None = Field(default=None, description="Name of the API key that submitted the job (null when API keys are off).")
    usage: JobUsage = Field(default_factory=lambda: JobUsage(images=0, gpu_seconds=0.0), description="Usage of the job's items.")


class JobResults(BaseModel):
    id: str
    state: str
    total: int
    offset: int
    limit: int
    items: list[ItemResultOut]
    archive_url: str = Field(description="One zip of every image of the job.")


class JobList(BaseModel):
    jobs: list[JobStatus]


class QuotaOut(BaseModel):
    images_per_day: int | None = Field(description="The API key's daily image quota (null: unlimited, or API keys are off).")
    remaining: int | None = Field(description="Images the key may still make now (null: unlimited).")


class JobEstimate(BaseModel):
    """What a job would cost (`POST /jobs/estimate`): nothing is queued."""

    dry_run: bool = Field(default=True, description="Always true: this is an estimate.")
    workflow: str
    items: int = Field(description="Items after the fan-out.")
    cache_hits: int = Field(description="Items whose result is in the result cache (counted only with `cache: true`).")
    images: int = Field(description="Images the job would make (and charge to the key), cache hits included.")
    gpu_seconds: float = Field(description="Estimated GPU-seconds of the items that would run (cache hits cost none).")
    seconds_per_unit: float = Field(description="The workflow's cost used: GPU-seconds per megapixel x step x image.")
    measured: int = Field(description="Results the cost was measured on since this replica started (0: the documented prior).")
    quota: QuotaOut
    fits_quota: bool = Field(description="Whether the key's remaining images cover the job (a real submission over it is a 429).")


class UsageCounts(BaseModel):
    requests: int = Field(description="Generation requests and job items that succeeded.")
    images: int = Field(description="Images made.")
    gpu_seconds: float = Field(description="GPU-seconds used (each item's share of its engine batch).")


class DayUsage(UsageCounts):
    day: str = Field(description="The UTC day, YYYY-MM-DD.")


class KeyUsage(BaseModel):
    key: str | None = Field(description="The API key's name (null: requests made without API keys).")
    total: UsageCounts = Field(description="Sum over the days shown.")
    days: list[DayUsage] = Field(description="Each day with usage, oldest first.")


class UsageReport(BaseModel):
    since: str = Field(description="The first UTC day shown (YYYY-MM-DD).")
    until: str = Field(description="The last UTC day shown (today).")
    scope: str = Field(description="own (the calling key's), all (an operator key: every key) or total (API keys are off).")
    keys: list[KeyUsage]
