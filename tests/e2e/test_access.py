"""API keys, limits and CORS on the real service (`bentoml serve`), limits shared through a real redis-server."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from comfybento.front.keys import hash_key, new_key
from tests.e2e.conftest import start_server, stop_server, wait_ready
from tests.helpers import ROOT, make_workflows_dir, service_env
from tests.redis_server import redis_server

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example"
SMALL = {"prompt": "a kite", "width": 64, "height": 64, "steps": 1, "seed": 5}


@dataclass
class Served:
    url: str
    redis_url: str
    keys: dict[str, str]  # name -> secret


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("access")
    keys = {name: new_key() for name in ("alice", "slow", "tiny", "batch")}
    limits = {"alice": "", "slow": "  rate_per_min: 2\n", "tiny": "  images_per_day: 1\n", "batch": "  images_per_day: 1\n"}
    (root / "keys.yaml").write_text("".join(f'- name: {n}\n  sha256: "{hash_key(k)}"\n{limits[n]}' for n, k in keys.items()))
    keys["default"] = new_key()
    with redis_server(root) as redis_url:
        env = service_env(make_workflows_dir(root / "workflows", ()), root / "work")
        env.update(
            COMFYBENTO_API_KEYS_FILE=str(root / "keys.yaml"),
            COMFYBENTO_API_KEY=keys["default"],
            COMFYBENTO_CORS_ORIGINS=ORIGIN,
            COMFYBENTO_REDIS_URL=redis_url,
            COMFYBENTO_SUBMITTED_GRAPHS="any",  # for the unmatched-graph job below (one server for both)
        )
        log_path = root / "serve.log"
        proc, url = start_server(env, log_path)
        try:
            wait_ready(proc, url, log_path)
            yield Served(url, redis_url, keys)
        finally:
            stop_server(proc)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_requests_need_a_bearer_key(served):
    missing = httpx.get(f"{served.url}/jobs", timeout=30)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="comfybento"'
    assert "Authorization: Bearer <key>" in missing.json()["error"]
    no_scheme = httpx.get(f"{served.url}/jobs", headers={"Authorization": served.keys["alice"]}, timeout=30)
    assert no_scheme.status_code == 401 and "Bearer <key>" in no_scheme.json()["error"]
    wrong = httpx.get(f"{served.url}/jobs", headers=_auth(served.keys["alice"] + "x"), timeout=30)
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert httpx.post(f"{served.url}/txt2img", json=SMALL, timeout=30).status_code == 401
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{served.url}{path}", timeout=30).status_code == 200, path


def test_good_keys_are_served(served):
    assert httpx.get(f"{served.url}/jobs", headers=_auth(served.keys["alice"]), timeout=30).status_code == 200
    lower = httpx.get(f"{served.url}/jobs", headers={"Authorization": f"bearer {served.keys['alice']}"}, timeout=30)
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 6750)
    assert httpx.get(f"{served.url}/jobs", headers=_auth(served.keys["default"]), timeout=30).status_code == 200  # COMFYBENTO_API_KEY
    image = httpx.post(f"{served.url}/txt2img/png", json=SMALL, headers=_auth(served.keys["alice"]), timeout=300)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert "ratelimit-limit" not in image.headers  # alice has no limits
    data = httpx.post(f"{served.url}/txt2img", json=SMALL, headers=_auth(served.keys["alice"]), timeout=300)
    assert data.status_code == 200 and len(data.json()["outputs"]) == 1
    metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert 'comfybento_key_images_total{key="alice"} 2.0' in metrics


def test_rate_limit_answers_429_with_retry_after(served):
    codes = [httpx.get(f"{served.url}/jobs", headers=_auth(served.keys["slow"]), timeout=30) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in codes] == ["1", "0", "0"]
    third = codes[2]
    assert 1 <= int(third.headers["retry-after"]) <= 30 and third.headers["ratelimit-limit"] == "2"
    assert third.headers["ratelimit-policy"] == "2;w=60" and "2 requests/min" in third.json()["error"]
    # the bucket lives in Redis, where every replica would find it
    assert redis.Redis.from_url(served.redis_url).exists("comfybento:bucket:slow:requests")


def test_images_are_charged_and_a_spent_quota_is_refused_up_front(served):
    first = httpx.post(f"{served.url}/txt2img", json=SMALL, headers=_auth(served.keys["tiny"]), timeout=300)
    assert first.status_code == 200 and len(first.json()["outputs"]) == 1
    assert first.headers["ratelimit-limit"] == "1" and first.headers["ratelimit-policy"] == "1;w=86400"
    second = httpx.post(f"{served.url}/txt2img", json=SMALL, headers=_auth(served.keys["tiny"]), timeout=60)
    assert second.status_code == 429 and "1 images/day" in second.json()["error"]
    assert int(second.headers["retry-after"]) > 80_000 and second.headers["ratelimit-remaining"] == "0"
    assert httpx.get(f"{served.url}/jobs", headers=_auth(served.keys["tiny"]), timeout=30).status_code == 200  # reads still pass
    metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert 'comfybento_key_images_total{key="tiny"} 1.0' in metrics
    assert 'comfybento_key_refused_total{key="tiny",limit="quota"} 1.0' in metrics
    assert 'comfybento_key_requests_total{key="alice"}' in metrics and 'comfybento_key_gpu_seconds_total{key="tiny"}' in metrics


def test_cors_preflight_is_answered_before_auth(served):
    preflight = httpx.options(
        f"{served.url}/txt2img",
        timeout=30,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        f"{served.url}/txt2img", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, timeout=30
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    refused = httpx.get(f"{served.url}/jobs", headers={"Origin": ORIGIN}, timeout=30)  # a browser can read why it was refused
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()


def _metric(served: Served, name: str, key: str) -> float:
    found = re.search(rf'^{name}{{key="{key}"}} (\S+)$', httpx.get(f"{served.url}/metrics", timeout=30).text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _finished_job(served: Served, job_id: str, key: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{served.url}/jobs/{job_id}", headers=_auth(key), timeout=30).json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {status}")


def test_a_jobs_images_are_charged_to_the_key_that_submitted_it(served):
    before = _metric(served, "comfybento_key_images_total", "alice"), _metric(served, "comfybento_key_gpu_seconds_total", "alice")
    job = {"workflow": "txt2img", "base": {"width": 64, "height": 64, "steps": 2}, "fanout": {"prompt": ["a kite", "a boat"]}}
    alice = httpx.post(f"{served.url}/jobs", json=job, headers=_auth(served.keys["alice"]), timeout=60)
    assert alice.status_code == 202, alice.text
    assert alice.json()["owner"] == "alice" and alice.json()["usage"] == {"images": 0, "gpu_seconds": 0.0}
    one = {"workflow": "txt2img", "items": [{"prompt": "a cup", "width": 64, "height": 64, "steps": 2}]}
    batch = httpx.post(f"{served.url}/jobs", json=one, headers=_auth(served.keys["batch"]), timeout=60)
    assert batch.status_code == 202, batch.text
    status = _finished_job(served, alice.json()["id"], served.keys["alice"])
    assert status["state"] == "succeeded" and status["owner"] == "alice"
    assert status["usage"]["images"] == 2 and status["usage"]["gpu_seconds"] > 0
    assert _metric(served, "comfybento_key_images_total", "alice") - before[0] == 2
    assert _metric(served, "comfybento_key_gpu_seconds_total", "alice") - before[1] == pytest.approx(status["usage"]["gpu_seconds"])
    # the job's image spent the batch key's quota of 1 a day, as a live request's would: its next request is refused
    assert _finished_job(served, batch.json()["id"], served.keys["batch"])["usage"]["images"] == 1
    refused = httpx.post(f"{served.url}/txt2img", json=SMALL, headers=_auth(served.keys["batch"]), timeout=60)
    assert refused.status_code == 429 and "1 images/day" in refused.json()["error"]
    assert _metric(served, "comfybento_key_images_total", "batch") == 1


def _ws_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status the server answers a websocket handshake with (101: accepted and upgraded)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(url, additional_headers=headers or {}, open_timeout=30):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


def test_every_route_of_the_entry_service_needs_the_key_websockets_too(served):
    ws = served.url.replace("http://", "ws://")
    for method, path in (
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/jobs/nope"),
        ("GET", "/prompt"),
        ("GET", "/object_info"),
        ("POST", "/api/v2/jobs"),
        ("POST", "/txt2img/stream"),
        ("GET", "/view?filename=x.png"),
    ):
        assert httpx.request(method, f"{served.url}{path}", timeout=30).status_code == 401, path
    assert httpx.get(f"{served.url}/jobs?token={served.keys['alice']}", timeout=30).status_code == 401  # headers only over HTTP
    assert (
        httpx.post(
            f"{served.url}/jobs", json={"workflow": "nope", "items": [{}]}, headers=_auth(served.keys["alice"]), timeout=30
        ).status_code
        == 422
    )
    # A websocket without a key is refused at the handshake; with ?token= (or the header) it reaches ComfyUI's /ws.
    assert _ws_status(f"{ws}/ws?clientId=abc") == 401
    assert _ws_status(f"{ws}/ws?clientId=abc&token={served.keys['alice']}x") == 401
    assert _ws_status(f"{ws}/ws?clientId=abc&token={served.keys['alice']}") == 101
    assert _ws_status(f"{ws}/ws", headers=_auth(served.keys["alice"])) == 101
    basic = base64.b64encode(f"anyone:{served.keys['alice']}".encode()).decode()
    assert _ws_status(f"{ws}/api/ws?clientId=abc", headers={"Authorization": f"Basic {basic}"}) == 101
    # The docs page and its document need no key; the page's own calls do.
    assert httpx.get(f"{served.url}/docs", timeout=30).status_code == 200
    assert httpx.get(f"{served.url}/docs.json", timeout=30).status_code == 200


def test_a_job_of_an_unmatched_graph_runs_alone_for_its_key(served):
    """COMFYBENTO_SUBMITTED_GRAPHS=any: a graph no workflow serves runs, checked, through the jobs API to the engine."""
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["3"]["inputs"].update(steps=2, seed=9)
    graph["5"]["inputs"].update(width=64, height=64)
    graph["100"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    headers = _auth(served.keys["alice"])
    assert httpx.post(f"{served.url}/jobs", json={"workflow": "_graph", "items": [{"graph": graph}]}, timeout=30).status_code == 401
    bad = json.loads(json.dumps(graph))
    bad["4"]["inputs"]["ckpt_name"] = "../../etc/passwd.safetensors"
    refused = httpx.post(f"{served.url}/jobs", json={"workflow": "_graph", "items": [{"graph": bad}]}, headers=headers, timeout=30)
    assert refused.status_code == 422 and "is not in models.lock" in refused.text
    created = httpx.post(f"{served.url}/jobs", json={"workflow": "_graph", "items": [{"graph": graph}]}, headers=headers, timeout=30)
    assert created.status_code in (200, 201, 202), created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 240
    while (status := httpx.get(f"{served.url}/jobs/{job_id}", headers=headers, timeout=30).json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["state"] == "succeeded" and status["owner"] == "alice" and status["workflow"] == "_graph", status
    [item] = httpx.get(f"{served.url}/jobs/{job_id}/results", headers=headers, timeout=30).json()["items"]
    assert item["batch_size"] == 1 and [o["kind"] for o in item["outputs"]] == ["image", "image"]  # SaveImage and PreviewImage
    assert len({o["output"] for o in item["outputs"]}) == 2
