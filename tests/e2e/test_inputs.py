"""Input files against a real `bentoml serve`: the same image by upload, base64 and URL; masks; URL refusals; job items.

The files are served by a local HTTP server (tests/file_server.py) reached as `localhost`, the one host this
server's COMFYBENTO_INPUT_URL_ALLOWLIST names: 127.0.0.1 itself, and every other internal address, stay refused.
The workflow (tests/graphs/inputs.json) needs no model: LoadImage -> ImageInvert, LoadImage's MASK output and
LoadImageMask (red channel), each saved as an image; tests/graphs/video_input.json saves a LoadVideo's frames.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import JOB_ENV, serving
from tests.e2e.test_jobs import wait_job
from tests.file_server import FileServer, file_server
from tests.helpers import make_workflows_dir, png_array, service_env
from tests.media_samples import half_masked_png, png, video, wav

pytestmark = pytest.mark.e2e

MAX_UPLOAD = 200_000


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with file_server() as served:
        yield served


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("inputs_serve")
    workflows = make_workflows_dir(root / "workflows", extra=("inputs", "video_input"))
    env = {**service_env(workflows, root / "work"), **JOB_ENV, "COMFYBENTO_WARMUP": "0",
           "COMFYBENTO_INPUT_URL_ALLOWLIST": "localhost", "COMFYBENTO_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}
    with serving(env, root) as url:
        yield url


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _outputs(resp: httpx.Response) -> dict[str, np.ndarray]:
    assert resp.status_code == 200, resp.text[:500]
    return {o["name"]: png_array(o["data"]) for o in resp.json()["outputs"]}


def test_the_same_image_by_upload_base64_data_uri_and_url(server, files):
    image = half_masked_png()
    url = files.add("/photo.png", image, "image/png")
    mask = _b64(png())
    by_upload = httpx.post(f"{server}/inputs", files={"image": ("p.png", image, "image/png"), "mask": ("m.png", png(), "image/png")},
                           timeout=120)
    by_b64 = httpx.post(f"{server}/inputs", json={"image": _b64(image), "mask": mask}, timeout=120)
    by_data_uri = httpx.post(f"{server}/inputs", json={"image": f"data:image/png;base64,{_b64(image)}", "mask": mask}, timeout=120)
    by_url = httpx.post(f"{server}/inputs", json={"image": url, "mask": mask}, timeout=120)
    by_url_part = httpx.post(f"{server}/inputs", files={"image": (None, url), "mask": ("m.png", png(), "image/png")}, timeout=120)
    results = [_outputs(r) for r in (by_upload, by_b64, by_data_uri, by_url, by_url_part)]
    inverted = results[0]["inverted"]
    assert inverted.shape == (64, 64, 3) and (inverted == 0).all()  # white in, black out
    for other in results[1:]:
        assert all((other[name] == results[0][name]).all() for name in ("inverted", "alpha_mask"))
    assert "/photo.png" in files.hits


def test_mask_inputs(server):
    resp = httpx.post(f"{server}/inputs", json={"image": _b64(half_masked_png()), "mask": _b64(half_masked_png())}, timeout=120)
    out = _outputs(resp)
    alpha = out["alpha_mask"]  # LoadImage's MASK: 1 where the image is transparent (its left half)
    assert (alpha[:, :32] == 255).all() and (alpha[:, 32:] == 0).all()
    assert (out["red_mask"] == 255).all()  # LoadImageMask's red channel of a white image


def test_sidecar_exposed_combo_boolean_int_and_float(server):
    files = {"image": _b64(png()), "mask": _b64(png())}
    default = _outputs(httpx.post(f"{server}/inputs", json=files, timeout=120))["styled"]
    assert default.shape == (64, 128, 3)  # the image and its inverse side by side
    chosen = {"direction": "down", "match_image_size": False, "spacing_width": 2, "scale_by": 0.5, "resize_method": "area"}
    styled = _outputs(httpx.post(f"{server}/inputs", json={**files, **chosen}, timeout=120))["styled"]
    assert styled.shape == (65, 32, 3)  # (64 + 2 + 64) x 64 stacked down, halved
    for field, bad in (("direction", "sideways"), ("match_image_size", "maybe"), ("spacing_width", 2000), ("scale_by", 9.5),
                       ("resize_method", "nearest")):
        resp = httpx.post(f"{server}/inputs", json={**files, field: bad}, timeout=60)
        assert resp.status_code == 400 and field in resp.text, (field, resp.text[:300])
    props = next(v for k, v in httpx.get(f"{server}/docs.json", timeout=30).json()["components"]["schemas"].items()
                 if k == "InputsInput")["properties"]
    assert props["direction"]["enum"] == ["right", "down", "left", "up"] and props["match_image_size"]["type"] == "boolean"
    assert (props["scale_by"]["type"], props["scale_by"]["minimum"], props["scale_by"]["maximum"]) == ("number", 0.01, 8.0)
    assert (props["spacing_width"]["type"], props["spacing_width"]["maximum"]) == ("integer", 1024)


def test_the_schema_types_files_as_uploads_or_strings(server):
    schemas = httpx.get(f"{server}/docs.json", timeout=30).json()["components"]["schemas"]
    props = next(v for k, v in schemas.items() if k == "InputsInput")["properties"]
    assert (props["image"]["type"], props["image"]["format"]) == ("string", "binary")
    assert "http(s) URL" in props["mask"]["description"] and "data: URI" in props["mask"]["description"]


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/photo.png", "http://10.0.0.1/photo.png",
                                    "http://169.254.169.254/latest/meta-data/", "http://[::1]:{port}/photo.png"])
def test_internal_urls_and_redirects_to_them_are_refused(server, files, target):
    files.add("/photo.png", png(), "image/png")
    direct = target.format(port=files.port)
    hop = files.redirect(f"/hop{abs(hash(target))}", direct)
    for url in (direct, hop):
        resp = httpx.post(f"{server}/inputs", json={"image": url, "mask": _b64(png())}, timeout=60)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"].startswith("image: address ") and "allow-list" in resp.json()["error"]


def test_a_url_body_over_the_limit_is_a_413(server, files):
    big = files.add("/big.png", b"\x89PNG" + b"\0" * (MAX_UPLOAD + 10), "image/png")
    chunked = files.add("/big-chunked.png", b"\x89PNG" + b"\0" * (MAX_UPLOAD + 10), "image/png", chunked=True)
    for url in (big, chunked):
        resp = httpx.post(f"{server}/inputs", json={"image": url, "mask": _b64(png())}, timeout=60)
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"].startswith("image: ") and "max_upload_bytes" in resp.json()["error"]


def test_a_wrong_content_type_is_a_4xx_naming_the_field(server, files):
    page = files.add("/page.html", b"<html>hello</html>", "text/html")
    by_url = httpx.post(f"{server}/inputs", json={"image": page, "mask": _b64(png())}, timeout=60)
    assert by_url.status_code == 422 and by_url.json()["error"].startswith("image: ") and "text/html" in by_url.json()["error"]
    as_data_uri = httpx.post(f"{server}/inputs", json={"image": _b64(png()), "mask": f"data:text/plain;base64,{_b64(png())}"},
                             timeout=60)
    assert as_data_uri.status_code == 422 and as_data_uri.json()["error"].startswith("mask: ")
    not_an_image = httpx.post(f"{server}/inputs", files={"image": ("p.png", b"just text", "image/png"),
                                                         "mask": ("m.png", png(), "image/png")}, timeout=60)
    assert not_an_image.status_code == 422 and not_an_image.json()["error"].startswith("image: not a PNG")
    declared_text = httpx.post(f"{server}/inputs", files={"image": ("p.txt", png(), "text/plain"),
                                                          "mask": ("m.png", png(), "image/png")}, timeout=60)
    assert declared_text.status_code == 400 and "image" in declared_text.text


def test_job_items_take_base64_and_urls(server, files):
    url = files.add("/job.png", half_masked_png(), "image/png")
    items = [{"image": url, "mask": _b64(png())}, {"image": f"data:image/png;base64,{_b64(half_masked_png())}", "mask": url},
             {"image": files.url("/photo.png", host="127.0.0.1"), "mask": url}]
    resp = httpx.post(f"{server}/jobs", json={"workflow": "inputs", "items": items}, timeout=60)
    assert resp.status_code == 202, resp.text
    status = wait_job(server, resp.json()["id"])
    assert [i["state"] for i in status["items"]] == ["succeeded", "succeeded", "failed"]
    results = httpx.get(f"{server}/jobs/{resp.json()['id']}/results", timeout=30).json()["items"]
    assert "allow-list" in results[2]["error"]["message"] and results[2]["error"]["message"].startswith("image: ")
    first = {o["output"]: png_array(httpx.get(o["url"], timeout=30).content) for o in results[0]["outputs"]}
    assert (first["alpha_mask"][:, :32] == 255).all() and (first["alpha_mask"][:, 32:] == 0).all()
    bad = httpx.post(f"{server}/jobs", json={"workflow": "inputs", "items": [{"image": "not base64!", "mask": url}]}, timeout=60)
    assert bad.status_code == 422 and "image" in bad.text


def test_a_video_input_by_base64_and_url(server, files):
    clip = video(frames=8)
    url = files.add("/clip.mp4", clip, "video/mp4")
    for source in (_b64(clip), url):
        resp = httpx.post(f"{server}/video_input", json={"video": source}, timeout=120)
        assert resp.status_code == 200, resp.text[:500]
        frames = [png_array(o["data"]) for o in resp.json()["outputs"]]
        assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
    uploaded = httpx.post(f"{server}/video_input", files={"video": ("c.mp4", clip, "video/mp4")}, timeout=120)
    assert uploaded.status_code == 200 and len(uploaded.json()["outputs"]) == 8
    sound = httpx.post(f"{server}/video_input", json={"video": _b64(wav())}, timeout=60)
    assert sound.status_code == 422 and sound.json()["error"].startswith("video: the wav file has no video stream")
