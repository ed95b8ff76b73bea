"""A real `bentoml serve`, called over HTTP and with bentoml.SyncHTTPClient."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import bentoml
import httpx
import numpy as np
import pytest

from tests.helpers import png_array, sample_image

pytestmark = pytest.mark.e2e


def test_openapi_schema_is_typed(server):
    spec = httpx.get(f"{server}/docs.json").json()
    for route in ("/txt2img", "/txt2img/png", "/two_outputs", "/img2img", "/cpack", "/failing"):
        assert route in spec["paths"], route
    schemas = spec["components"]["schemas"]
    props = next(v for k, v in schemas.items() if k.startswith("Txt2img"))["properties"]
    assert props["steps"]["type"] == "integer" and props["steps"]["minimum"] == 1
    assert "euler" in props["sampler_name"]["enum"]
    assert props["width"]["default"] == 128 and all(p.get("description") for p in props.values())
    assert props["output_format"]["enum"] == ["png", "webp", "jpeg"] and props["output_format"]["default"] == "png"


def test_sync_client_returns_a_png_of_the_requested_size(server):
    with bentoml.SyncHTTPClient(server, timeout=120) as client:
        result = client.txt2img(prompt="a lighthouse", width=64, height=96, steps=4, seed=77)
    image = result["outputs"][0]
    assert result["seed"] == 77 and (image["width"], image["height"]) == (64, 96)
    assert png_array(image["data"]).shape == (96, 64, 3)


def test_omitted_seed_is_drawn_and_returned(server):
    a = httpx.post(f"{server}/txt2img", json={"steps": 2, "width": 64, "height": 64}, timeout=120).json()
    b = httpx.post(f"{server}/txt2img", json={"steps": 2, "width": 64, "height": 64}, timeout=120).json()
    assert isinstance(a["seed"], int) and a["seed"] != b["seed"]


def test_plain_png_download(server):
    resp = httpx.post(f"{server}/txt2img/png", json={"prompt": "a boat", "width": 64, "height": 64, "steps": 2, "seed": 3}, timeout=120)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.headers["x-seed"] == "3" and png_array(resp.content).shape == (64, 64, 3)


def test_output_formats_over_http(server):
    body = {"prompt": "a boat", "width": 64, "height": 64, "steps": 2, "seed": 3}
    webp = httpx.post(f"{server}/txt2img/png", json={**body, "output_format": "webp", "output_quality": 70}, timeout=120)
    assert webp.status_code == 200 and webp.headers["content-type"] == "image/webp" and webp.content[:4] == b"RIFF"
    image = httpx.post(f"{server}/txt2img", json={**body, "output_format": "jpeg"}, timeout=120).json()["outputs"][0]
    assert image["media_type"] == "image/jpeg" and base64.b64decode(image["data"])[:2] == b"\xff\xd8"
    bad = httpx.post(f"{server}/txt2img", json={**body, "output_format": "gif"}, timeout=60)
    assert 400 <= bad.status_code < 500 and "output_format" in bad.text


@pytest.mark.parametrize(
    ("body", "field"),
    [({"steps": 0}, "steps"), ({"sampler_name": "warp"}, "sampler_name"), ({"width": "wide"}, "width"),
     ({"colour": "red"}, "colour"), ({"cfg": 1000}, "cfg")],
)
def test_bad_fields_get_a_4xx_naming_the_field(server, body, field):
    resp = httpx.post(f"{server}/txt2img", json=body, timeout=60)
    assert 400 <= resp.status_code < 500 and field in resp.text


def test_two_named_outputs(server):
    result = httpx.post(f"{server}/two_outputs", json={"seed": 1}, timeout=120).json()
    assert [(i["name"], i["node_id"]) for i in result["outputs"]] == [("original", "301"), ("inverted", "302")]


def test_img2img_with_an_uploaded_image(server, tmp_path):
    path = tmp_path / "input.png"
    sample_image(64, 64).save(path)
    with bentoml.SyncHTTPClient(server, timeout=120) as client:
        result = client.img2img(image=path, seed=4, denoise=0.1)
    assert (result["outputs"][0]["width"], result["outputs"][0]["height"]) == (64, 64)
    missing = httpx.post(f"{server}/img2img", json={"seed": 1}, timeout=60)
    assert 400 <= missing.status_code < 500 and "image" in missing.text


def test_node_failure_is_reported_and_service_goes_on(server):
    resp = httpx.post(f"{server}/failing", json={"trigger": "boom"}, timeout=120)
    assert resp.status_code == 500
    assert "node 10 (RaiseOnText)" in resp.json()["error"] and "Traceback" not in resp.text
    assert httpx.post(f"{server}/failing", json={"trigger": "ok"}, timeout=120).status_code == 200


def _solo(server, body):
    resp = httpx.post(f"{server}/txt2img", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_concurrent_callers_share_batches_with_solo_images(server):
    bodies = [{"prompt": f"prompt number {i}", "seed": 100 + i, "width": 64, "height": 64, "steps": 30} for i in range(6)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: _solo(server, b), bodies))
    assert max(r["timings"]["batch_size"] for r in together) > 1
    for body, result in zip(bodies, together, strict=True):
        alone = _solo(server, body)
        assert alone["timings"]["batch_size"] == 1 and alone["seed"] == body["seed"]
        diff = np.abs(png_array(result["outputs"][0]["data"]) - png_array(alone["outputs"][0]["data"])).max()
        assert diff <= 2, (body, diff)
    metrics = httpx.get(f"{server}/metrics").text
    assert 'comfybento_executions_total{mode="batched",workflow="txt2img"}' in metrics
    assert "comfybento_batch_size_bucket" in metrics and "comfybento_queue_wait_seconds_bucket" in metrics
    assert 'comfybento_workflow_batchable{workflow="txt2img"} 1.0' in metrics  # once, not per process


def test_full_queue_answers_503_with_retry_after(server):
    body = {"prompt": "slow", "width": 128, "height": 128, "steps": 150}
    with ThreadPoolExecutor(30) as pool:
        responses = list(pool.map(lambda i: httpx.post(f"{server}/txt2img", json={**body, "seed": i}, timeout=600), range(30)))
    shed = [r for r in responses if r.status_code == 503]
    assert shed and all(r.headers.get("retry-after") == "5" for r in shed), [(r.text[:200], dict(r.headers)) for r in shed if r.headers.get("retry-after") != "5"][:2]
    assert all(r.status_code in (200, 503) for r in responses)
    assert any(r.status_code == 200 for r in responses)
