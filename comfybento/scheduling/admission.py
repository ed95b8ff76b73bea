"""Admission control: a bounded number of requests per workflow, then 503 + Retry-After."""

from __future__ import annotations

import threading


class Admission:
    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_enter(self, key: str) -> bool | None:
        """True if admitted (call leave() when done); None if the queue for key is full."""
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.limit:
                return None
            self._counts[key] = count + 1
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            self._counts[key] = max(0, self._counts.get(key, 0) - 1)

    def in_flight(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)
