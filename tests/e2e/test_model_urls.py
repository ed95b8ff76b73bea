"""Models by URL through a real `bentoml serve`: downloaded once, then a hit; refusals by name; batched per model.

The workflow is the demo txt2img with its checkpoint exposed (`urls: true`); the models are the tiny checkpoint
restamped (other bytes and sha256, the same tensors: tests/model_urls.py), and a second workflow puts a LoRA
(LoraLoaderModelOnly, `urls: true`) after it: a rank-1 LoRA of the tiny checkpoint. All are served by a local HTTP server reached
as `localhost`, the one host COMFYBENTO_MODEL_URL_HOSTS names here (127.0.0.1 itself stays refused).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from comfybento.models.lock import sha256_file
from tests.e2e.conftest import serving
from tests.file_server import FileServer, file_server
from tests.helpers import ROOT, png_array, service_env
from tests.model_urls import restamped, tiny_lora

pytestmark = pytest.mark.e2e

TINY = ROOT / "models" / "checkpoints" / "tiny-sd.safetensors"
SIDECAR = "params:\n  - {node: '4', input: ckpt_name, name: checkpoint, urls: true}\n"
LORA_SIDECAR = "params:\n  - {node: '10', input: lora_name, name: lora, urls: true}\n"
NO_LORA = tiny_lora(0.0)  # the graph's own LoRA, in models.lock
BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1}
MODEL_A = restamped(TINY.read_bytes(), "a")
MODEL_B = restamped(TINY.read_bytes(), "b")
MAX_BYTES = len(MODEL_A) + 64 * 1024


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with file_server() as served:
        served.add("/a.safetensors", MODEL_A)
        served.add("/b.safetensors", MODEL_B)
        served.add("/pickle.ckpt", pickle.dumps({"state_dict": list(range(1000))}))
        served.add("/big.safetensors", restamped(TINY.read_bytes(), "x" * (2 * 64 * 1024)))
        yield served


@pytest.fixture(scope="module")
def server(tmp_path_factory, files) -> Iterator[str]:
    root = tmp_path_factory.mktemp("model_urls_serve")
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(TINY, root / "models" / "checkpoints" / TINY.name)
    (root / "models" / "loras").mkdir()
    (root / "models" / "loras" / "none.safetensors").write_bytes(NO_LORA)
    (root / "models.lock").write_text(
        f'[[models]]\npath = "checkpoints/{TINY.name}"\nsize = {TINY.stat().st_size}\nsha256 = "{sha256_file(TINY)}"\n'
        'source = { generator = "tiny-sd" }\n\n[[models]]\npath = "loras/none.safetensors"\n'
        f'size = {len(NO_LORA)}\nsha256 = "{hashlib.sha256(NO_LORA).hexdigest()}"\nsource = {{ url = "https://example.invalid/none" }}\n')
    workflows = root / "workflows"
    workflows.mkdir()
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    (workflows / "by_url.json").write_text(json.dumps(graph))
    (workflows / "by_url.yaml").write_text(SIDECAR)
    graph["10"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["4", 0], "lora_name": "none.safetensors", "strength_model": 1.0}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    (workflows / "lora_by_url.json").write_text(json.dumps(graph))
    (workflows / "lora_by_url.yaml").write_text(LORA_SIDECAR)
    env = {**service_env(workflows, root / "work"), "COMFYBENTO_MODELS": str(root / "models"),
           "COMFYBENTO_MODELS_LOCK": str(root / "models.lock"), "COMFYBENTO_WARMUP": "0",
           "COMFYBENTO_MODEL_URL_HOSTS": "localhost", "COMFYBENTO_MODEL_URL_MAX_BYTES": str(MAX_BYTES)}
    with serving(env, root) as url:
        yield url


def _post(server: str, checkpoint: Any = None, **extra: Any) -> httpx.Response:
    body = {**BODY, **extra, **({"checkpoint": checkpoint} if checkpoint is not None else {})}
    return httpx.post(f"{server}/by_url", json=body, timeout=300)


def _fetches(server: str) -> dict[str, float]:
    text = httpx.get(f"{server}/metrics", timeout=30).text
    return {m[1]: float(m[2]) for m in re.finditer(r'^comfybento_model_url_fetches_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def test_the_schema_takes_a_name_or_a_url_object(server):
    spec = httpx.get(f"{server}/docs.json").json()
    props = next(v for k, v in spec["components"]["schemas"].items() if k.startswith("ByUrl"))["properties"]
    text = json.dumps(props["checkpoint"])
    assert TINY.name in text and "sha256" in json.dumps(spec["components"]["schemas"]) and "by URL" in text


def test_the_first_request_downloads_the_second_is_a_cache_hit(server, files):
    url = files.url("/a.safetensors")
    first = _post(server, {"url": url}, seed=1)
    assert first.status_code == 200, first.text
    assert _fetches(server).get("download") == 1
    second = _post(server, {"url": url, "sha256": hashlib.sha256(MODEL_A).hexdigest()}, seed=2)
    assert second.status_code == 200, second.text
    assert _fetches(server).get("hit") == 1 and files.hits.count("/a.safetensors") == 1


def test_a_wrong_sha256_is_a_422_naming_both_hashes(server, files):
    resp = _post(server, {"url": files.url("/b.safetensors"), "sha256": "ab" * 32})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert "checkpoint" in error and "ab" * 32 in error and hashlib.sha256(MODEL_B).hexdigest() in error


def test_a_disallowed_host_is_a_400(server, files):
    direct = _post(server, {"url": files.url("/a.safetensors", host="127.0.0.1")})  # refused by the front, at once
    assert direct.status_code == 400 and "checkpoint" in direct.text and "allow-list" in direct.text, direct.text
    hop = files.redirect("/hop", files.url("/b.safetensors", host="127.0.0.1"))  # refused by the engine, at the redirect
    redirected = _post(server, {"url": hop})
    assert redirected.status_code == 400 and "checkpoint" in redirected.text and "127.0.0.1" in redirected.text, redirected.text


def test_an_oversized_file_is_a_413_naming_the_limit(server, files):
    resp = _post(server, {"url": files.url("/big.safetensors")})
    assert resp.status_code == 413 and "COMFYBENTO_MODEL_URL_MAX_BYTES" in resp.text, resp.text


def test_a_pickle_is_refused(server, files):
    resp = _post(server, {"url": files.url("/pickle.ckpt")})
    assert resp.status_code == 415 and "not a safetensors file" in resp.text and "checkpoint" in resp.text, resp.text
    assert _fetches(server).get("refused", 0) >= 3


def test_requests_for_one_url_batch_together_and_never_with_another_url(server, files):
    a, b = {"url": files.url("/a.safetensors")}, {"url": files.url("/b.safetensors")}
    assert _post(server, b).status_code == 200  # both in the cache: only the batching is measured
    with ThreadPoolExecutor(5) as pool:
        blocker = pool.submit(_post, server, None, steps=15, width=128, height=128, seed=9)  # holds the executor
        time.sleep(0.3)
        runs = [pool.submit(_post, server, model, seed=seed) for seed, model in enumerate((a, b, a, b))]
        results = [r.result() for r in runs]
        assert blocker.result().status_code == 200
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    sizes = [r.json()["timings"]["batch_size"] for r in results]
    assert sizes == [2, 2, 2, 2], sizes  # a with a, b with b: never four together


def test_a_lora_by_url_is_applied(server, files):
    url = files.add("/strong-lora.safetensors", tiny_lora(0.05))
    body = {**BODY, "seed": 3}
    plain = httpx.post(f"{server}/lora_by_url", json=body, timeout=300)
    lora = httpx.post(f"{server}/lora_by_url", json={**body, "lora": {"url": url}}, timeout=300)
    assert plain.status_code == lora.status_code == 200, (plain.text, lora.text)
    a, b = (png_array(r.json()["outputs"][0]["data"]).astype(float) for r in (plain, lora))
    assert np.abs(a - b).mean() > 1  # the downloaded LoRA changed the model


def test_the_file_is_stored_where_the_loader_finds_it(server, tmp_path_factory):
    root = Path(str(tmp_path_factory.getbasetemp())) / "model_urls_serve0"
    stored = sorted(p.name for p in (root / "models" / "checkpoints" / "comfybento-url").glob("*.safetensors"))
    assert stored == sorted(f"{hashlib.sha256(m).hexdigest()}.safetensors" for m in (MODEL_A, MODEL_B))
