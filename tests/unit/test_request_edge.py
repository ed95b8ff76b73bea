"""The request edge (front/http.py RequestEdgeMiddleware) in front of a real FastAPI app: bodies bounded before parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from comfybento.front.http import RequestEdgeMiddleware, json_too_deep


def _nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def _objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (_nested(64), False), (_nested(65), True), (_objects(64), False), (_objects(65), True),
        (json.dumps({"s": "[[[[[[" * 100, "t": '\\"{{{{' * 50}), False),  # brackets in strings do not nest
        (json.dumps([[1, 2], {"a": [3, {"b": []}]}] * 1000), False),
        ('{"a": [}', False), ("[[[[", False), ("not json", False), ("", False),  # not JSON: the parser answers
        ('"' + "[" * 200 + '"', False), ("[" * 100_000 + "]" * 100_000, True),
    ],
)
def test_json_nesting_is_measured_without_parsing(text, deep):
    assert json_too_deep(text.encode(), 64) is deep


@pytest.fixture
def client() -> Any:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"got": len(json.dumps(await request.json()))}

    @app.post("/content-type")
    async def content_type(request: Request) -> dict[str, Any]:
        return {"type": request.headers.get("content-type"), "body": await request.json()}

    @app.post("/form")
    async def form(request: Request) -> dict[str, Any]:
        return {"got": dict(await request.form())}

    with TestClient(RequestEdgeMiddleware(app, max_body_bytes=4 * 1024 * 1024, max_json_depth=64)) as c:
        yield c


@pytest.mark.parametrize("body", [_nested(1000), _objects(5000), _nested(100_000, "{\"a\":", "}")])
def test_a_deeply_nested_json_body_is_a_413_naming_the_limit(client, body):
    for content_type in ("application/json", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        resp = client.post("/echo", content=body.encode(), headers=headers)
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "the JSON body nests arrays and objects deeper than the limit of 64 (max_json_depth)"
        assert resp.json()["error_kind"] == "too_large" and resp.headers["x-request-id"]


def test_a_json_body_within_the_limit_reaches_the_route_whole(client):
    body = json.dumps({"prompt": {"3": {"inputs": {"seed": [1] * 10_000}}}, "deep": json.loads(_nested(60))})
    resp = client.post("/echo", content=body.encode(), headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.json() == {"got": len(json.dumps(json.loads(body)))}


def test_a_form_urlencoded_body_is_a_415_naming_its_content_type(client):
    resp = client.post("/form", data={"prompt": "a fox", "seed": "1"})
    assert resp.status_code == 415, resp.text
    assert "Content-Type 'application/x-www-form-urlencoded' is not accepted" in resp.json()["error"]
    assert resp.json()["error_kind"] == "invalid"


def test_json_sent_as_form_urlencoded_is_read_as_json_and_its_depth_checked(client):
    """urllib's default content type (comfy-cli posts /prompt so): the body is JSON, and is taken as JSON."""
    headers = {"content-type": "application/x-www-form-urlencoded"}
    resp = client.post("/content-type", content=json.dumps({"prompt": {"a": 1}}).encode(), headers=headers)
    assert resp.status_code == 200 and resp.json() == {"type": "application/json", "body": {"prompt": {"a": 1}}}
    assert client.post("/echo", content=_nested(100).encode(), headers=headers).status_code == 413


def test_a_content_length_of_thousands_of_digits_is_refused_not_converted(client):
    resp = client.post("/echo", content=b"[]", headers={"content-length": "9" * 5000, "content-type": "application/json"})
    assert resp.status_code == 413 and "max_body_bytes" in resp.json()["error"]


def test_a_path_with_a_line_break_is_a_404_in_the_error_shape(client):
    resp = client.get("/echo%0Aname")  # no route can match it: a mount's pattern stops at a line break
    assert resp.status_code == 404 and resp.json()["error_kind"] == "not_found" and "line break" in resp.json()["error"]
