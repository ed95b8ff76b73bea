"""Start a real `bentoml serve` subprocess for the e2e tier."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import processes_with, wait_gone
from tests.helpers import ROOT, free_port, make_workflows_dir, service_env

BENTOML = str(Path(sys.executable).with_name("bentoml"))
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"comfybento-test-secret").decode()
JOB_ENV = {
    "COMFYBENTO_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "COMFYBENTO_WEBHOOK_ALLOWLIST": "127.0.0.1",
    "COMFYBENTO_WEBHOOK_BACKOFF_MS": "200",
    "COMFYBENTO_JOB_LEASE_S": "4",
    "COMFYBENTO_JOB_RETRY_BASE_MS": "200",
}


SERVER_MARKER = "COMFYBENTO_TEST_SERVER"


def start_server(env_overrides: dict[str, str], log_path: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`bentoml serve` in the background; every process of it carries proc.marker in SERVER_MARKER."""
    port = port or free_port()
    marker = uuid.uuid4().hex
    # Each server its own BentoML home: servers sharing one race on BentoML's task-result database.
    env = {**os.environ, "BENTOML_HOME": str(log_path.parent / f"{log_path.stem}-bentoml-home"), **env_overrides,
           SERVER_MARKER: marker}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [BENTOML, "serve", "service:ComfyBento", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    proc.marker = marker  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}"


def server_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The arbiter and every worker of a server started by start_server."""
    return processes_with(SERVER_MARKER, proc.marker)  # type: ignore[attr-defined]


def worker(proc: subprocess.Popen[bytes], service_name: str) -> psutil.Process:
    """The worker process of one service ('comfybento' is the front, 'comfybento-engine' the engine)."""
    for p in server_processes(proc):
        cmd = p.cmdline()
        if "--service-name" in cmd and cmd[cmd.index("--service-name") + 1] == service_name:
            return p
    raise AssertionError(f"no worker for {service_name}")


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"bentoml serve not ready after {timeout}s:\n{log_path.read_text()[-4000:]}")


def kill_server(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 of the whole server at once, a crash: the arbiter and every worker, no cleanup."""
    for p in [*server_processes(proc)]:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait()


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the arbiter, as a process manager stops it; whatever outlives it by 40 s is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    marker = getattr(proc, "marker", None)
    for p in wait_gone(SERVER_MARKER, marker, timeout=40) if marker else []:
        p.kill()


@contextlib.contextmanager
def serving(env: dict[str, str], root: Path) -> Iterator[str]:
    """A ready `bentoml serve` with these settings (log in root/serve.log), stopped on exit; yields its URL."""
    log_path = root / "serve.log"
    proc, url = start_server(env, log_path)
    try:
        wait_ready(proc, url, log_path)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serve")
    env = service_env(make_workflows_dir(root / "workflows"), root / "work")
    env["COMFYBENTO_MAX_QUEUE"] = "12"
    env["COMFYBENTO_MAX_BODY_BYTES"] = str(8 * 1024 * 1024)
    env["COMFYBENTO_MAX_LATENCY_MS"] = "120000"
    env["COMFYBENTO_MAX_EXECUTION_S"] = "600"  # a loaded CI machine runs the slow tests' batches for minutes (the budget has its own test)
    env.update(JOB_ENV)
    with serving(env, root) as url:
        yield url
