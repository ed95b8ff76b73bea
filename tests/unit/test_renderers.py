"""One renderer per wire contract (front/renderers.py), fed by errors.describe; the middlewares answer in the path's contract."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.responses import PlainTextResponse

from comfybento.config import get_settings
from comfybento.errors import (
    ERROR_KINDS,
    Cancelled,
    ComfyBentoError,
    EngineUnavailable,
    InternalError,
    InvalidRequest,
    ModelLockError,
    NodeExecutionError,
    NotFound,
    OutOfMemory,
    QueueFull,
    RateLimited,
    StorageFull,
    TooLarge,
    Unauthorized,
    WorkflowError,
    describe,
)
from comfybento.front import openapi, stream
from comfybento.front.access import Access, AccessMiddleware
from comfybento.front.compat.comfy_v2.errors import V2Error
from comfybento.front.compat.comfy_v2.routes import router as v2_router
from comfybento.front.compat.comfyui.routes import router as comfyui_router
from comfybento.front.context import REQUEST_ID
from comfybento.front.http import RequestEdgeMiddleware
from comfybento.front.jobs.api_models import ItemFailure
from comfybento.front.keys import ApiKey, hash_key, new_key
from comfybento.front.ratelimit import MemoryBuckets
from comfybento.front.renderers import contract_of, render
from comfybento.front.root import OWN_ROUTERS

# One error of each kind, as the code raises it; and what each contract answers for it (status, and its own name).
ONE_OF_EACH: dict[str, BaseException] = {
    "invalid": InvalidRequest("steps: must be at most 100"),
    "too_large": TooLarge("width x height is over max_request_pixels"),
    "unauthorized": Unauthorized("the API key is not valid"),
    "rate_limited": RateLimited("API key 'a' is over its limit of 2 requests/min; retry in 7 s", retry_after_s=7),
    "not_found": NotFound("no job 'x'"),
    "node": NodeExecutionError("3", "KSampler", "boom"),
    "oom": OutOfMemory("out of memory even for a batch of one"),
    "workflow": ModelLockError("models/x.safetensors: sha256 mismatch"),
    "unavailable": QueueFull("workflow 'txt2img' has 256 requests queued; retry later"),
    "storage_full": StorageFull("the outputs folder has 1.0 MiB free", folder="outputs", free_bytes=1, watermark_bytes=8),
    "cancelled": Cancelled("the client went away"),
    "internal": RuntimeError("a secret path /srv/x"),
}
# kind -> (our status, v2 status and code, ComfyUI status and type)
EXPECTED = {
    "invalid": (422, 422, "invalid_workflow", 400, "invalid_prompt"),
    "too_large": (413, 413, "payload_too_large", 413, "too_large"),
    "unauthorized": (401, 401, "unauthorized", 401, "unauthorized"),
    "rate_limited": (429, 429, "queue_full", 429, "rate_limited"),
    "not_found": (404, 404, "not_found", 404, "not_found"),
    "node": (500, 500, "upstream_error", 500, "node"),
    "oom": (503, 503, "queue_full", 503, "oom"),
    "workflow": (500, 500, "upstream_error", 500, "workflow"),
    "unavailable": (503, 503, "queue_full", 503, "unavailable"),
    "storage_full": (507, 503, "storage_full", 503, "storage_full"),
    "cancelled": (499, 499, "invalid_request", 499, "cancelled"),
    "internal": (500, 500, "upstream_error", 500, "internal"),
}


@pytest.fixture
def rid():
    token = REQUEST_ID.set("rid-123")
    yield "rid-123"
    REQUEST_ID.reset(token)


def test_the_examples_cover_every_kind_and_describe_names_each():
    assert set(ONE_OF_EACH) == set(EXPECTED) == set(ERROR_KINDS)
    assert {kind: describe(exc)["error_kind"] for kind, exc in ONE_OF_EACH.items()} == {k: k for k in ERROR_KINDS}
    assert describe(WorkflowError("x"))["error_kind"] == "workflow" and describe(EngineUnavailable("x"))["error_kind"] == "unavailable"
    assert describe(InternalError("x"))["error_kind"] == "internal"
    assert describe(V2Error(409, "hash_mismatch", "x"))["error_kind"] == "invalid"  # named by its status


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_each_contract_renders_each_kind_with_the_request_id(kind, rid):
    exc = ONE_OF_EACH[kind]
    ours_status, v2_status, v2_code, comfy_status, comfy_type = EXPECTED[kind]
    message = describe(exc)["error"]

    ours = render(exc, "comfybento")
    body = json.loads(ours.body)
    assert ours.status_code == ours_status and ours.headers["X-Request-ID"] == rid
    assert (body["error"], body["error_kind"], body["request_id"]) == (message, kind, rid)

    v2 = render(exc, "comfy_v2")
    body = json.loads(v2.body)
    assert v2.status_code == v2_status and v2.headers["X-Request-ID"] == rid and body["request_id"] == rid
    assert set(body["error"]) == {"code", "message", "details"} and (body["error"]["code"], body["error"]["message"]) == (v2_code, message)

    comfy = render(exc, "comfyui")
    body = json.loads(comfy.body)
    assert comfy.status_code == comfy_status and comfy.headers["X-Request-ID"] == rid and body["request_id"] == rid
    assert body["node_errors"] == {} and set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert (body["error"]["type"], body["error"]["message"]) == (comfy_type, message)
    assert "/srv" not in ours.body.decode() + v2.body.decode() + comfy.body.decode()


def test_node_errors_name_the_node_where_each_shape_has_room():
    exc = ONE_OF_EACH["node"]
    assert json.loads(render(exc).body) | {"request_id": "-"} == {
        "error": "node 3 (KSampler) failed: boom", "error_kind": "node", "request_id": "-", "node_id": "3", "class_type": "KSampler"}
    assert json.loads(render(exc, "comfyui").body)["error"]["extra_info"] == {"node_id": "3", "class_type": "KSampler"}
    assert json.loads(render(V2Error(422, "missing_asset", "asset 'a'", {"asset": "a"}), "comfy_v2").body)["error"] == {
        "code": "missing_asset", "message": "asset 'a'", "details": {"asset": "a"}}


@pytest.mark.parametrize("contract", ["comfybento", "comfy_v2", "comfyui"])
def test_retry_after_is_the_errors_own_or_the_one_setting(contract):
    assert render(ONE_OF_EACH["unavailable"], contract).headers["Retry-After"] == str(get_settings().retry_after_s)
    assert render(ONE_OF_EACH["oom"], contract).headers["Retry-After"] == str(get_settings().retry_after_s)
    assert render(ONE_OF_EACH["rate_limited"], contract).headers["Retry-After"] == "7"
    assert render(ONE_OF_EACH["storage_full"], contract).headers["Retry-After"] == str(StorageFull.retry_after_s)
    assert render(ONE_OF_EACH["unavailable"], contract, retry_after_s=9).headers["Retry-After"] == "9"
    assert "Retry-After" not in render(ONE_OF_EACH["invalid"], contract).headers


def test_each_answer_is_one_log_line_a_fault_with_its_traceback(caplog, rid):
    caplog.set_level(logging.INFO, logger="comfybento.http")
    try:
        raise RuntimeError("boom at /srv/x")
    except RuntimeError as exc:
        render(exc, "comfyui")
    render(InvalidRequest("steps: too many"), "comfy_v2")
    render(QueueFull("full"))
    fault, refused, busy = caplog.records
    assert fault.levelno == logging.ERROR and fault.exc_info is not None and "rid-123" in fault.getMessage()
    assert refused.levelno == logging.INFO and refused.exc_info is None
    assert refused.getMessage() == "request rid-123 answered 422 (invalid): steps: too many"
    assert busy.levelno == logging.WARNING and busy.exc_info is None


def _route_paths(routes: Any) -> list[str]:
    return [getattr(r, "path", "") for r in routes if getattr(r, "path", "")]


def test_the_contract_of_a_path_follows_who_serves_it():
    comfyui_paths = _route_paths(comfyui_router.routes)
    assert "/prompt" in comfyui_paths and "/api/upload/image" in comfyui_paths and "/ws" in comfyui_paths
    assert {contract_of(p) for p in comfyui_paths} == {"comfyui"}
    v2_paths = _route_paths(v2_router.routes)
    assert v2_paths and {contract_of(p) for p in v2_paths} == {"comfy_v2"}
    ours = [p for p in _route_paths([r for router in OWN_ROUTERS for r in router.routes]) if p not in comfyui_paths and p not in v2_paths]
    assert "/jobs" in ours and {contract_of(p) for p in ours} == {"comfybento"}
    for path in ("/txt2img", "/txt2img/stream", "/healthz", "/", "/api", "/api/v2x", "/prompts", "/viewer", "/history2"):
        assert contract_of(path) == "comfybento", path
    assert contract_of("/history/abc") == contract_of("/api/view") == "comfyui" and contract_of("/api/v2") == "comfy_v2"
    # ComfyUI's editor's calls under /comfy are ComfyUI's; its pages and login are ours
    assert contract_of("/comfy/api/prompt") == contract_of("/comfy/api/v2/userdata") == contract_of("/comfy/ws") == "comfyui"
    assert contract_of("/comfy/") == contract_of("/comfy/login") == contract_of("/comfy/wsx") == "comfybento"


def test_the_openapi_and_event_schemas_list_the_one_list_of_kinds():
    assert openapi.ERROR_SCHEMA["properties"]["error_kind"]["enum"] == list(ERROR_KINDS)  # type: ignore[index]
    assert stream.FailedEvent.model_json_schema()["properties"]["error_kind"]["enum"] == list(ERROR_KINDS)
    item_kind = stream.JobItemEvent.model_json_schema()["properties"]["error_kind"]["anyOf"][0]
    assert item_kind["enum"] == list(ERROR_KINDS)
    assert ItemFailure.model_json_schema()["properties"]["kind"]["enum"] == list(ERROR_KINDS)
    classes = [c for c in _subclasses(ComfyBentoError) if c.kind is not None]
    assert classes and {c.kind for c in classes} <= set(ERROR_KINDS)


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


# ---------------------------------------------------------------- the middlewares answer in the path's contract

PATHS = ("/api/v2/jobs", "/prompt", "/api/history", "/jobs")


def _edge(key: ApiKey) -> TestClient:
    """The entry service's stack: the request edge (ids, body limit), then keys and limits, then the app."""
    app = FastAPI()
    for path in PATHS:
        app.add_api_route(path, lambda: PlainTextResponse("ok"), methods=["GET", "POST"])
    guarded = AccessMiddleware(app, Access((key,), MemoryBuckets()))
    return TestClient(RequestEdgeMiddleware(guarded, max_body_bytes=100))


def _check_shape(path: str, r: Any, status: int, rid: str, words: str) -> None:
    assert r.status_code == status and r.headers["x-request-id"] == rid and r.headers.get_list("x-request-id") == [rid]
    body = r.json()
    assert body["request_id"] == rid
    if path.startswith("/api/v2/"):
        assert set(body["error"]) == {"code", "message", "details"} and words in body["error"]["message"]
    elif contract_of(path) == "comfyui":
        assert body["node_errors"] == {} and set(body["error"]) == {"type", "message", "details", "extra_info"}
        assert words in body["error"]["message"]
    else:
        assert words in body["error"] and body["error_kind"] in ERROR_KINDS


@pytest.mark.parametrize("path", PATHS)
def test_the_middlewares_401_413_429_answer_in_the_contract_of_the_path(path):
    secret = new_key()
    client = _edge(ApiKey(name="alice", sha256=hash_key(secret), rate_per_min=1))
    refused = client.get(path, headers={"X-Request-ID": "r-401"})
    _check_shape(path, refused, 401, "r-401", "needs an API key")
    assert refused.headers["www-authenticate"].startswith("Bearer")
    auth = {"Authorization": f"Bearer {secret}"}
    big = client.post(path, content=b"{}" + b" " * 200, headers={**auth, "X-Request-ID": "r-413", "Content-Type": "application/json"})
    _check_shape(path, big, 413, "r-413", "max_body_bytes")
    assert client.get(path, headers=auth).text == "ok"
    limited = client.get(path, headers={**auth, "X-Request-ID": "r-429"})
    _check_shape(path, limited, 429, "r-429", "requests/min")
    assert int(limited.headers["retry-after"]) >= 1 and limited.headers["ratelimit-limit"] == "1"
    if path.startswith("/api/v2/"):
        assert (refused.json()["error"]["code"], big.json()["error"]["code"], limited.json()["error"]["code"]) == (
            "unauthorized", "payload_too_large", "queue_full")
    elif contract_of(path) == "comfyui":
        assert [r.json()["error"]["type"] for r in (refused, big, limited)] == ["unauthorized", "too_large", "rate_limited"]
    else:
        assert [r.json()["error_kind"] for r in (refused, big, limited)] == ["unauthorized", "too_large", "rate_limited"]
