"""Form ComfyUI executions from the items BentoML's adaptive batcher hands us.

Contract: `Batcher.run(items, key, can_batch, execute, max_batch)` returns one
result per item, in order: whatever `execute` returned for it, or the
exception that made it fail. Items with equal keys (and `can_batch`) share an
execution, at most `max_batch` (or the remembered largest size that fitted
in memory for that key) at a time. An OutOfMemory error splits the execution
in halves and retries; any other error of a shared execution reruns its items
one by one, so one bad item does not fail its neighbours.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from comfybento.errors import OutOfMemory

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self) -> None:
        self._fits: dict[str, int] = {}
        self._largest_ok: dict[str, int] = {}
        self._lock = threading.Lock()

    def largest_fit(self, key: str) -> int | None:
        """The largest batch known to fit in memory for this key, if one ever ran out."""
        with self._lock:
            return self._fits.get(key)

    def _remember_oom(self, key: str, failed_size: int) -> None:
        """A batch of failed_size ran out of memory: cap the key below it (at least the largest that ran)."""
        with self._lock:
            cap = max(self._largest_ok.get(key, 0), failed_size // 2, 1)
            self._fits[key] = min(cap, self._fits.get(key, cap))
            cap = self._fits[key]
        log.warning("out of memory at batch %d: batches for %s are capped at %d", failed_size, key, cap)

    def _remember_ok(self, key: str, size: int) -> None:
        with self._lock:
            self._largest_ok[key] = max(size, self._largest_ok.get(key, 0))

    def groups(self, items: Sequence[T], key: Callable[[T], str], can_batch: Callable[[T], bool], max_batch: int) -> list[tuple[str, list[int]]]:
        """(key, item indexes) for each execution, in order of first arrival."""
        by_key: dict[str, list[int]] = {}
        solo: list[tuple[str, list[int]]] = []
        for index, item in enumerate(items):
            k = key(item)
            if can_batch(item):
                by_key.setdefault(k, []).append(index)
            else:
                solo.append((k, [index]))
        out: list[tuple[str, list[int]]] = []
        for k, indexes in by_key.items():
            size = max(1, min(max_batch, self.largest_fit(k) or max_batch))
            out.extend((k, indexes[i:i + size]) for i in range(0, len(indexes), size))
        return out + solo

    def run(self, items: Sequence[T], key: Callable[[T], str], can_batch: Callable[[T], bool],
            execute: Callable[[list[T]], list[R]], max_batch: int) -> list[R | Exception]:
        results: list[R | Exception | None] = [None] * len(items)
        for k, indexes in self.groups(items, key, can_batch, max_batch):
            for index, result in zip(indexes, self._run_chunk(k, [items[i] for i in indexes], execute), strict=True):
                results[index] = result
        return [r if r is not None else RuntimeError("item was not executed") for r in results]

    def _run_chunk(self, k: str, chunk: list[T], execute: Callable[[list[T]], list[R]]) -> list[R | Exception]:
        try:
            results: list[R | Exception] = list(execute(chunk))
            self._remember_ok(k, len(chunk))
            return results
        except OutOfMemory as exc:
            if len(chunk) == 1:
                return [exc]
            half = len(chunk) // 2
            self._remember_oom(k, len(chunk))
            return self._run_chunk(k, chunk[:half], execute) + self._run_chunk(k, chunk[half:], execute)
        except Exception as exc:
            if len(chunk) == 1:
                return [exc]
            log.info("a shared execution of %d items failed (%s); running them one by one", len(chunk), exc)
            return [r for item in chunk for r in self._run_chunk(k, [item], execute)]
