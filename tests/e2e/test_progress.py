"""Live progress against the real service: POST /<workflow>/stream and GET /jobs/{id}/events, read as a client reads SSE."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from comfybento.front.stream import JOB_EVENTS, REQUEST_EVENTS

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "cancelled"}


def sse_frames(resp: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each frame as it arrives; keepalive comments are skipped."""
    name, data = "message", []
    for line in resp.iter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def stream(server: str, workflow: str, body: dict[str, Any], timeout: float = 180) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream("POST", f"{server}/{workflow}/stream", json=body, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return list(sse_frames(resp))


def test_a_stream_goes_queued_started_progress_output_done(server):
    frames = stream(server, "txt2img", {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 7})
    kinds = [k for k, _ in frames]
    assert kinds[0] == "queued" and isinstance(frames[0][1]["position"], int)
    assert kinds[1] == "started" and frames[1][1]["batch_size"] >= 1
    steps = [d["value"] for k, d in frames if k == "progress"]
    assert steps == [1, 2, 3] and all(d["max"] == 3 for k, d in frames if k == "progress")
    assert {d["node_id"] for k, d in frames if k == "progress"} == {"3"}  # the sampling node: KSampler "3" of workflows/txt2img.json
    outputs = [d for k, d in frames if k == "output"]
    assert len(outputs) == 1 and kinds.index("output") > max(i for i, k in enumerate(kinds) if k == "progress")
    image = Image.open(io.BytesIO(base64.b64decode(outputs[0]["data"])))
    assert image.format == "PNG" and image.size == (64, 64) and outputs[0]["media_type"] == "image/png"
    assert kinds[-1] == "done" and kinds.count("done") == 1 and "failed" not in kinds
    done = frames[-1][1]
    assert done["workflow"] == "txt2img" and done["seed"] == 7 and done["timings"]["batch_size"] >= 1
    for kind, data in frames:  # every frame is one of the typed events of the OpenAPI document
        assert data["event"] == kind
        REQUEST_EVENTS.validate_python(data)


def test_outputs_as_urls_and_every_output_of_a_two_output_workflow(server):
    frames = stream(server, "two_outputs", {"steps": 1, "width": 64, "height": 64, "output_delivery": "url"})
    outputs = [d for k, d in frames if k == "output"]
    assert len(outputs) == 2 and frames[-1][0] == "done"
    for out in outputs:
        assert out["data"] is None
        assert httpx.get(out["url"], timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_field_is_a_4xx_naming_it_before_any_stream(server):
    resp = httpx.post(f"{server}/txt2img/stream", json={"steps": 0}, timeout=30)
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("application/json")
    assert any(e["loc"][-1] == "steps" for e in resp.json()["detail"])
    too_big = httpx.post(f"{server}/txt2img/stream", json={"width": 1024, "height": 1024}, timeout=30)
    assert too_big.status_code == 413 and "pixels" in too_big.json()["error"].lower()


def test_a_failing_node_ends_the_stream_with_one_failed_event(server):
    frames = stream(server, "failing", {"steps": 1, "width": 64, "height": 64, "trigger": "boom"})
    assert frames[-1][0] == "failed" and [k for k, _ in frames].count("failed") == 1
    failed = frames[-1][1]
    assert failed["status"] >= 400 and failed["error_kind"] == "node" and failed["node_id"] == "10"


def _cancelled(server: str) -> float:
    metrics = httpx.get(f"{server}/metrics", timeout=30).text
    found = re.search(r'comfybento_item_errors_total\{kind="cancelled",workflow="txt2img"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_leaves_the_stream_stops_its_work(server):
    before = _cancelled(server)
    slow = {"prompt": "leaving the stream", "width": 448, "height": 448, "steps": 150, "seed": 5}
    with httpx.stream("POST", f"{server}/txt2img/stream", json=slow, timeout=60) as resp:
        for kind, _ in sse_frames(resp):
            if kind == "progress":
                break  # running: leave mid-run
    deadline = time.monotonic() + 20
    while _cancelled(server) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cancelled(server) == before + 1  # interrupted mid-run, not run to its end


def test_stream_events_are_typed_in_the_openapi(server):
    spec = httpx.get(f"{server}/docs.json", timeout=30).json()
    ok = spec["paths"]["/txt2img/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert ok["discriminator"]["propertyName"] == "event"
    assert set(ok["discriminator"]["mapping"]) == {"queued", "started", "progress", "preview", "output", "done", "failed"}
    assert spec["paths"]["/txt2img/stream"]["post"]["operationId"] == "txt2imgStream"
    schemas = spec["components"]["schemas"]
    assert schemas["ProgressEvent"]["required"] == ["event", "value", "max", "node_id"]


def test_a_job_stream_tells_each_item_and_ends_with_a_terminal_job_event(server):
    body = {"workflow": "txt2img", "base": {"steps": 2, "width": 64, "height": 64}, "fanout": {"seed": [1, 2, 3]}}
    job = httpx.post(f"{server}/jobs", json=body, timeout=60).json()
    with httpx.stream("GET", f"{server}/jobs/{job['id']}/events", timeout=240) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        frames = list(sse_frames(resp))
    for kind, data in frames:
        assert data["event"] == kind
        JOB_EVENTS.validate_python(data)
    assert frames[0][0] == "job" and frames[0][1]["id"] == job["id"]
    assert frames[-1][0] == "job" and frames[-1][1]["state"] == "succeeded" and frames[-1][1]["counts"]["succeeded"] == 3
    assert [k for k, d in frames if k == "job" and d["state"] in TERMINAL] == ["job"]  # one terminal job event, the last
    items = sorted((d for k, d in frames if k == "item"), key=lambda d: d["index"])
    assert [(d["index"], d["status"]) for d in items] == [(0, "succeeded"), (1, "succeeded"), (2, "succeeded")]
    for item in items:
        assert httpx.get(item["outputs"][0]["url"], timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"
    progress = [d for k, d in frames if k == "progress"]
    assert progress and {d["index"] for d in progress} <= {0, 1, 2} and all(d["max"] == 2 for d in progress)


def test_a_finished_job_stream_replays_its_items_and_an_unknown_job_is_a_404(server):
    job = httpx.post(f"{server}/jobs", json={"workflow": "txt2img", "items": [{"steps": 1, "width": 64, "height": 64}]},
                     timeout=60).json()
    deadline = time.monotonic() + 120
    while httpx.get(f"{server}/jobs/{job['id']}", timeout=30).json()["state"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.3)
    with httpx.stream("GET", f"{server}/jobs/{job['id']}/events", timeout=60) as resp:
        frames = list(sse_frames(resp))
    assert [k for k, _ in frames] == ["job", "item", "job"] and frames[1][1]["status"] == "succeeded"
    assert frames[-1][1]["state"] == "succeeded"
    missing = httpx.get(f"{server}/jobs/no-such-job/events", timeout=30)
    assert missing.status_code == 404 and "no-such-job" in missing.json()["error"]
