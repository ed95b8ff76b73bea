"""Every error answer of comfybento's own routes in the one shape (error, error_kind, request_id), on a real server;
its startup log with no line twice."""

from __future__ import annotations

import re
from collections import Counter

import httpx
import pytest


def _shape(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert {"error", "error_kind", "request_id"} <= body.keys(), body
    assert body["error_kind"] == kind and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_a_typed_endpoints_field_error_has_the_shape_and_names_the_field(server):
    response = httpx.post(f"{server}/txt2img", json={"prompt": "x", "steps": "many"}, headers={"X-Request-ID": "shape-1"})
    body = _shape(response, 400, "invalid")
    assert body["request_id"] == "shape-1"
    assert body["error"].startswith("steps: ") and [e["loc"] for e in body["detail"]] == [["steps"]]
    assert {"loc", "msg", "type"} <= body["detail"][0].keys()


def test_a_jobs_field_error_has_the_shape(server):
    body = _shape(httpx.post(f"{server}/jobs", json={"workflow": "txt2img", "items": "x"}), 422, "invalid")
    assert "items" in body["error"] and body["detail"]


@pytest.mark.parametrize("path", ["/no-such-route", "/txt2img/no-such-output/deeper", "/jobs/x/y/z"])
def test_an_unknown_route_is_a_json_404(server, path):
    body = _shape(httpx.get(f"{server}{path}"), 404, "not_found")
    assert path in body["error"]


def test_a_wrong_method_is_a_json_405_with_allow(server):
    response = httpx.get(f"{server}/txt2img")
    _shape(response, 405, "invalid")
    assert response.headers["allow"] == "POST"


def test_the_compatibility_apis_keep_their_contracts(server):
    v2 = httpx.post(f"{server}/api/v2/jobs", json={"nope": 1})
    assert isinstance(v2.json()["error"], dict)  # the spec's envelope, not ours


def test_startup_logs_no_line_twice(server, tmp_path_factory):
    port = server.rsplit(":", 1)[1]
    logs = [p.read_text(errors="replace") for p in tmp_path_factory.getbasetemp().glob("serve*/serve.log")]
    text = next(t for t in logs if f":{port}" in t)
    started = re.findall(r"Started server process \[(\d+)\]", text)
    assert started and len(started) == len(set(started)), started  # each worker's uvicorn says it once
    assert text.count("Waiting for application startup.") == len(started)
    summaries = Counter(re.findall(r"workflow (\w+): POST /", text))
    assert summaries and set(summaries.values()) == {1}, summaries
