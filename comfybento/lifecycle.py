"""Process lifecycle of BentoML workers: drain on SIGTERM, never outlive the arbiter, fail startup once.

BentoML runs each worker in a process group of its own under a circus arbiter
that waits up to a day (graceful_timeout=86400) for a worker to exit, and a
worker survives its arbiter's `kill -9`. So every worker here:

- on SIGTERM (uvicorn's graceful shutdown), runs the drain hooks (the engine
  finishes its queue, up to COMFYBENTO_DRAIN_TIMEOUT_S, then fails the rest
  with 503) and exits at the latest 5 s after the drain timeout;
- watches its parent: when the arbiter is gone, it shuts down the same way;
- on a startup failure, logs it once and stops the arbiter, instead of being
  restarted forever.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GRACE_S = 5.0
_hooks: list[Callable[[], None]] = []
_started = threading.Event()
_installed = {"uvicorn": False, "watchdog": False}
_drain_s = [20.0]


def in_worker() -> bool:
    """True in a BentoML worker process (not in the arbiter, `bentoml build` or a test process)."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", "") == "_bentoml_impl.worker.service"


def install(drain_s: float) -> None:
    """Hook uvicorn's signal handling; call at import time in the worker, before uvicorn starts."""
    _drain_s[0] = float(drain_s)
    if _installed["uvicorn"]:
        return
    import uvicorn

    original = uvicorn.Server.handle_exit

    def handle_exit(self: Any, sig: int, frame: Any) -> None:
        begin_shutdown(f"signal {signal.Signals(sig).name}")
        original(self, sig, frame)

    uvicorn.Server.handle_exit = handle_exit  # type: ignore[method-assign]
    _installed["uvicorn"] = True


def on_shutdown(hook: Callable[[], None]) -> None:
    """Run hook (in a thread of its own) when shutdown begins; it may block up to the drain timeout."""
    _hooks.append(hook)


def watch_parent() -> None:
    """Shut down when the arbiter that started this worker is gone."""
    if _installed["watchdog"]:
        return
    _installed["watchdog"] = True
    parent = os.getppid()

    def watch() -> None:
        while not _started.is_set():
            time.sleep(1.0)
            if os.getppid() != parent:
                begin_shutdown(f"the arbiter (pid {parent}) is gone")
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful shutdown
                return

    threading.Thread(target=watch, name="comfybento-parent-watch", daemon=True).start()


def begin_shutdown(reason: str) -> None:
    if _started.is_set():
        return
    _started.set()
    deadline = _drain_s[0] + GRACE_S
    log.info("pid %d shutting down (%s): draining for up to %.0fs", os.getpid(), reason, _drain_s[0])
    for hook in _hooks:
        threading.Thread(target=hook, name="comfybento-drain", daemon=True).start()

    def hard_exit() -> None:
        time.sleep(deadline)
        log.warning("pid %d still running %.0fs after shutdown began; exiting now", os.getpid(), deadline)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=hard_exit, name="comfybento-exit-deadline", daemon=True).start()


def fail_startup(role: str, exc: BaseException) -> None:
    """Log a startup failure once and stop the whole service (the arbiter would restart us forever)."""
    log.error("comfybento %s failed to start: %s", role, exc)
    if in_worker():
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(2.0)  # let the arbiter begin its stop before this worker exits, so it is not respawned
