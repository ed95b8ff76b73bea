"""Check a model file once, before its first use: fetched if allowed, then sha256 against models.lock.

The engine checks every workflow's default models at startup; a model a request
chooses is checked here the first time a request asks for it. A failure is
remembered while the file stays as it was (same size and mtime, or still
missing), so later requests for that model fail at once with the same message:
no hashing, no fetching again and again. Replacing the file clears it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from comfybento.errors import ModelLockError
from comfybento.models.fetch import DEFAULT_LIMITS, NO_GENERATORS, Generators, fetch_entry
from comfybento.transfer import TransferLimits
from comfybento.models.lock import ModelEntry, verify_entry

log = logging.getLogger(__name__)

FileKey = tuple[int, int] | None  # (size, mtime_ns) of the file, None while it is missing


@dataclass
class _State:
    key: FileKey
    error: str | None  # None: verified


def file_key(path: Path) -> FileKey:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


class FirstUseCheck:
    """`ensure(entry)` returns when the file is present and matches models.lock, else raises ModelLockError naming it."""

    def __init__(self, models_dir: Path, fetch: bool, check_hash: bool = True, limits: TransferLimits = DEFAULT_LIMITS,
                 generators: Generators = NO_GENERATORS) -> None:
        self.models_dir = models_dir
        self.fetch = fetch
        self.limits = limits  # of a download by URL
        self.generators = generators  # of a `generator:` source (runtime/generators.py)
        self.check_hash = check_hash
        self._states: dict[str, _State] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def mark_verified(self, entries: Iterable[ModelEntry]) -> None:
        """Entries the caller has just checked itself (the defaults, at startup)."""
        for entry in entries:
            self._states[entry.path] = _State(file_key(entry.local_path(self.models_dir)), None)

    def ensure(self, entry: ModelEntry) -> None:
        state = self._current(entry)
        if state is None:
            with self._lock_for(entry):  # one thread hashes (or fetches); the others wait for its answer
                state = self._current(entry) or self._check(entry)
        if state.error is not None:
            raise ModelLockError(state.error)

    def _current(self, entry: ModelEntry) -> _State | None:
        """The remembered answer while the file is unchanged since it was given."""
        state = self._states.get(entry.path)
        if state is not None and state.key == file_key(entry.local_path(self.models_dir)):
            return state
        return None

    def _lock_for(self, entry: ModelEntry) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(entry.path, threading.Lock())

    def _check(self, entry: ModelEntry) -> _State:
        error = None
        try:
            if self.fetch:
                log.info("model %s: %s", entry.path, fetch_entry(entry, self.models_dir, self.limits, self.generators))
            problem = verify_entry(entry, self.models_dir, self.check_hash)
            if problem is not None:
                error = f"model file {problem}"
        except ModelLockError as exc:
            error = f"model file {exc}"
        if error is None:
            log.info("model %s: verified on first use", entry.path)
        else:
            log.error("model %s cannot be used (requests for it fail until the file changes): %s", entry.path, error)
        state = _State(file_key(entry.local_path(self.models_dir)), error)
        self._states[entry.path] = state
        return state
