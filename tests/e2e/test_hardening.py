"""Hostile and careless clients against the real service: every answer is a clear 4xx, nothing exhausts it."""

from __future__ import annotations

import io
import os
import re
import time

import httpx
import pytest
from PIL import Image

from comfybento.front.renderers import contract_of
from tests.helpers import sample_image

pytestmark = pytest.mark.e2e

BODY_LIMIT = 8 * 1024 * 1024  # COMFYBENTO_MAX_BODY_BYTES of the session server (tests/e2e/conftest.py)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _upload(server: str, data: bytes, content_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{server}/img2img", files={"image": ("upload", data, content_type)}, data={"seed": "1"}, timeout=60)


def test_a_decompression_bomb_is_refused_from_its_header(server):
    bomb = _png(Image.new("1", (13000, 13000)))
    assert len(bomb) < 64 * 1024  # a few KB that would decode to 169 M pixels
    started = time.monotonic()
    resp = _upload(server, bomb)
    assert resp.status_code == 413, resp.text
    assert "13000 x 13000" in resp.json()["error"] and "max_upload_pixels" in resp.json()["error"]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("truncated", _png(Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)))[:6000], "truncated or corrupt"),
        ("random", os.urandom(4096), "not a PNG, JPEG or WebP"),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "not a PNG, JPEG or WebP"),
        ("one_pixel", _png(sample_image(1, 1)), "at least 8"),
    ],
)
def test_bad_uploads_get_a_422_naming_the_field(server, name, data, message):
    resp = _upload(server, data)
    assert resp.status_code == 422, (name, resp.text)
    body = resp.json()
    assert body["error"].startswith("image:") and message in body["error"] and body["error_kind"] == "invalid"


def test_an_image_field_sent_as_json_or_text_is_read_as_base64_or_a_checked_url(server):
    as_json = httpx.post(f"{server}/img2img", json={"image": "iVBORw0KGgo=", "seed": 1}, timeout=60)
    assert as_json.status_code == 422 and as_json.json()["error"].startswith("image: not a PNG")
    as_path = httpx.post(f"{server}/img2img", json={"image": "/etc/passwd", "seed": 1}, timeout=60)
    assert as_path.status_code == 422 and as_path.json()["error"].startswith("image: not base64")  # never a server path
    # A text part is never fetched by BentoML (no allow-list) nor read as a file: it goes through the input allow-list.
    as_text = httpx.post(f"{server}/img2img", files={"seed": (None, "1"), "image": (None, "http://127.0.0.1:1/x.png")}, timeout=60)
    assert as_text.status_code == 422 and as_text.json()["error"].startswith("image: address 127.0.0.1")


def test_malformed_multipart_is_a_400(server):
    no_boundary = httpx.post(f"{server}/img2img", content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"}, timeout=60)
    assert no_boundary.status_code == 400 and "body" in no_boundary.text
    garbage = httpx.post(f"{server}/img2img", content=os.urandom(2048), headers={"content-type": "multipart/form-data; boundary=zz"},
                         timeout=60)
    assert 400 <= garbage.status_code < 500


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        # the CPU engine's defaults (comfybento/limits.py CPU_LIMITS), the shapes that exhausted the machine at small scale
        ({"width": 1024, "height": 1024, "steps": 1}, 413, "max_image_pixels"),
        ({"width": 384, "height": 384, "batch_size": 2, "steps": 1}, 413, "max_request_pixels"),
        ({"width": 2048, "height": 128, "steps": 1}, 413, "max_aspect_ratio"),
        ({"width": 16384, "height": 16384, "steps": 1}, 400, "width"),  # over max_side: the schema's maximum
        ({"batch_size": 4095}, 400, "batch_size"),
        ({"steps": 10000}, 400, "steps"),
        ({"prompt": "x" * 1_000_000}, 400, "prompt"),
    ],
)
def test_requests_over_a_limit_are_refused_naming_it(server, body, status, names):
    started = time.monotonic()
    resp = httpx.post(f"{server}/txt2img", json=body, timeout=60)
    assert resp.status_code == status and names in resp.text, resp.text[:500]
    assert time.monotonic() - started < 5  # refused up front, not after running


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    big = httpx.post(f"{server}/txt2img", content=b"{" + b" " * (BODY_LIMIT + 1) + b"}",
                     headers={"content-type": "application/json"}, timeout=60)
    assert big.status_code == 413 and "max_body_bytes" in big.text

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(BODY_LIMIT // (1024 * 1024) + 2):
            yield b" " * (1024 * 1024)

    chunked = httpx.post(f"{server}/txt2img", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert chunked.status_code == 413 and "max_body_bytes" in chunked.text


def test_every_answer_carries_a_request_id_and_honours_the_clients(server):
    mine = httpx.post(f"{server}/txt2img", json={"steps": 0}, headers={"X-Request-ID": "client-id-42"}, timeout=60)
    assert mine.headers["x-request-id"] == "client-id-42"
    fresh = httpx.post(f"{server}/txt2img", json={"steps": 1, "width": 64, "height": 64}, timeout=120)
    assert fresh.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    refused = httpx.post(f"{server}/txt2img", json={"width": 1024, "height": 1024}, headers={"X-Request-ID": "bad id\x7f"},
                         timeout=60)
    rid = refused.headers["x-request-id"]
    assert rid != "bad id\x7f" and refused.json()["request_id"] == rid


def _cancelled(server: str) -> float:
    metrics = httpx.get(f"{server}/metrics").text
    found = re.search(r'comfybento_item_errors_total\{kind="cancelled",workflow="txt2img"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_leaves_stops_its_work(server):
    before = _cancelled(server)
    slow = {"prompt": "leaving", "width": 448, "height": 448, "steps": 150, "seed": 5}
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/txt2img", json=slow, timeout=httpx.Timeout(60, read=3))
    deadline = time.monotonic() + 20
    while _cancelled(server) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cancelled(server) == before + 1  # interrupted mid-run, not run to its end
    quick = httpx.post(f"{server}/txt2img", json={"steps": 1, "width": 64, "height": 64, "seed": 1}, timeout=120)
    assert quick.status_code == 200
    assert time.monotonic() - started < 30


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/prompt", '{"prompt": ' + "[" * 1000 + "]" * 1000 + "}"),
        ("POST", "/api/prompt", '{"prompt": ' + _nested(5000) + "}"),
        ("POST", "/history", '{"delete": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("POST", "/jobs", '{"workflow": "txt2img", "items": [' + _nested(2000) + "]}"),
        ("POST", "/txt2img", '{"prompt": ' + _nested(3000) + "}"),
        ("POST", "/api/v2/jobs", '{"workflow": ' + _nested(1000) + "}"),
    ],
)
def test_a_deeply_nested_json_body_is_a_413_not_a_500(server, method, path, body):
    resp = httpx.request(method, f"{server}{path}", content=body.encode(), headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code == 413, (path, resp.status_code, resp.text[:300])
    error = resp.json()["error"]  # in the shape of the path's contract (front/renderers.py)
    if contract_of(path) == "comfy_v2":
        assert "max_json_depth" in error["message"] and error["code"] == "payload_too_large"
    elif contract_of(path) == "comfyui":
        assert "max_json_depth" in error["message"] and error["type"] == "too_large"
    else:
        assert "max_json_depth" in error and resp.json()["error_kind"] == "too_large"


def test_integers_in_queries_and_headers_are_bounded(server):
    cursor = httpx.get(f"{server}/api/v2/jobs", params={"cursor": "9999999999999999999"}, timeout=30)
    assert cursor.status_code == 422 and cursor.json()["error"]["code"] == "invalid_cursor", cursor.text
    upload = httpx.post(f"{server}/api/v2/assets", files={"file": ("a.png", _png(Image.new("RGB", (8, 8))), "image/png")},
                        data={"content_type": "image/png", "file_path": "a.png"}, timeout=30)
    assert upload.status_code in (200, 201), upload.text
    content = f"{server}/api/v2/assets/{upload.json()['id']}/content"
    ranged = httpx.get(content, headers={"Range": "bytes=" + "9" * 5000 + "-"}, timeout=30)
    assert ranged.status_code == 416 and ranged.headers["content-range"].startswith("bytes */"), ranged.text
    assert httpx.get(content, headers={"Range": "bytes=0-3"}, timeout=30).status_code == 206
    offset = httpx.get(f"{server}/jobs", params={"offset": "9" * 5000}, timeout=30)
    assert offset.status_code == 422 and "offset" in offset.text


def test_a_form_body_to_a_typed_endpoint_is_a_415_naming_its_type(server):
    resp = httpx.post(f"{server}/txt2img", data={"prompt": "a fox", "steps": "1"}, timeout=30)
    assert resp.status_code == 415, resp.text
    assert "application/x-www-form-urlencoded" in resp.json()["error"] and resp.json()["error_kind"] == "invalid"


def test_job_items_with_invalid_fields_are_of_kind_invalid(server):
    resp = httpx.post(f"{server}/jobs", json={"workflow": "txt2img", "items": [{"steps": "many"}, {"width": 3}]}, timeout=30)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error_kind"] == "invalid" and [i["index"] for i in resp.json()["items"]] == [0, 1]
