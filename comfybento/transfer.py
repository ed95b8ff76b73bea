"""Every outbound transfer within a total deadline and a minimum rate (input files and models by URL, webhooks).

A server that sends its headers and then a byte a second must not hold a fetch
for longer than its deadline, nor hold it at all once it is clearly too slow:

- the deadline covers the whole transfer, connection, headers and body, every
  redirect included (the caller starts one `Watchdog` per fetch);
- the minimum rate is curl's `--speed-limit`/`--speed-time`: fewer than
  `min_bytes_per_s` times `RATE_WINDOW_S` bytes in any `RATE_WINDOW_S` seconds
  (waiting for the headers counts as nothing received) ends it.

A blocking read cannot be given a new timeout once it waits, so a watchdog
thread shuts the connection's socket down when either limit passes (it learns
the socket from httpcore's connection trace); the reading thread then fails
and `check` says why. The async variant (webhooks) reads under asyncio's own
deadline instead.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

RATE_WINDOW_S = 5.0  # the minimum rate is measured over this many seconds
_TICK_S = 0.1


@dataclass(frozen=True)
class TransferLimits:
    # Seconds for the whole transfer (connection, headers, body, redirects).
    total_s: float
    # Bytes a second the transfer must keep up over any RATE_WINDOW_S seconds (0: no minimum).
    min_bytes_per_s: int = 0
    window_s: float = RATE_WINDOW_S


class TooSlow(Exception):
    """A transfer passed its deadline (`rate` False) or fell below its minimum rate; the message says which."""

    def __init__(self, message: str, rate: bool = False) -> None:
        super().__init__(message)
        self.rate = rate


class _Clock:
    """Bytes received over time, against the deadline and the minimum rate."""

    def __init__(self, limits: TransferLimits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self.received = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def remaining(self) -> float:
        return self.limits.total_s - (time.monotonic() - self.started)

    def count(self, n: int) -> None:
        self.received += n

    def violation(self) -> TooSlow | None:
        """Why the transfer must end now, or None."""
        at = time.monotonic()
        if at - self.started >= self.limits.total_s:
            return TooSlow(f"was not complete within {self.limits.total_s:g} s")
        self._samples.append((at, self.received))
        window = self.limits.window_s
        while len(self._samples) > 1 and self._samples[1][0] <= at - window:
            self._samples.popleft()
        since, before = self._samples[0]
        if self.limits.min_bytes_per_s and at - since >= window and self.received - before < self.limits.min_bytes_per_s * window:
            return TooSlow(f"came at fewer than {self.limits.min_bytes_per_s} bytes/s over {window:g} s "
                           f"({self.received - before} bytes)", rate=True)
        return None


class Watchdog:
    """One blocking fetch's limits: pass `trace` as the request's "trace" extension, `count` each chunk read.

    Used as a context manager around the whole fetch. When a limit passes, the connection is shut down; `check`
    (after each chunk, and when a read fails) raises TooSlow naming the limit.
    """

    def __init__(self, limits: TransferLimits) -> None:
        self._clock = _Clock(limits)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.broken: TooSlow | None = None
        self._thread = threading.Thread(target=self._watch, name="comfybento-transfer-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def remaining(self) -> float:
        return max(0.001, self._clock.remaining())

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: remember each new connection's socket (shut at once if already too late)."""
        if event in ("connection.connect_tcp.complete", "connection.connect_unix_socket.complete"):
            sock = info["return_value"].get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.append(sock)
                    if self.broken:
                        _shut(sock)

    def count(self, n: int) -> None:
        self._clock.count(n)
        self.check()

    def check(self) -> None:
        reason = self.broken or self._clock.violation()
        if reason:
            raise reason

    def _watch(self) -> None:
        while not self._stop.wait(_TICK_S):
            reason = self._clock.violation()
            if reason:
                with self._lock:
                    self.broken = reason
                    for sock in self._sockets:
                        _shut(sock)
                return


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it (close() alone does not)
    except OSError:
        pass


async def read_limited(chunks: AsyncIterator[bytes], limits: TransferLimits, max_bytes: int) -> bytes:
    """The first max_bytes of an async body, read within the minimum rate (the caller's asyncio.timeout is the deadline)."""
    clock = _Clock(limits)
    body = bytearray()
    silence = limits.window_s if limits.min_bytes_per_s else None  # nothing for a whole window: below any minimum
    while len(body) < max_bytes:
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout=silence)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise TooSlow(f"came at fewer than {limits.min_bytes_per_s} bytes/s over {limits.window_s:g} s", rate=True) from None
        clock.count(len(chunk))
        body += chunk
        reason = clock.violation()
        if reason:
            raise reason
    return bytes(body[:max_bytes])
