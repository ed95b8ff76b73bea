"""Start a real `bentoml serve` subprocess for the e2e tier."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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


def start_server(env_overrides: dict[str, str], log_path: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = port or free_port()
    # Each server its own BentoML home: servers sharing one race on BentoML's task-result database.
    env = {**os.environ, "BENTOML_HOME": str(log_path.parent / f"{log_path.stem}-bentoml-home"), **env_overrides}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [BENTOML, "serve", "service:ComfyBento", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


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
    """kill -9 of the whole server: arbiter and every worker, no cleanup."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serve")
    env = service_env(make_workflows_dir(root / "workflows"), root / "work")
    env["COMFYBENTO_MAX_QUEUE"] = "12"
    env["COMFYBENTO_MAX_LATENCY_MS"] = "120000"
    env.update(JOB_ENV)
    log_path = root / "serve.log"
    proc, url = start_server(env, log_path)
    try:
        wait_ready(proc, url, log_path)
        yield url
    finally:
        stop_server(proc)
