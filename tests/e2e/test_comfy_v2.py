"""Comfy API v2 (/api/v2) against a real `bentoml serve`, driven by the official SDKs, unchanged: only COMFY_BASE_URL
points at the service. comfy-sdk (PyPI) here; @comfyorg/sdk (npm) through tests/js/comfy-v2/run.mjs.

Each uploads an asset, submits the served img2img graph with that asset and a new prompt and seed, follows the
job's events to its end, downloads the output image and decodes it. The idempotency key is single-use (the
spec's rule: a reused key is refused with 422 idempotency_key_reuse, no second job), cancel and a mismatched
graph (refused with the first difference) are checked too.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import uuid

import httpx
import pytest
from PIL import Image

from comfybento.front.keys import hash_key, new_key
from tests.e2e.conftest import JOB_ENV, serving
from tests.helpers import GRAPHS, ROOT, make_workflows_dir, renumbered, sample_image, service_env

pytestmark = pytest.mark.e2e

comfy_sdk = pytest.importorskip("comfy_sdk")
JS = ROOT / "tests" / "js" / "comfy-v2"


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    sample_image(width, height).save(buf, format="PNG")
    return buf.getvalue()


def img2img_graph() -> dict:
    return json.loads((GRAPHS / "img2img.json").read_text())


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.setenv("COMFY_BASE_URL", server)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    with comfy_sdk.Comfy(timeout=120) as c:
        yield c


def test_sdk_uploads_submits_follows_events_and_downloads_the_image(client, server):
    image = png_bytes()
    asset = client.assets.from_bytes(image, filename="photo.png", content_type="image/png")
    asset_id = asset.commit()
    assert asset.created_new is True
    again = client.assets.from_bytes(image, filename="again.png", content_type="image/png")
    assert again.commit() != asset_id and again.created_new is False  # the dedup path: HEAD by-hash, then from-hash
    content = httpx.get(f"{server}/api/v2/assets/{asset_id}/content", timeout=30)
    assert content.status_code == 200 and content.content == image

    graph = img2img_graph()
    graph["6"]["inputs"]["text"] = "a comfy v2 lighthouse"
    graph["3"]["inputs"]["seed"] = 1234
    wf = client.workflows.from_json(graph)
    wf.set_input("10", "image", asset)
    job = client.submit(wf)
    assert job.status in ("queued", "running")

    events = list(job.events())
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "StatusChange" and events[-1].status == "succeeded", kinds
    assert "OutputReady" in kinds, kinds
    job.refresh()
    assert job.status == "succeeded"
    [out] = job.get_outputs("9")
    assert out.type == "image" and out.content_type == "image/png" and out.size_bytes > 0
    picture = Image.open(io.BytesIO(out.to_bytes()))
    picture.load()
    assert picture.size == (64, 64)

    stored = job.get_workflow()
    assert stored.format == "api" and stored.graph["6"]["inputs"]["text"] == "a comfy v2 lighthouse"
    assert stored.graph["10"]["inputs"]["image"]["info"]["id"] == asset_id
    # The same job through comfybento's own jobs API: one store, one job.
    own = httpx.get(f"{server}/jobs/{job.id}", timeout=30).json()
    assert own["workflow"] == "img2img" and own["state"] == "succeeded"


def test_a_reused_idempotency_key_is_refused_and_makes_no_second_job(client, server):
    wf = client.workflows.from_json(json.loads((ROOT / "workflows" / "txt2img.json").read_text()))
    key = str(uuid.uuid4())
    first = client.submit(wf, idempotency_key=key)
    count = len(httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"])
    with pytest.raises(comfy_sdk.ComfyError) as refused:
        client.submit(wf, idempotency_key=key)
    assert refused.value.code == "idempotency_key_reuse"
    assert len(httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"]) == count
    assert first.result().status == "succeeded"
    assert client.jobs.get(first.id).id == first.id  # the job the key made, found by its id
    assert sum(1 for summary in client.list_jobs(limit=20) if summary.id == first.id) == 1  # ... or in the list


def test_cancel_and_a_mismatched_graph(client, server):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["3"]["inputs"]["steps"] = 40
    job = client.submit(client.workflows.from_json(graph))
    job.cancel()
    assert job.status == "canceled"
    assert client.jobs.get(job.id).status == "canceled"
    assert job.cancel().status == "canceled"  # idempotent on a terminal job

    bad = copy.deepcopy(graph)
    bad["3"]["class_type"] = "KSamplerAdvanced"
    with pytest.raises(comfy_sdk.ComfyError) as refused:
        client.submit(client.workflows.from_json(bad))
    assert refused.value.code == "invalid_workflow"
    assert "'3'" in str(refused.value) and "KSampler" in str(refused.value)

    raw = httpx.post(f"{server}/api/v2/jobs", json={"workflow": {"10": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}}, timeout=30)
    assert raw.status_code == 422 and raw.json()["error"]["code"] == "invalid_workflow"


def test_a_renumbered_graph_s_outputs_come_under_its_own_node_ids(client, server):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["3"]["inputs"].update(steps=2, seed=31)
    job = client.submit(client.workflows.from_json(renumbered(graph)))
    events = list(job.events())
    assert events[-1].status == "succeeded", [type(e).__name__ for e in events]
    job.refresh()
    [out] = job.get_outputs("n9x")
    assert out.content_type == "image/png" and Image.open(io.BytesIO(out.to_bytes())).size == (128, 128)
    assert job.get_outputs("9") == []
    view = httpx.get(f"{server}/api/v2/jobs/{job.id}", timeout=30).json()
    assert [o["node_id"] for o in view["outputs"]] == ["n9x"]


def test_assets_refuse_a_wrong_hash_and_an_upload_over_the_limit(server):
    files = {"file": ("a.png", png_bytes(), "image/png")}
    wrong = httpx.post(f"{server}/api/v2/assets", files=files, timeout=30,
                       data={"content_type": "image/png", "file_path": "a.png", "expected_hash": "blake3:" + "0" * 64})
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "hash_mismatch"
    assert httpx.head(f"{server}/api/v2/assets/by-hash/blake3:{'1' * 64}", timeout=30).status_code == 404
    missing = httpx.get(f"{server}/api/v2/assets/{uuid.uuid4()}", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_npm_sdk_runs_unchanged(server):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the @comfyorg/sdk test needs it")
    assert (JS / "node_modules" / "@comfyorg" / "sdk").exists(), "run `npm ci` in tests/js/comfy-v2 (./scripts/test does)"
    env = {**os.environ, "COMFY_BASE_URL": server, "IMG2IMG_GRAPH": str(GRAPHS / "img2img.json")}
    env.pop("COMFY_API_KEY", None)
    run = subprocess.run([node, "run.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["png_width"] == 64 and result["reused_key"] == "idempotency_key_reuse"
    assert result["canceled"] == "canceled" and result["mismatch"] == "invalid_workflow"
    assert "status" in result["events"] and "output" in result["events"]


def test_api_keys_own_assets_and_jobs_and_a_job_survives_a_restart(tmp_path, monkeypatch):
    """The SDK's `api_key` is sent as `Authorization: Bearer`, comfybento's API keys; one key sees nothing of another's.
    A job submitted before a restart is still there after it (the store of /jobs), runs to the end, and keeps its graph."""
    keys = {name: new_key() for name in ("alice", "bob")}
    (tmp_path / "keys.yaml").write_text("".join(f'- name: {n}\n  sha256: "{hash_key(k)}"\n' for n, k in keys.items()))
    env = {**service_env(make_workflows_dir(tmp_path / "workflows", ("img2img",)), tmp_path / "work"), **JOB_ENV,
           "COMFYBENTO_API_KEYS_FILE": str(tmp_path / "keys.yaml")}
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["6"]["inputs"]["text"] = "before the restart"
    with serving(env, tmp_path) as url:
        monkeypatch.setenv("COMFY_BASE_URL", url)
        with comfy_sdk.Comfy() as anonymous, pytest.raises(comfy_sdk.ComfyError) as refused:
            anonymous.assets.from_bytes(png_bytes(), filename="a.png").commit()
        assert refused.value.http_status == 401
        with comfy_sdk.Comfy(api_key=keys["alice"], timeout=120) as alice, comfy_sdk.Comfy(api_key=keys["bob"], timeout=120) as bob:
            asset = alice.assets.from_bytes(png_bytes(), filename="a.png", content_type="image/png")
            asset.commit()
            mine = bob.assets.from_bytes(png_bytes(), filename="a.png", content_type="image/png")
            mine.commit()
            # same bytes, bob's own record: uploaded, not minted by hash, and new to bob (alice's upload is not confirmed)
            assert mine.created_new is True and mine.id != asset.id
            with pytest.raises(comfy_sdk.ComfyError) as hidden:
                bob.assets.get(asset.id)
            assert hidden.value.http_status == 404
            job_id = alice.submit(alice.workflows.from_json(graph)).id
            with pytest.raises(comfy_sdk.ComfyError) as not_bobs:
                bob.jobs.get(job_id)
            assert not_bobs.value.http_status == 404
    with serving(env, tmp_path) as url:
        monkeypatch.setenv("COMFY_BASE_URL", url)
        with comfy_sdk.Comfy(api_key=keys["alice"], timeout=120) as alice:
            job = alice.jobs.get(job_id).result()
            assert job.status == "succeeded" and job.get_outputs("9")
            assert job.get_workflow().graph["6"]["inputs"]["text"] == "before the restart"
