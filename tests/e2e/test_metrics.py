"""/metrics as Prometheus reads it (prometheus_client's own parser), on the shared server.

Each series appears once (no per-process copies), the error counters are there at 0 before any error, the
engine exports its queue depth per workflow and its device's memory, and the front the job store's items by state.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_jobs import wait_job
from tests.helpers import TEST_WORKFLOWS

pytestmark = pytest.mark.e2e

WORKFLOWS = ("txt2img", *TEST_WORKFLOWS)
ITEM_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: str) -> tuple[Series, list[tuple[str, dict[str, str]]]]:
    """(value by (sample name, labels)), and every sample's (name, labels) in the order exported."""
    text = httpx.get(f"{server}/metrics", timeout=30).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return {(s.name, frozenset(s.labels.items())): s.value for s in samples}, [(s.name, s.labels) for s in samples]


def values(series: Series, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in series.items() if sample == name}


def one(series: Series, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in series, (name, labels, sorted(values(series, name)))
    return series[key]


def test_every_error_series_is_present_at_zero_before_any_error(server: str) -> None:
    series, _ = scrape(server)
    kinds = {dict(labels)["kind"] for labels in values(series, "comfybento_item_errors_total")}
    assert {"invalid", "node", "oom", "workflow", "unavailable", "cancelled", "internal"} <= kinds
    for workflow in WORKFLOWS:
        for kind in kinds:
            assert one(series, "comfybento_item_errors_total", workflow=workflow, kind=kind) >= 0
        # no test on this CPU server runs out of device memory: still 0, whatever ran before
        assert one(series, "comfybento_item_errors_total", workflow=workflow, kind="oom") == 0


def test_queue_depth_per_workflow_counts_waiting_requests_then_falls_to_zero(server: str) -> None:
    # three sizes: three shape keys, so one runs while the other two wait in the scheduler's queues
    bodies = [{"prompt": "queue depth", "width": size, "height": size, "steps": 12, "seed": size} for size in (64, 72, 80)]
    seen = 0.0
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(httpx.post, f"{server}/txt2img", json=body, timeout=300) for body in bodies]
        while not all(f.done() for f in futures):
            seen = max(seen, one(scrape(server)[0], "comfybento_queue_depth", workflow="txt2img", engine="0"))
            time.sleep(0.1)
    assert all(f.result().status_code == 200 for f in futures), [f.result().text[:200] for f in futures]
    assert seen >= 1
    series, _ = scrape(server)
    for workflow in WORKFLOWS:
        assert one(series, "comfybento_queue_depth", workflow=workflow, engine="0") == 0


def test_device_memory_is_exported_by_the_engine(server: str) -> None:
    assert httpx.post(f"{server}/txt2img", json={"prompt": "memory", "width": 64, "height": 64, "steps": 2},
                      timeout=300).status_code == 200
    series, _ = scrape(server)
    used, total = values(series, "comfybento_gpu_memory_used_bytes"), values(series, "comfybento_gpu_memory_total_bytes")
    assert len(used) == 1 and used.keys() == total.keys(), (used, total)
    (labels,) = used
    device = dict(labels)["device"]
    if device == "cpu":  # a CPU engine: documented as 0, not absent
        assert used[labels] == 0 and total[labels] == 0
    else:
        assert device.startswith("cuda:") and 0 < used[labels] <= total[labels]


def test_job_items_by_state_come_from_the_job_store(server: str) -> None:
    series, _ = scrape(server)
    before = {state: one(series, "comfybento_job_items", state=state) for state in ITEM_STATES}
    body = {"workflow": "txt2img", "base": {"width": 64, "height": 64, "steps": 2}, "fanout": {"prompt": ["a", "b"]}}
    resp = httpx.post(f"{server}/jobs", json=body, timeout=60)
    assert resp.status_code == 202, resp.text
    assert wait_job(server, resp.json()["id"])["state"] == "succeeded"
    deadline = time.monotonic() + 30  # sampled from the store every few seconds
    while True:
        series, _ = scrape(server)
        now = {state: one(series, "comfybento_job_items", state=state) for state in ITEM_STATES}
        if now["succeeded"] >= before["succeeded"] + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert now["succeeded"] >= before["succeeded"] + 2, (before, now)
    assert all(n >= 0 and n == int(n) for n in now.values()), now


def test_no_series_is_exported_once_per_process(server: str) -> None:
    _, samples = scrape(server)
    exported = Counter((name, frozenset(labels.items())) for name, labels in samples)
    assert [key for key, n in exported.items() if n > 1] == []
    # the same series from several processes differs only in `pid`: none of ours carries one
    ours = [(name, labels) for name, labels in samples if name.startswith("comfybento_")]
    assert ours and [(name, labels) for name, labels in ours if "pid" in labels] == []
    without_pid = Counter((name, frozenset((k, v) for k, v in labels.items() if k != "pid")) for name, labels in samples)
    assert [key for key, n in without_pid.items() if n > 1] == []
    for name in ("comfybento_disk_watermark_bytes", "comfybento_workflow_batchable", "comfybento_disk_free_bytes"):
        assert any(n == name for n, _ in ours), name
