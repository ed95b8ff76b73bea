"""Shared fixtures: test graph paths, and the check that the suite leaves no process behind."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).resolve().parent
GRAPHS = TESTS / "graphs"
ROOT = TESTS.parent
# Every process this test session starts inherits this variable (servers, their workers, redis, moto ...).
RUN_MARKER = "COMFYBENTO_TEST_RUN"


def processes_with(name: str, value: str) -> list[psutil.Process]:
    """Live processes (not this one) whose environment has name=value."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(name) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def wait_gone(name: str, value: str, timeout: float) -> list[psutil.Process]:
    """Wait until no process carries name=value; returns those still alive after timeout."""
    deadline = time.monotonic() + timeout
    while (alive := processes_with(name, value)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    token = uuid.uuid4().hex
    os.environ[RUN_MARKER] = token
    yield
    alive = wait_gone(RUN_MARKER, token, timeout=40)
    described = [" ".join(p.cmdline())[:160] for p in alive if p.is_running()]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert not described, f"the test suite left {len(described)} processes running: {described}"


@pytest.fixture
def graphs_dir() -> Path:
    return GRAPHS
