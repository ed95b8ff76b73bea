"""Free disk space of the folders new work writes to, against one watermark.

The watched folders: the work folder (ComfyUI's input/output/temp), the local
output folder (job outputs, URL outputs, uploads, Comfy API v2 assets) and the
SQLite job store's folder; with S3 or Redis those are elsewhere and not watched.
Below `watermark_bytes` in any of them, new work that writes to disk is refused
with a StorageFull (507, or 503 + Retry-After where an API has no 507), jobs are
not leased, and /readyz says why; work that returns its outputs inline still runs.

`DiskWatcher.low()` samples free space at most every `interval_s` (statvfs is a
system call, answered from memory), so every request may ask. Crossing the
watermark either way logs one line; going below calls the `on_low` hooks (the
front's retention sweeps at once: jobs/retention.py), which `recheck` after
freeing. The `free_bytes` and `clock` arguments are the seam for tests. The
free bytes of each folder are exported as a gauge (comfybento_disk_free_bytes{folder}).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from comfybento.config import Settings
from comfybento.errors import StorageFull
from comfybento.limits import Limits

log = logging.getLogger(__name__)

WATERMARK_SETTING = "COMFYBENTO_MIN_FREE_BYTES"
MIN_AUTO_WATERMARK = 64 * 1024 * 1024


@dataclass(frozen=True)
class Folder:
    """A watched folder: its role (the metric's label, and what a client is told), path and the setting naming it."""

    role: str
    path: Path
    setting: str


@dataclass(frozen=True)
class Low:
    """A folder below the watermark, as last sampled."""

    folder: Folder
    free_bytes: int
    watermark_bytes: int

    def reason(self) -> str:
        return (f"the {self.folder.role} folder ({self.folder.setting}) has {size(self.free_bytes)} free, below the "
                f"watermark of {size(self.watermark_bytes)} ({WATERMARK_SETTING})")

    def error(self) -> StorageFull:
        return StorageFull(f"{self.reason()}: new work that writes to disk is refused until space is freed; retry later",
                           folder=self.folder.role, free_bytes=self.free_bytes, watermark_bytes=self.watermark_bytes)


def size(n: int) -> str:
    """Bytes for a person: 3.2 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def free_bytes_of(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of `path` (or of its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class DiskWatcher:
    def __init__(self, folders: Iterable[Folder], watermark_bytes: int, interval_s: float = 1.0,
                 free_bytes: Callable[[Path], int] = free_bytes_of, clock: Callable[[], float] = time.monotonic,
                 export: Callable[[str, int], None] | None = None) -> None:
        self.folders = tuple(folders)
        self.watermark_bytes = watermark_bytes
        self.interval_s = interval_s
        self._free_bytes = free_bytes
        self._clock = clock
        self._export = export
        self._lock = threading.Lock()
        self._sampled_at: float | None = None
        self._low: Low | None = None
        self.on_low: list[Callable[[Low], None]] = []
        self.free: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.watermark_bytes > 0 and bool(self.folders)

    def low(self) -> Low | None:
        """The first folder below the watermark (None: every one has room), sampled at most every interval_s."""
        if not self.enabled:
            return None
        crossed: Low | None = None
        with self._lock:
            t = self._clock()
            if self._sampled_at is None or t - self._sampled_at >= self.interval_s:
                self._sampled_at = t
                was_low, self._low = self._low is not None, self._sample()
                if was_low != (self._low is not None):
                    self._log_crossing()
                    crossed = self._low
            low = self._low
        for hook in self.on_low if crossed is not None else ():
            try:
                hook(crossed)  # type: ignore[arg-type]
            except Exception:
                log.exception("disk space: a hook for going below the watermark failed")
        return low

    def recheck(self) -> Low | None:
        """`low()` sampled now, whatever the interval (after space was freed: new work is accepted at once)."""
        with self._lock:
            self._sampled_at = None
        return self.low()

    def has_room(self) -> bool:
        return self.low() is None

    def require_room(self) -> None:
        """Raise StorageFull (naming the folder and its free space) while a folder is below the watermark."""
        low = self.low()
        if low is not None:
            raise low.error()

    def _sample(self) -> Low | None:
        first: Low | None = None
        for folder in self.folders:
            try:
                free = self._free_bytes(folder.path)
            except OSError as exc:
                log.warning("disk space: cannot read the free space of %s (%s): %s", folder.role, folder.path, exc)
                continue
            self.free[folder.role] = free
            if self._export is not None:
                self._export(folder.role, free)
            if free < self.watermark_bytes and first is None:
                first = Low(folder, free, self.watermark_bytes)
        return first

    def _log_crossing(self) -> None:
        """One line per crossing, naming every watched folder and its free space."""
        folders = ", ".join(f"{f.role} ({f.path}) {size(self.free[f.role])}" for f in self.folders if f.role in self.free)
        if self._low is not None:
            log.warning("disk space: below the watermark of %s (free: %s): new work that writes to disk is refused and "
                        "jobs wait until space is freed", size(self.watermark_bytes), folders)
        else:
            log.info("disk space: above the watermark of %s again (free: %s): new work is accepted",
                     size(self.watermark_bytes), folders)


# ---------------------------------------------------------------- the process's watcher

_installed: list[DiskWatcher] = []


def install(watcher: DiskWatcher) -> None:
    """Make `watcher` the one `require_room` asks (the entry service does, when it starts)."""
    _installed[:] = [watcher]


def require_room() -> None:
    """Raise StorageFull while a watched folder is below the watermark; a no-op before a watcher is installed."""
    if _installed:
        _installed[0].require_room()


def current() -> DiskWatcher | None:
    return _installed[0] if _installed else None


# ---------------------------------------------------------------- from the settings


def watched_folders(settings: Settings) -> list[Folder]:
    """The folders new work writes to on this machine: the work folder, and the output folder and job store when local."""
    found = [Folder("work", settings.work_dir, "COMFYBENTO_WORK_DIR")]
    if settings.storage == "local":
        found.append(Folder("outputs", settings.output_dir, "COMFYBENTO_OUTPUT_DIR"))
    if settings.jobs_backend == "sqlite":
        found.append(Folder("jobs", settings.jobs_db.parent, "COMFYBENTO_JOBS_DB"))
    return found


def largest_write(limits: Limits) -> int:
    """The most bytes one request under these limits can make a server write: its images uncompressed (RGBA, the worst
    a PNG gets), or one upload."""
    return max(limits.max_request_pixels * 4, limits.max_upload_bytes)


def watermark_for(settings: Settings, limits: Iterable[Limits]) -> int:
    """COMFYBENTO_MIN_FREE_BYTES, or (unset) room for two of the largest writes any served workflow can make, at
    least MIN_AUTO_WATERMARK."""
    if settings.min_free_bytes is not None:
        return settings.min_free_bytes
    return max(MIN_AUTO_WATERMARK, 2 * max((largest_write(x) for x in limits), default=largest_write(settings.limits)))


def watcher_for(settings: Settings, limits: Iterable[Limits], export: Callable[[str, int], None] | None = None) -> DiskWatcher:
    return DiskWatcher(watched_folders(settings), watermark_for(settings, limits), settings.disk_check_ms / 1000, export=export)
