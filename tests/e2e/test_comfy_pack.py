"""comfy-pack graphs served by a real `bentoml serve` and called over HTTP.

The example is comfy-pack's own `examples/simple-pixel-art-generation.cpack.zip` workflow (tests/graphs/README.md),
with our tiny checkpoint in place of its own (tests/cpack_example.py). Warm-up is off here: at the example's own
512x512 and 20 steps it takes minutes on a CPU; tests/engine/test_comfy_pack.py starts an engine with it on.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import bentoml
import httpx
import numpy as np
import pytest

from comfybento.limits import Limits
from tests.cpack_example import write_example
from tests.e2e.conftest import JOB_ENV, serving
from tests.e2e.test_jobs import wait_job
from tests.helpers import make_workflows_dir, png_array, sample_image, service_env

MAX_FILE_BYTES = Limits().max_upload_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cpack_serve")
    workflows = make_workflows_dir(root / "workflows", extra=("cpack_inputs",))
    write_example(workflows)
    with serving({**service_env(workflows, root / "work"), **JOB_ENV, "COMFYBENTO_WARMUP": "0"}, root) as url:
        yield url


def _props(server: str, prefix: str) -> dict:
    schemas = httpx.get(f"{server}/docs.json").json()["components"]["schemas"]
    return next(v for k, v in schemas.items() if k.startswith(prefix))["properties"]


def test_the_example_is_typed_as_comfy_pack_types_it(server):
    props = _props(server, "CpackExampleInput")
    assert list(props)[:4] == ["prompt", "height", "width", "seed"]
    assert (props["width"]["minimum"], props["width"]["maximum"], props["width"]["default"]) == (24, 2048, 512)
    inputs = _props(server, "CpackInputsInput")
    assert (inputs["picture"]["type"], inputs["picture"]["format"]) == ("string", "binary")  # an upload, in OpenAPI 3.0
    assert inputs["method"]["enum"][0] == "nearest-exact" and inputs["scale"]["maximum"] == 8


def test_the_example_serves_and_returns_its_seed(server):
    body = {"prompt": "a rose in a bottle", "width": 64, "height": 64}
    given = httpx.post(f"{server}/cpack_example", json={**body, "seed": 5}, timeout=300)
    assert given.status_code == 200, given.text
    assert given.json()["seed"] == 5 and png_array(given.json()["outputs"][0]["data"]).shape == (64, 64, 3)
    drawn = [httpx.post(f"{server}/cpack_example", json=body, timeout=300).json()["seed"] for _ in range(2)]
    assert all(isinstance(s, int) for s in drawn) and drawn[0] != drawn[1]
    for bad, field in (({"width": 5000}, "width"), ({"seed": -1}, "seed"), ({"ckpt_name": "x"}, "ckpt_name")):
        resp = httpx.post(f"{server}/cpack_example", json={**body, **bad}, timeout=60)
        assert 400 <= resp.status_code < 500 and field in resp.text


def test_a_file_is_an_upload_never_a_server_path(server, tmp_path):
    path = tmp_path / "picture.png"
    sample_image(64, 64).save(path)
    with bentoml.SyncHTTPClient(server, timeout=120) as client:
        result = client.cpack_inputs(picture=path, scale=0.5, method="area")
    out = png_array(result["outputs"][0]["data"])
    expected = 255 - np.asarray(sample_image(64, 64).resize((32, 32), resample=4)).astype(np.int16)
    assert out.shape == (32, 32, 3) and np.abs(out - expected).mean() < 8
    # A string is base64, a data: URI or a checked URL (README, Inputs): never a path on the server.
    for body, named in (({"picture": "/etc/passwd"}, "picture: not base64"), ({"picture": "/etc/passwd", "scale": 9}, "scale"),
                        ({}, "picture")):
        resp = httpx.post(f"{server}/cpack_inputs", json=body, timeout=60)
        assert 400 <= resp.status_code < 500 and named in resp.text, resp.text
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    with big.open("rb") as f:
        resp = httpx.post(f"{server}/cpack_inputs", files={"picture": ("big.bin", f)}, timeout=120)
    assert resp.status_code == 413 and "picture" in resp.text and str(MAX_FILE_BYTES) in resp.text


def test_a_job_item_carries_its_file_as_base64(server, tmp_path):
    path = tmp_path / "picture.png"
    sample_image(64, 64).save(path)
    item = {"picture": base64.b64encode(path.read_bytes()).decode(), "scale": 0.25}
    resp = httpx.post(f"{server}/jobs", json={"workflow": "cpack_inputs", "items": [item]}, timeout=60)
    assert resp.status_code == 202, resp.text
    status = wait_job(server, resp.json()["id"])
    assert status["state"] == "succeeded", status
    bad = httpx.post(f"{server}/jobs", json={"workflow": "cpack_inputs", "items": [{"picture": "/etc/passwd?"}]}, timeout=60)
    assert bad.status_code == 422 and bad.json()["items"][0]["field"] == "picture"
