"""The OpenAI Images API (/v1) against a real `bentoml serve`, through the official `openai` SDKs, unchanged but for base_url.

openai (PyPI) here; the openai npm package through tests/js/openai/run.mjs. Keys (Bearer) and isolation of the
outputs it stores as URLs: tests/e2e/test_isolation.py (its /v1 rows).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import sample_image

openai = pytest.importorskip("openai")
JS = Path(__file__).resolve().parents[1] / "js" / "openai"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


def _image(data: str) -> Image.Image:
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    picture.load()
    return picture


def _png(width: int = 64, height: int = 64, alpha: int | None = None) -> bytes:
    picture = sample_image(width, height)
    if alpha is not None:
        picture = picture.convert("RGBA")
        picture.putalpha(alpha)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def test_models_lists_the_workflows_that_fit(client):
    ids = {m.id for m in client.models.list()}
    assert {"txt2img", "img2img"} <= ids
    assert client.models.retrieve("txt2img").owned_by == "comfybento"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("dall-e-3")
    assert missing.value.body["param"] == "model" and "txt2img" in missing.value.body["message"]


def test_n_images_come_back_as_base64_of_the_size_asked(client):
    answer = client.images.generate(model="txt2img", prompt="a red fox", n=2, size="64x96", quality="fast")
    assert len(answer.data) == 2 and answer.size == "64x96" and answer.output_format == "png"
    pictures = [_image(d.b64_json) for d in answer.data]
    assert [p.size for p in pictures] == [(64, 96), (64, 96)] and pictures[0].format == "PNG"
    assert pictures[0].tobytes() != pictures[1].tobytes()  # two images of one batch, not one twice
    assert answer.usage is not None and answer.usage.output_tokens == 2


def test_the_model_defaults_to_txt2img_and_formats_map(client):
    answer = client.images.generate(prompt="a blue boat", size="64x64", quality="fast", output_format="jpeg", output_compression=40)
    raw = base64.b64decode(answer.data[0].b64_json)
    assert raw[:3] == b"\xff\xd8\xff" and answer.output_format == "jpeg"


def test_url_outputs_are_served(client, server):
    answer = client.images.generate(model="txt2img", prompt="a green hill", size="64x64", quality="fast", response_format="url")
    url = answer.data[0].url
    assert url and answer.data[0].b64_json is None
    fetched = httpx.get(url, timeout=60)
    assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_edits_take_an_image_and_a_mask(client):
    answer = client.images.edit(model="img2img", image=("in.png", _png(), "image/png"), prompt="a stone wall")
    assert len(answer.data) == 1 and _image(answer.data[0].b64_json).size == (64, 64)
    masked = client.images.edit(model="img2img", image=("in.png", _png(), "image/png"), mask=("mask.png", _png(alpha=0), "image/png"),
                                prompt="a stone wall", n=2)
    assert len(masked.data) == 2
    with pytest.raises(openai.BadRequestError) as wrong:
        client.images.edit(model="img2img", image=("in.png", _png(), "image/png"), mask=("m.png", _png(32, 32, 0), "image/png"), prompt="x")
    assert wrong.value.body["param"] == "mask" and "size" in wrong.value.body["message"]
    with pytest.raises(openai.NotFoundError) as no_image:
        client.images.edit(model="txt2img", image=("in.png", _png(), "image/png"), prompt="x")
    assert no_image.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"size": "huge"}, 400, "size"),
        ({"size": "64x16"}, 400, "size"),  # under the minimum side: the workflow's own check, named as OpenAI's field
        ({"quality": "hd"}, 400, "quality"),  # no preset of that name
        ({"n": 0}, 400, "n"),
        ({"n": 17}, 400, "n"),
        ({"style": "vivid"}, 400, "style"),  # no counterpart
        ({"model": "gpt-image-1"}, 404, "model"),
        ({"size": "4096x4096"}, 400, "size"),  # over max_side: the workflow's bound
    ],
)
def test_fields_without_a_counterpart_are_400s_naming_them(server, fields, status, param):
    resp = httpx.post(f"{server}/v1/images/generations", json={"prompt": "x", **fields}, timeout=60)
    assert resp.status_code == status, resp.text[:300]
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == ("invalid_request_error" if status == 400 else "not_found_error"), error
    assert error["message"] and resp.json()["request_id"] == resp.headers["x-request-id"]


def test_an_over_limit_request_is_a_413_naming_the_limit(server):
    resp = httpx.post(f"{server}/v1/images/generations", json={"prompt": "x", "size": "448x448", "n": 4}, timeout=60)
    assert resp.status_code == 413 and "max_request_pixels" in resp.json()["error"]["message"], resp.text[:300]


def test_the_npm_sdk_runs_unchanged(server):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the openai npm test needs it")
    assert (JS / "node_modules" / "openai").exists(), "run `npm ci` in tests/js/openai (./scripts/test does)"
    run = subprocess.run([node, "run.mjs"], cwd=JS, env={**os.environ, "COMFYBENTO_URL": server}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"txt2img", "img2img"} <= set(seen["models"])
    assert seen["count"] == 2 and seen["png"] == ["PNG", "PNG"] and seen["size"] == "64x64" and seen["output_format"] == "png"
    assert seen["refused"] == {"status": 400, "param": "size", "type": "invalid_request_error"}
