"""What seed users of a batch service expect, on the real service: presets, dry-run estimates and the quota checked up
front, retry of failed items, usage per key (issue 17, section 4)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from comfybento.front.keys import hash_key, new_key
from tests.e2e.conftest import serving
from tests.e2e.test_jobs import wait_job
from tests.e2e.test_progress import stream
from tests.helpers import make_workflows_dir, service_env

pytestmark = pytest.mark.e2e

SMALL = {"prompt": "a paper boat", "width": 64, "height": 64, "seed": 3}


def _png(server: str, body: dict) -> bytes:
    resp = httpx.post(f"{server}/txt2img/png", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.content


# ------------------------------------------------------------ presets


def test_a_preset_sets_the_fields_and_explicit_fields_override_it(server):
    frames = stream(server, "txt2img", {**SMALL, "preset": "fast"})  # fast: 8 steps, cfg 5, euler, normal
    assert {d["max"] for k, d in frames if k == "progress"} == {8} and frames[-1][0] == "done"
    by_preset = _png(server, {**SMALL, "preset": "fast", "steps": 2})
    by_hand = _png(server, {**SMALL, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"})
    without = _png(server, {**SMALL, "steps": 2})  # the graph's own cfg (8)
    assert by_preset == by_hand and by_preset != without
    unknown = httpx.post(f"{server}/txt2img", json={**SMALL, "preset": "turbo"}, timeout=60)
    assert unknown.status_code == 400 and "unknown preset 'turbo'; this workflow has fast, balanced, quality" in unknown.text
    schema = httpx.get(f"{server}/docs.json", timeout=30).json()["components"]["schemas"]["Txt2imgInput"]["properties"]["preset"]
    # nullable: null is one of its values (OpenAPI 3.0.3), as Schemathesis reads it
    assert schema["enum"] == ["fast", "balanced", "quality", None] and "fast: steps=8" in schema["description"]


def test_a_job_takes_a_preset_per_job_and_per_item(server):
    body = {"workflow": "txt2img", "preset": "fast", "base": {**SMALL, "steps": 1}, "fanout": {"seed": [1, 2]}}
    job = httpx.post(f"{server}/jobs", json=body, timeout=60).json()
    assert wait_job(server, job["id"])["state"] == "succeeded"
    refused = httpx.post(f"{server}/jobs", json={**body, "preset": "turbo"}, timeout=60)
    assert refused.status_code == 422 and "preset: unknown preset 'turbo'" in refused.json()["error"]
    bad_item = httpx.post(f"{server}/jobs", json={"workflow": "txt2img", "items": [{**SMALL, "preset": "turbo"}]}, timeout=60)
    assert bad_item.status_code == 422 and bad_item.json()["items"][0]["field"] == "preset"


# ------------------------------------------------------------ cost before running


def test_a_dry_run_estimates_and_queues_nothing(server):
    before = len(httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"])
    _png(server, {**SMALL, "steps": 2})  # the cost model learns from each result
    body = {"workflow": "txt2img", "cache": True, "base": {**SMALL, "steps": 2},
            "fanout": {"prompt": ["a", "b", "c"], "seed": [1, 2]}}
    resp = httpx.post(f"{server}/jobs/estimate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert (got["dry_run"], got["workflow"], got["items"], got["images"], got["cache_hits"]) == (True, "txt2img", 6, 6, 0)
    assert got["measured"] >= 1 and got["seconds_per_unit"] > 0 and got["gpu_seconds"] > 0
    assert got["quota"] == {"images_per_day": None, "remaining": None} and got["fits_quota"] is True
    assert len(httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"]) == before
    metrics = httpx.get(f"{server}/metrics", timeout=30).text
    assert 'comfybento_cost_seconds_per_unit{workflow="txt2img"}' in metrics


# ------------------------------------------------------------ retry only what failed


def test_retry_requeues_the_failed_items_only_with_the_same_seeds(server):
    items = [{"trigger": "fine", "steps": 1, "seed": 11}, {"trigger": "boom", "steps": 1, "seed": 12}]
    job_id = httpx.post(f"{server}/jobs", json={"workflow": "failing", "items": items}, timeout=60).json()["id"]
    assert wait_job(server, job_id)["counts"] == {"succeeded": 1, "failed": 1}
    first = httpx.get(f"{server}/jobs/{job_id}/results", timeout=30).json()["items"]
    retried = httpx.post(f"{server}/jobs/{job_id}/retry", timeout=30)
    assert retried.status_code == 200 and retried.json()["state"] in ("queued", "running")
    assert retried.json()["counts"].get("succeeded") == 1 and "failed" not in retried.json()["counts"]
    again = wait_job(server, job_id)
    assert again["state"] == "failed" and again["counts"] == {"succeeded": 1, "failed": 1}
    second = httpx.get(f"{server}/jobs/{job_id}/results", timeout=30).json()["items"]
    assert second[0] == first[0]  # the succeeded item is kept as it was
    assert (second[1]["seed"], second[1]["attempts"], second[1]["error"]["kind"]) == (12, 1, "node")  # run once more
    ok = httpx.post(f"{server}/jobs", json={"workflow": "failing", "items": items[:1]}, timeout=60).json()["id"]
    done = wait_job(server, ok)
    unchanged = httpx.post(f"{server}/jobs/{ok}/retry", timeout=30).json()
    assert unchanged["state"] == "succeeded" and unchanged["counts"] == done["counts"]  # nothing failed: nothing to do
    assert httpx.post(f"{server}/jobs/nope/retry", timeout=30).status_code == 404


# ------------------------------------------------------------ usage


def _usage(server: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.get(f"{server}/usage", params={"days": 2}, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_without_keys_usage_is_the_service_total(server):
    before = _usage(server)
    _png(server, {**SMALL, "steps": 1})
    after = _usage(server)
    assert after["scope"] == "total" and [k["key"] for k in after["keys"]] == [None]
    grew = {f: after["keys"][0]["total"][f] - (before["keys"][0]["total"][f] if before["keys"] else 0) for f in ("requests", "images")}
    assert grew == {"requests": 1, "images": 1} and after["keys"][0]["total"]["gpu_seconds"] > 0


@dataclass
class Keyed:
    url: str
    keys: dict[str, str]  # name -> secret

    def post(self, name: str, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers={"Authorization": f"Bearer {self.keys[name]}"}, timeout=300)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[Keyed]:
    root = tmp_path_factory.mktemp("features-keys")
    keys = {name: new_key() for name in ("alice", "tiny", "root")}
    extra = {"alice": "", "tiny": "  images_per_day: 2\n", "root": "  operator: true\n"}
    (root / "keys.yaml").write_text("".join(f'- name: {n}\n  sha256: "{hash_key(k)}"\n{extra[n]}' for n, k in keys.items()))
    env = service_env(make_workflows_dir(root / "workflows", ()), root / "work")
    env["COMFYBENTO_API_KEYS_FILE"] = str(root / "keys.yaml")
    with serving(env, root) as url:
        yield Keyed(url, keys)


def test_a_job_over_the_remaining_quota_is_refused_up_front(keyed):
    job = {"workflow": "txt2img", "base": {**SMALL, "steps": 1}, "fanout": {"seed": [1, 2, 3]}}
    estimate = keyed.post("tiny", "/jobs/estimate", job).json()
    assert estimate["quota"] == {"images_per_day": 2, "remaining": 2} and estimate["images"] == 3 and not estimate["fits_quota"]
    refused = keyed.post("tiny", "/jobs", job)
    assert refused.status_code == 429
    assert refused.json()["error"].startswith("API key 'tiny' has 2 of its 2 images/day left (images_per_day quota)")
    listed = httpx.get(f"{keyed.url}/jobs", headers={"Authorization": f"Bearer {keyed.keys['tiny']}"}, timeout=30).json()["jobs"]
    assert [j for j in listed if j["owner"] == "tiny"] == []  # nothing queued, nothing charged
    fits = keyed.post("tiny", "/jobs", {**job, "fanout": {"seed": [1, 2]}})
    assert fits.status_code == 202
    _wait_owned(keyed, "tiny", fits.json()["id"])


def test_a_key_sees_its_own_usage_and_an_operator_every_key(keyed):
    assert keyed.post("alice", "/txt2img/png", {**SMALL, "steps": 1}).status_code == 200
    job = keyed.post("alice", "/jobs", {"workflow": "txt2img", "items": [{**SMALL, "steps": 1}]}).json()
    _wait_owned(keyed, "alice", job["id"])
    mine = _usage(keyed.url, keyed.keys["alice"])
    assert mine["scope"] == "own" and [k["key"] for k in mine["keys"]] == ["alice"]
    assert {f: mine["keys"][0]["total"][f] for f in ("requests", "images")} == {"requests": 2, "images": 2}
    assert mine["keys"][0]["days"][-1]["day"] == mine["until"]
    everyone = _usage(keyed.url, keyed.keys["root"])
    assert everyone["scope"] == "all" and "alice" in {k["key"] for k in everyone["keys"]}  # not only its own


def _wait_owned(keyed: Keyed, name: str, job_id: str) -> None:
    """Wait for a job, read with its owner's key, to succeed."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = httpx.get(f"{keyed.url}/jobs/{job_id}", headers={"Authorization": f"Bearer {keyed.keys[name]}"}, timeout=30).json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            assert status["state"] == "succeeded", status
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")
