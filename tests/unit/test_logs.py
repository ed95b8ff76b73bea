"""Logging on top of BentoML's server config (comfybento/logs.py): no line twice, the trace suffix optional."""

from __future__ import annotations

import io
import logging
import logging.config

import pytest
from bentoml._internal import log as bentoml_log
from opentelemetry.sdk.trace import TracerProvider

from comfybento import logs


@pytest.fixture
def bentoml_server_logging():
    """BentoML's own server logging config (what a `bentoml serve` worker runs), writing into a buffer."""
    saved = {name: (lg.handlers[:], lg.propagate, lg.level) for name, lg in
             [("", logging.getLogger()), *((n, logging.getLogger(n)) for n in ("uvicorn.error", "circus", "bentoml"))]}
    disabled = {name: lg.disabled for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    bentoml_log.configure_server_logging()
    stream = io.StringIO()
    for handler in logging.getLogger().handlers:
        handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    for name, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(name or None)
        lg.handlers[:], lg.propagate, lg.level = handlers, propagate, level
    for name, was in disabled.items():  # dictConfig disables every logger it does not name: the other tests need theirs
        logging.getLogger(name).disabled = was
    for lg in logging.Logger.manager.loggerDict.values():
        if isinstance(lg, logging.Logger) and lg.name.startswith("comfybento"):
            lg.propagate = True


def test_uvicorn_lines_are_printed_once(bentoml_server_logging):
    logs.configure()
    logs.uvicorn_at_info()
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    logging.getLogger("comfybento.test").info("ours")
    lines = bentoml_server_logging.getvalue().splitlines()
    assert [line for line in lines if "Started server process" in line] != [] and len(lines) == len(set(lines)) == 2, lines


@pytest.mark.parametrize("log_trace", [True, False])
def test_the_trace_suffix_is_a_setting(bentoml_server_logging, log_trace):
    logs.configure(log_trace)
    with TracerProvider().get_tracer("test").start_as_current_span("request"):  # a traced request, as BentoML's
        logging.getLogger(f"comfybento.test.trace{log_trace}").warning("a line")  # new: dictConfig disables old ones
    line = bentoml_server_logging.getvalue().strip()
    assert ("(trace=" in line) == log_trace and line.endswith(")" if log_trace else "a line"), line
