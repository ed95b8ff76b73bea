"""Prometheus metrics, exported on /metrics by BentoML.

BentoML runs prometheus_client in multiprocess mode: each process (the engine, each front worker) writes its own
values and /metrics merges them. Counters and histograms are summed. A gauge states one current value, so each gauge
here names how its processes' values merge (`multiprocess_mode`): without one, it is exported once per process, with
a `pid` label (and a 0 from every process that never sets it). Gauges set by one process (the engine) or read from
one shared place (the job store, a folder's free space) take the most recent write.
"""

from __future__ import annotations

import bentoml

BATCH_SIZE = bentoml.metrics.Histogram(
    name="comfybento_batch_size",
    documentation="Requests per ComfyUI graph execution.",
    labelnames=["workflow"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_WAIT = bentoml.metrics.Histogram(
    name="comfybento_queue_wait_seconds",
    documentation="Time from a request's arrival in the engine to the start of its execution.",
    labelnames=["workflow"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUDGET_EXCEEDED = bentoml.metrics.Counter(
    name="comfybento_executions_over_budget",
    documentation="Executions interrupted for running longer than COMFYBENTO_MAX_EXECUTION_S.",
)
EXECUTION_TIME = bentoml.metrics.Histogram(
    name="comfybento_execution_seconds",
    documentation="Wall time of one ComfyUI graph execution.",
    labelnames=["workflow"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
EXECUTIONS = bentoml.metrics.Counter(
    name="comfybento_executions",
    documentation="ComfyUI graph executions, by mode: batched (merged graph) or single.",
    labelnames=["workflow", "mode"],
)
ITEM_ERRORS = bentoml.metrics.Counter(
    name="comfybento_item_errors",
    documentation="Requests that failed, by error kind.",
    labelnames=["workflow", "kind"],
)
WORKFLOW_BATCHABLE = bentoml.metrics.Gauge(
    name="comfybento_workflow_batchable",
    documentation="1 if the workflow runs requests in shared batches, 0 if one by one.",
    labelnames=["workflow"],
    multiprocess_mode="mostrecent",
)
EXECUTOR_BUSY = bentoml.metrics.Counter(
    name="comfybento_executor_busy_seconds",
    documentation="Seconds the engine's executor spent running batches.",
)
EXECUTOR_IDLE_WHILE_QUEUED = bentoml.metrics.Counter(
    name="comfybento_executor_idle_while_queued_seconds",
    documentation="Seconds the executor sat idle although requests were queued (scheduler overhead; the target is < 5% "
                  "of comfybento_queue_nonempty_seconds).",
)
EXECUTOR_COALESCING = bentoml.metrics.Counter(
    name="comfybento_executor_coalescing_seconds",
    documentation="Seconds the executor waited on purpose for the callers of a finished batch to come back "
                  "(bounded coalescing; not counted as idle).",
)
QUEUE_NONEMPTY = bentoml.metrics.Counter(
    name="comfybento_queue_nonempty_seconds",
    documentation="Seconds during which at least one request was queued for the executor.",
)
DISK_FREE = bentoml.metrics.Gauge(
    name="comfybento_disk_free_bytes",
    documentation="Free bytes of each folder new work writes to (work, outputs, jobs), sampled at most every "
                  "COMFYBENTO_DISK_CHECK_MS; below comfybento_disk_watermark_bytes, such work is refused.",
    labelnames=["folder"],
    multiprocess_mode="mostrecent",
)
DISK_WATERMARK = bentoml.metrics.Gauge(
    name="comfybento_disk_watermark_bytes",
    documentation="Free bytes each watched folder must keep (COMFYBENTO_MIN_FREE_BYTES; 0: not checked).",
    multiprocess_mode="max",  # set by the front; the engine's copy of this unlabelled gauge stays 0
)
COST_SECONDS_PER_UNIT = bentoml.metrics.Gauge(
    name="comfybento_cost_seconds_per_unit",
    documentation="GPU-seconds per unit of work (megapixel x step x image) of each workflow, learned from its results on this "
                  "replica (scheduling/cost.py; its prior until the first result). Dry-run job estimates use it.",
    labelnames=["workflow"],
    multiprocess_mode="mostrecent",
)
QUEUE_DEPTH = bentoml.metrics.Gauge(
    name="comfybento_queue_depth",
    documentation="Requests queued in the engine's scheduler and not yet running, per workflow and engine (0 for each "
                  "served workflow from startup).",
    labelnames=["workflow", "engine"],
    multiprocess_mode="mostrecent",
)
GPU_MEMORY_USED = bentoml.metrics.Gauge(
    name="comfybento_gpu_memory_used_bytes",
    documentation="Memory in use on the engine's device (total less free, every process on it), sampled after each "
                  "execution; 0 with device=\"cpu\" on a CPU engine.",
    labelnames=["device"],
    multiprocess_mode="mostrecent",
)
GPU_MEMORY_TOTAL = bentoml.metrics.Gauge(
    name="comfybento_gpu_memory_total_bytes",
    documentation="Total memory of the engine's device; 0 with device=\"cpu\" on a CPU engine.",
    labelnames=["device"],
    multiprocess_mode="mostrecent",
)
JOB_ITEMS = bentoml.metrics.Gauge(
    name="comfybento_job_items",
    documentation="Batch-job items in the job store, by state, sampled every few seconds (the store's totals: replicas "
                  "sharing one Redis each report the same numbers).",
    labelnames=["state"],
    multiprocess_mode="mostrecent",
)
MODEL_URL_FETCHES = bentoml.metrics.Counter(
    name="comfybento_model_url_fetches",
    documentation="Requests naming a model by URL (models/by_url.py), by result: download (this request fetched it), "
                  "shared (it waited for another request's download of the same URL), hit (already in the cache), "
                  "refused (host, size, type or sha256 wrong) or failed (unreachable, an HTTP error, too slow).",
    labelnames=["result"],
)
MODEL_URL_CACHE_BYTES = bentoml.metrics.Gauge(
    name="comfybento_model_url_cache_bytes",
    documentation="Bytes the models downloaded by URL take on disk (bounded by COMFYBENTO_MODEL_URL_CACHE_BYTES).",
    multiprocess_mode="mostrecent",
)
ALIAS_REQUESTS = bentoml.metrics.Counter(
    name="comfybento_alias_requests",
    documentation="Requests and jobs sent to a workflow's alias (POST /<name>, a job of workflow <name>, "
                  "workflows/versions.py), by the version its versions.yaml routed them to.",
    labelnames=["workflow", "version"],
)
# One engine per GPU (COMFYBENTO_GPUS, engine/pool.py): "0" when there is one.
ENGINE_IN_FLIGHT = bentoml.metrics.Gauge(
    name="comfybento_engine_in_flight",
    documentation="Requests the front has in flight on each engine (queued or running there): what it spreads them by.",
    labelnames=["engine"],
    multiprocess_mode="livesum",  # each front worker's own, summed
)
ENGINE_REQUESTS = bentoml.metrics.Counter(
    name="comfybento_engine_requests",
    documentation="Requests the front sent to each engine, by outcome: ok, failed (answered with an error), or moved "
                  "(the engine could not take it, killed or restarting, and another ran it).",
    labelnames=["engine", "outcome"],
)
ENGINE_BUSY = bentoml.metrics.Counter(
    name="comfybento_engine_busy_seconds",
    documentation="Seconds each engine's executor spent running batches (comfybento_executor_busy_seconds, per engine).",
    labelnames=["engine"],
)
