"""Download or generate every file in models.lock, verifying each before it is used.

A `url:` source is downloaded within a total deadline and a minimum rate (COMFYBENTO_MODEL_FETCH_S,
COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S; comfybento/transfer.py): a server that drips fails the fetch, naming them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from comfybento.errors import ModelLockError
from comfybento.models.lock import ModelEntry, ModelLock, sha256_file, verify_entry
from comfybento.transfer import TooSlow, TransferLimits, Watchdog

if TYPE_CHECKING:
    from comfybento.config import Settings

log = logging.getLogger(__name__)

# COMFYBENTO_MODEL_FETCH_S and COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S's defaults (config.py), for callers without settings.
DEFAULT_LIMITS = TransferLimits(6 * 3600, 64 * 1024)
# models.lock `generator:` sources: name -> the function that writes the file. They need ComfyUI, so the runtime owns
# them (runtime/generators.py) and the callers above it pass them in.
Generators = Mapping[str, Callable[[Path], None]]
NO_GENERATORS: Generators = {}


def transfer_limits(settings: Settings) -> TransferLimits:
    return TransferLimits(settings.model_fetch_s, settings.model_fetch_min_bytes_per_s)


def _generate(entry: ModelEntry, dest: Path, generators: Generators) -> None:
    name = entry.source["generator"]
    if name not in generators:
        known = sorted(generators) or "none given here (the engine and `python -m comfybento models fetch` give them)"
        raise ModelLockError(f"{entry.path}: unknown generator {name!r}; known: {known}")
    generators[name](dest)


def _download_url(entry: ModelEntry, dest: Path, limits: TransferLimits) -> None:
    import httpx
    from rich.progress import Progress

    with Watchdog(limits) as watchdog, httpx.Client(follow_redirects=True, timeout=watchdog.remaining()) as client:
        try:
            with client.stream("GET", entry.source["url"], extensions={"trace": watchdog.trace}) as resp:
                resp.raise_for_status()
                with Progress() as progress, dest.open("wb") as fh:
                    task = progress.add_task(entry.path, total=entry.size)
                    for chunk in resp.iter_bytes():
                        fh.write(chunk)
                        progress.advance(task, len(chunk))
                        watchdog.count(len(chunk))
        except httpx.HTTPError:
            watchdog.check()  # the watchdog cut it off: TooSlow says why
            raise
    watchdog.check()


def _download_hf(entry: ModelEntry, dest: Path) -> None:
    """Written in place (local_dir) next to its target: no second copy in the Hugging Face cache."""
    from huggingface_hub import hf_hub_download

    src = entry.source
    written = Path(hf_hub_download(repo_id=src["hf"], filename=src.get("file") or Path(entry.path).name,
                                   revision=src.get("revision"), local_dir=dest.parent / "hf"))
    written.replace(dest)


def fetch_entry(entry: ModelEntry, models_dir: Path, limits: TransferLimits = DEFAULT_LIMITS,
                generators: Generators = NO_GENERATORS) -> str:
    """Make one file present and verified; returns 'ok', 'fetched' or raises ModelLockError."""
    target = entry.local_path(models_dir)
    if target.is_file() and verify_entry(entry, models_dir) is None:
        return "ok"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        part = Path(tmp) / target.name
        try:
            if "generator" in entry.source:
                _generate(entry, part, generators)
            elif "url" in entry.source:
                _download_url(entry, part, limits)
            else:
                _download_hf(entry, part)
        except ModelLockError:
            raise
        except TooSlow as exc:
            raise ModelLockError(f"{entry.path}: could not fetch from {entry.source}: the download {exc} (the limits: "
                                 f"COMFYBENTO_MODEL_FETCH_S={limits.total_s:g}, "
                                 f"COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S={limits.min_bytes_per_s})") from None
        except Exception as exc:  # network, auth, disk: say which file
            raise ModelLockError(f"{entry.path}: could not fetch from {entry.source}: {exc}") from exc
        digest = sha256_file(part)
        if digest != entry.sha256 or part.stat().st_size != entry.size:
            raise ModelLockError(
                f"{entry.path}: fetched file has sha256 {digest} and size {part.stat().st_size}, "
                f"models.lock says {entry.sha256} and {entry.size}; refusing to use it"
            )
        part.replace(target)
    return "fetched"


def fetch_all(lock: ModelLock, models_dir: Path, limits: TransferLimits = DEFAULT_LIMITS,
              generators: Generators = NO_GENERATORS) -> dict[str, str]:
    results = {}
    for entry in lock.entries:
        results[entry.path] = fetch_entry(entry, models_dir, limits, generators)
        log.info("%s: %s", entry.path, results[entry.path])
    return results
