"""One engine per GPU (COMFYBENTO_GPUS) under a real `bentoml serve`: on this CPU machine, two engine workers, each a CPU
"device", serving one workflow. Under load both are busy (the per-engine metrics say so), readiness waits for both, and
a `kill -9` of one engine with requests in flight is absorbed by the other: every caller gets its image, and only the
killed worker restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import start_server, stop_server, wait_ready, worker
from tests.helpers import make_workflows_dir, png_array, service_env

pytestmark = pytest.mark.e2e
LOAD = {"steps": 12, "width": 96, "height": 96}  # long enough to be in flight when an engine is killed


def _metric(url: str, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text)
    return sum(s.value for f in families for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Any, str]]:
    root = tmp_path_factory.mktemp("gpus")
    env = {**service_env(make_workflows_dir(root / "workflows", extra=()), root / "work"), "COMFYBENTO_GPUS": "2"}
    log = root / "serve.log"
    proc, url = start_server(env, log)
    try:
        wait_ready(proc, url, log)
        yield proc, url
    finally:
        stop_server(proc)


def _generate(url: str, seed: int) -> httpx.Response:
    return httpx.post(f"{url}/txt2img", json={**LOAD, "prompt": f"gpu {seed}", "seed": seed}, timeout=300)


def test_two_engines_share_the_load_and_each_is_busy(served):
    proc, url = served
    engines = [worker(proc, "comfybento-engine-0"), worker(proc, "comfybento-engine-1")]
    assert [e.environ()["COMFYBENTO_ENGINE_ID"] for e in engines] == ["0", "1"]
    busy = [_metric(url, "comfybento_engine_busy_seconds_total", engine=e) for e in ("0", "1")]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda s: _generate(url, s), range(12)))
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers if a.status_code != 200]
    sent = [_metric(url, "comfybento_engine_requests_total", engine=e, outcome="ok") for e in ("0", "1")]
    assert sum(sent) >= 12 and min(sent) >= 4, sent  # spread by queue depth: neither engine got (nearly) all
    after = [_metric(url, "comfybento_engine_busy_seconds_total", engine=e) for e in ("0", "1")]
    assert all(a > b for a, b in zip(after, busy, strict=True)), (busy, after)  # both executors ran batches
    assert max(a.json()["timings"]["batch_size"] for a in answers) > 1  # and each still batches its share


def test_a_killed_engine_is_absorbed_by_the_other_and_restarts_alone(served):
    proc, url = served
    victim, survivor = worker(proc, "comfybento-engine-1"), worker(proc, "comfybento-engine-0")
    moved = _metric(url, "comfybento_engine_requests_total", engine="1", outcome="moved")
    with ThreadPoolExecutor(10) as pool:
        pending = [pool.submit(_generate, url, 100 + s) for s in range(10)]
        deadline = time.monotonic() + 120
        while _metric(url, "comfybento_engine_in_flight", engine="1") < 1:
            assert time.monotonic() < deadline and not all(p.done() for p in pending), "engine 1 never got work"
            time.sleep(0.05)
        victim.kill()  # kill -9, with requests queued or running on it
        answers = [p.result() for p in pending]
    assert all(a.status_code == 200 for a in answers), [a.text[:300] for a in answers if a.status_code != 200]
    assert all(png_array(a.json()["outputs"][0]["data"]).shape[:2] == (96, 96) for a in answers)
    assert _metric(url, "comfybento_engine_requests_total", engine="1", outcome="moved") > moved
    deadline = time.monotonic() + 180  # the arbiter restarts the killed worker alone; ready again once it is warm
    while True:
        try:
            if worker(proc, "comfybento-engine-1").pid != victim.pid and httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                break
        except AssertionError:  # no engine-1 worker yet
            pass
        assert time.monotonic() < deadline, "engine 1 did not come back"
        time.sleep(1)
    assert worker(proc, "comfybento-engine-0").pid == survivor.pid
    assert _generate(url, 999).status_code == 200
