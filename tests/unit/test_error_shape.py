"""The framework's own error answers (unknown route, wrong method, a typed body failing validation) in our shape."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from comfybento.front.error_shape import ErrorShapeMiddleware, shaped_fields
from comfybento.front.http import RequestEdgeMiddleware
from comfybento.front.renderers import error_response

BENTOML_400 = {"error": "1 validation error for Txt2imgInput",
               "detail": [{"type": "int_parsing", "loc": ["steps"], "msg": "Input should be a valid integer"}]}


async def _validation(request):  # what BentoML answers for a typed body that fails validation
    return JSONResponse(BENTOML_400, status_code=400)


async def _ours(request):
    return error_response({"status": 409, "error_kind": "invalid", "error": "already ours"})


async def _text(request):
    return PlainTextResponse("Service is not ready", status_code=503, headers={"Retry-After": "7"})


def _client() -> TestClient:
    app = Starlette(routes=[Route("/txt2img", _validation, methods=["POST"]), Route("/ours", _ours),
                            Route("/readyz", _text), Route("/prompt", _validation, methods=["POST"])])
    return TestClient(RequestEdgeMiddleware(ErrorShapeMiddleware(app), max_body_bytes=1 << 20))


def _assert_shape(response) -> dict:
    body = response.json()
    assert response.headers["content-type"] == "application/json"
    assert {"error", "error_kind", "request_id"} <= body.keys(), body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_unknown_route_is_a_json_404():
    response = _client().get("/nope", headers={"X-Request-ID": "rid-1"})
    assert response.status_code == 404
    body = _assert_shape(response)
    assert body == {"error": "GET /nope: Not Found", "error_kind": "not_found", "request_id": "rid-1"}


def test_wrong_method_is_a_json_405_that_keeps_allow():
    response = _client().get("/txt2img")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert _assert_shape(response)["error_kind"] == "invalid"


def test_a_validation_400_names_the_field_and_keeps_detail():
    response = _client().post("/txt2img", json={"steps": "x"})
    assert response.status_code == 400
    body = _assert_shape(response)
    assert body["error"] == "steps: Input should be a valid integer"
    assert body["error_kind"] == "invalid"
    assert body["detail"] == BENTOML_400["detail"]


def test_our_own_answers_and_other_contracts_pass_unchanged():
    client = _client()
    ours = client.get("/ours", headers={"X-Request-ID": "rid-2"})
    assert ours.json() == {"error": "already ours", "error_kind": "invalid", "request_id": "rid-2"}
    assert client.post("/prompt", json={}).json() == BENTOML_400  # ComfyUI's route: its own contract, not ours


def test_a_plain_text_503_keeps_its_retry_after():
    response = _client().get("/readyz")
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    body = _assert_shape(response)
    assert body["error_kind"] == "unavailable" and body["error"] == "GET /readyz: Service is not ready"


def test_shaped_fields_reads_bentomls_tuple_and_several_fields():
    assert shaped_fields(415, b'[{"error": "not allowed"}]', "POST /x")["error"] == "not allowed"
    two = shaped_fields(400, b'{"detail": [{"loc": ["a"], "msg": "bad"}, {"loc": ["b"], "msg": "worse"}]}', "POST /x")
    assert two["error"] == "a: bad (and 1 more: see detail)" and len(two["detail"]) == 2
    assert shaped_fields(404, b'{"error": "x", "error_kind": "not_found", "request_id": "r"}', "GET /x") is None
