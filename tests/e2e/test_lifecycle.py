"""Process roles and lifecycle of a real `bentoml serve`: only the engine holds torch, stops leave nothing behind."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import wait_gone
from tests.e2e.conftest import SERVER_MARKER, server_processes, start_server, stop_server, wait_ready, worker
from tests.helpers import GRAPHS, make_workflows_dir, service_env

pytestmark = pytest.mark.e2e
MB = 1024 * 1024
# Long enough to be in flight when the engine is killed or SIGTERM comes (both follow its start at once), short
# enough to finish within the 20 s drain on a loaded 2-core machine.
SLOW = {"prompt": "slow", "width": 128, "height": 128, "steps": 24}


def _start(tmp_path, extra_env=None, workflows=None):
    env = service_env(workflows or make_workflows_dir(tmp_path / "workflows", extra=()), tmp_path / "work")
    env.update(extra_env or {})
    log = tmp_path / "serve.log"
    proc, url = start_server(env, log)
    return proc, url, log


def _started_requests(url: str) -> float:
    """How many requests the engine has started executing (from the Prometheus metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text)
    return sum(s.value for f in families for s in f.samples if s.name == "comfybento_queue_wait_seconds_count")


def _submit_slow_and_wait_started(pool, url):
    before = _started_requests(url)
    pending = pool.submit(httpx.post, f"{url}/txt2img", json=SLOW, timeout=120)
    deadline = time.monotonic() + 60
    while _started_requests(url) <= before:
        assert time.monotonic() < deadline and not pending.done(), "the slow request never started"
        time.sleep(0.1)
    return pending


def _maps_torch(process) -> bool:
    return "libtorch" in open(f"/proc/{process.pid}/maps").read()


def _probe_until_ready(proc, url, timeout: float = 240) -> list[int]:
    """/readyz while the service starts: every probe must get an answer (503 until the engine is up)."""
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while not statuses or statuses[-1] != 200:
        assert time.monotonic() < deadline and proc.poll() is None, statuses[-5:]
        try:
            statuses.append(httpx.get(f"{url}/readyz", timeout=10).status_code)
        except httpx.ConnectError:  # the arbiter is not listening yet
            time.sleep(0.2)
    return statuses


def test_roles_engine_restart_and_sigterm_drain(tmp_path):
    proc, url, log = _start(tmp_path)
    try:
        statuses = _probe_until_ready(proc, url)  # a probe that hung would raise httpx.ReadTimeout
        assert set(statuses) <= {503, 200} and 503 in statuses, statuses
        assert httpx.post(f"{url}/txt2img", json={"steps": 2, "width": 64, "height": 64}, timeout=120).status_code == 200

        # Only the engine imports torch; the arbiter and the front are a light web tier.
        arbiter, front, engine = next(p for p in server_processes(proc) if p.pid == proc.pid), worker(proc, "comfybento"), \
            worker(proc, "comfybento-engine")
        assert _maps_torch(engine) and not _maps_torch(front) and not _maps_torch(arbiter)
        assert front.memory_info().rss < 400 * MB and arbiter.memory_info().rss < 400 * MB, \
            (front.memory_info().rss // MB, arbiter.memory_info().rss // MB)

        # kill -9 of the engine: the caller in flight gets a clear 503 at once; the engine comes back.
        with ThreadPoolExecutor(1) as pool:
            pending = _submit_slow_and_wait_started(pool, url)
            engine.kill()
            resp = pending.result()
        assert resp.status_code == 503 and "retry" in resp.json()["error"] and resp.headers.get("retry-after")
        deadline = time.monotonic() + 120
        while httpx.post(f"{url}/txt2img", json={"steps": 2, "width": 64, "height": 64}, timeout=120).status_code != 200:
            assert time.monotonic() < deadline, "the engine did not come back"
            time.sleep(1)
        assert worker(proc, "comfybento-engine").pid != engine.pid

        # SIGTERM: the request in flight finishes, then every process exits within 30 s.
        with ThreadPoolExecutor(1) as pool:
            pending = _submit_slow_and_wait_started(pool, url)
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            resp = pending.result()
        assert resp.status_code == 200 and resp.json()["outputs"]
        assert not wait_gone(SERVER_MARKER, proc.marker, timeout=30), [p.cmdline() for p in server_processes(proc)]
        assert time.monotonic() - stopped_at < 30
        assert proc.wait(timeout=5) is not None
        assert "still running" not in log.read_text()  # every process stopped by itself, none by the hard deadline
    finally:
        stop_server(proc)


def test_workers_exit_when_their_arbiter_is_killed(tmp_path):
    proc, url, log = _start(tmp_path)
    try:
        wait_ready(proc, url, log)
        workers = [p for p in server_processes(proc) if p.pid != proc.pid]
        assert len(workers) == 2
        proc.kill()  # kill -9 of the arbiter alone: BentoML's workers live in process groups of their own
        proc.wait()
        assert not wait_gone(SERVER_MARKER, proc.marker, timeout=30), [p.cmdline() for p in server_processes(proc)]
        assert "the arbiter" in log.read_text() and "is gone" in log.read_text()
    finally:
        stop_server(proc)


def test_a_failing_warm_up_stops_the_service_once(tmp_path):
    workflows = make_workflows_dir(tmp_path / "workflows", extra=())
    (workflows / "boom.json").write_text((GRAPHS / "failing.json").read_text().replace('"text": "fine"', '"text": "boom"'))
    proc, _, log = _start(tmp_path, workflows=workflows)
    try:
        proc.wait(timeout=240)  # the engine's warm-up fails: the whole service stops instead of restarting forever
        assert not wait_gone(SERVER_MARKER, proc.marker, timeout=30)
        text = log.read_text()
        assert text.count("comfybento engine failed to start") == 1
        assert "warm-up run with the graph's own values failed" in text and "node 10 (RaiseOnText)" in text
    finally:
        stop_server(proc)
