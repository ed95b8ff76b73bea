"""Every output over a real `bentoml serve`: JSON (base64 and URLs), one route per output, jobs and archives, the OpenAPI."""

from __future__ import annotations

import base64
import io
import zipfile
from types import SimpleNamespace

import httpx
import pytest

from tests.e2e.conftest import JOB_ENV, serving
from tests.e2e.test_jobs import wait_job
from tests.engine.test_outputs import EXPECTED, check_outputs
from tests.helpers import make_workflows_dir, service_env

pytestmark = pytest.mark.e2e

EXTENSIONS = {"image/png": "png", "image/webp": "webp", "video/webm": "webm", "text/plain": "txt", "audio/flac": "flac",
              "application/zip": "zip"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_outputs")
    env = {**service_env(make_workflows_dir(root / "workflows", extra=("every_output",)), root / "work"), **JOB_ENV}
    with serving(env, root) as url:
        yield url


def _order(outputs: list[dict]) -> list[tuple]:
    return [(o["name"], o["node_id"], o["index"], o["kind"], o["media_type"]) for o in outputs]


def test_json_answer_has_every_output_base64(server):
    resp = httpx.post(f"{server}/every_output", json={"seed": 5}, timeout=300)
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert _order(outputs) == EXPECTED and "images" not in resp.json()
    assert all(o["url"] is None for o in outputs)
    check_outputs([SimpleNamespace(output=o["name"], index=o["index"], width=o["width"], height=o["height"],
                                   data=base64.b64decode(o["data"])) for o in outputs])


def test_json_answer_with_urls(server):
    resp = httpx.post(f"{server}/every_output", json={"seed": 5, "output_delivery": "url"}, timeout=300)
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert _order(outputs) == EXPECTED and all(o["data"] is None for o in outputs)
    fetched = []
    for o in outputs:
        got = httpx.get(o["url"], timeout=30)
        assert got.status_code == 200 and got.headers["content-type"].split(";")[0] == o["media_type"]
        assert o["url"].endswith("." + EXTENSIONS[o["media_type"]])
        fetched.append(SimpleNamespace(output=o["name"], index=o["index"], width=o["width"], height=o["height"], data=got.content))
    check_outputs(fetched)


@pytest.mark.parametrize(("route", "content_type", "count"), [
    ("png", "image/png", "2"), ("still", "image/png", "2"), ("animation", "image/webp", "1"), ("clip", "video/webm", "1"),
    ("caption", "text/plain; charset=utf-8", "1"), ("tone", "audio/flac", "2"), ("bundle", "application/zip", "1"),
])
def test_one_route_per_output_returns_its_bytes(server, route, content_type, count):
    resp = httpx.post(f"{server}/every_output/{route}", json={"seed": 5}, timeout=300)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == content_type and resp.headers["x-output-count"] == count
    assert resp.headers["x-seed"] == "5" and resp.content
    if route == "bundle":
        assert zipfile.ZipFile(io.BytesIO(resp.content)).testzip() is None


def test_job_results_and_archive_carry_every_output(server):
    resp = httpx.post(f"{server}/jobs", json={"workflow": "every_output", "items": [{"seed": 1}]}, timeout=60)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert wait_job(server, job_id)["state"] == "succeeded"
    item = httpx.get(f"{server}/jobs/{job_id}/results", timeout=30).json()["items"][0]
    assert [(o["output"], o["node_id"], o["index"], o["kind"], o["media_type"]) for o in item["outputs"]] == EXPECTED
    for o in item["outputs"]:
        got = httpx.get(o["url"], timeout=30)
        assert got.status_code == 200 and got.headers["content-type"].split(";")[0] == o["media_type"]
    names = zipfile.ZipFile(io.BytesIO(httpx.get(f"{server}/jobs/{job_id}/archive", timeout=60).content)).namelist()
    assert names == [f"00000-{name}-{index}.{EXTENSIONS[media]}" for name, _, index, _, media in EXPECTED]


def test_openapi_says_what_each_output_is(server):
    doc = httpx.get(f"{server}/docs.json", timeout=30).json()
    ok = doc["paths"]["/every_output"]["post"]["responses"]["200"]
    schemas = doc["components"]["schemas"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EveryOutputResult"}
    variants = [schemas[v["$ref"].rsplit("/", 1)[1]] for v in schemas["EveryOutputResult"]["properties"]["outputs"]["items"]["oneOf"]]
    described = [(v["properties"]["name"]["enum"][0], v["properties"]["kind"]["enum"][0]) for v in variants]
    assert described == [("still", "image"), ("animation", "animation"), ("clip", "video"), ("caption", "text"),
                         ("tone", "audio"), ("notes", "text"), ("bundle", "file")]
    clip = doc["paths"]["/every_output/clip"]["post"]["responses"]["200"]["content"]
    assert list(clip) == ["video/webm", "application/octet-stream"]  # the bytes' own type, and the one every generator reads
    assert "/every_output/png" in doc["paths"] and "/txt2img/png" in doc["paths"]
