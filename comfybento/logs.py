"""The service's logging, set once per process on top of BentoML's (service.py calls `configure`).

- Our loggers ("comfybento") at INFO: under `bentoml serve` the root logger is at WARNING.
- No line twice: BentoML gives "uvicorn.error" (and "circus") the root's own handler and lets them propagate to the
  root too, so every line of theirs that passes the root's level was printed twice. A logger that holds one of the
  root's handlers stops propagating.
- The trace suffix BentoML appends to every line (" (trace=...,span=...)") is dropped when `log_trace` is off
  (COMFYBENTO_LOG_TRACE=0).
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # outside BentoML's servers (no handler of its own)


class _NoTrace(logging.Filter):
    """Runs after BentoML's TraceRecordFilter on a handler: blanks the suffix it computed."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_msg = ""
        return True


def configure(log_trace: bool = True) -> None:
    """Levels, no duplicated lines, the trace suffix on or off (idempotent)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)  # no-op where BentoML already gave the root a handler
    logging.getLogger("comfybento").setLevel(logging.INFO)
    root = logging.getLogger()
    no_duplicates(root)
    if not log_trace:
        for handler in root.handlers:
            if not any(isinstance(f, _NoTrace) for f in handler.filters):
                handler.addFilter(_NoTrace())


def no_duplicates(root: logging.Logger) -> None:
    """Every logger that already writes to one of the root's handlers stops propagating to the root."""
    shared = set(root.handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.propagate and shared.intersection(logger.handlers):
            logger.propagate = False


def uvicorn_at_info() -> None:
    """uvicorn's own lines at INFO ("Waiting for connections to close" on stop), each once."""
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    no_duplicates(logging.getLogger())
