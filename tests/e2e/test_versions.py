"""Two versions of txt2img served side by side through a real `bentoml serve`: their routes, the alias that
versions.yaml points, a switch while a request is in flight, a job's version, the metric."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import serving
from tests.e2e.test_jobs import wait_job
from tests.e2e.test_progress import sse_frames
from tests.helpers import ROOT, png_array, service_env

pytestmark = pytest.mark.e2e

HEADER = "X-Comfybento-Workflow-Version"
SIZES = {"v1": (64, 64), "v2": (96, 64)}  # (width, height) of each version's graph: what tells their images apart


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(the server's URL, its versions.yaml)."""
    root = tmp_path_factory.mktemp("versions_serve")
    folder = root / "workflows" / "txt2img"
    folder.mkdir(parents=True)
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    for version, (width, height) in SIZES.items():
        graph["3"]["inputs"]["steps"] = 2
        graph["5"]["inputs"].update(width=width, height=height)
        (folder / f"{version}.json").write_text(json.dumps(graph))
    (folder / "versions.yaml").write_text("default: v1\n")
    env = {**service_env(root / "workflows", root / "work"), "COMFYBENTO_MAX_EXECUTION_S": "600"}
    with serving(env, root) as url:
        yield url, folder / "versions.yaml"


def _run(url: str, path: str, **fields: object) -> tuple[str, tuple[int, int]]:
    """(the version that answered, the image's (width, height))."""
    resp = httpx.post(f"{url}/{path}", json={"prompt": "a lighthouse", "seed": 3, **fields}, timeout=300)
    assert resp.status_code == 200, resp.text
    height, width, _ = png_array(resp.json()["outputs"][0]["data"]).shape
    return resp.headers[HEADER], (width, height)


def _switch(versions_yaml: Path, text: str) -> None:
    """A new versions.yaml, as an operator writes it (a later modification time), then the one second it may take."""
    before = versions_yaml.stat().st_mtime_ns
    versions_yaml.write_text(text)
    os.utime(versions_yaml, ns=(before + 2_000_000_000, before + 2_000_000_000))
    time.sleep(1.2)


def test_each_version_answers_at_its_own_route(served):
    url, _ = served
    assert _run(url, "txt2img/v1") == ("v1", SIZES["v1"])
    assert _run(url, "txt2img/v2") == ("v2", SIZES["v2"])
    raw = httpx.post(f"{url}/txt2img/v2/png", json={"steps": 1}, timeout=300)
    assert raw.status_code == 200 and raw.headers[HEADER] == "v2" and raw.headers["content-type"] == "image/png"
    paths = httpx.get(f"{url}/docs.json", timeout=30).json()["paths"]
    assert {"/txt2img", "/txt2img/v1", "/txt2img/v2", "/txt2img/v1/stream", "/txt2img/png"} <= set(paths)


def test_the_alias_follows_versions_yaml_and_a_switch_spares_the_request_in_flight(served):
    url, versions_yaml = served
    assert _run(url, "txt2img") == ("v1", SIZES["v1"])
    later: dict[str, tuple[str, tuple[int, int]]] = {}
    slow = {"prompt": "in flight", "seed": 4, "steps": 30, "width": 128, "height": 128}
    with httpx.stream("POST", f"{url}/txt2img/stream", json=slow, timeout=300) as resp:
        assert resp.status_code == 200 and resp.headers[HEADER] == "v1"
        frames = sse_frames(resp)
        seen = [kind for kind, _ in itertools.takewhile(lambda f: f[0] != "progress", frames)]
        assert "done" not in seen  # running on the engine now: the switch comes while it is in flight
        _switch(versions_yaml, "default: v1\nweights: {v1: 0, v2: 1}\n")
        after = threading.Thread(target=lambda: later.update(answer=_run(url, "txt2img")))
        after.start()  # routed by the new weights while the first is still open, no restart
        rest = list(frames)
    assert rest[-1][0] == "done" and rest[-1][1]["workflow"] == "txt2img_v1", rest[-1]
    after.join(timeout=300)
    assert later["answer"] == ("v2", SIZES["v2"])
    _switch(versions_yaml, "default: v1\nweights: {v1: -5}\n")  # a bad file: the routing stays as it was
    assert _run(url, "txt2img")[0] == "v2"
    _switch(versions_yaml, "default: v1\n")
    assert _run(url, "txt2img")[0] == "v1"


def test_a_job_records_the_version_it_ran(served):
    url, _ = served
    for workflow, version in (("txt2img", "v1"), ("txt2img/v2", "v2")):
        resp = httpx.post(f"{url}/jobs", json={"workflow": workflow, "items": [{"prompt": "a kite", "steps": 1}]}, timeout=30)
        assert resp.status_code == 202, resp.text
        done = wait_job(url, resp.json()["id"])
        assert (done["state"], done["version"], done["workflow"]) == ("succeeded", version, f"txt2img_{version}")


def test_the_metric_counts_the_alias_requests_by_version(served):
    url, _ = served
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counted = {(s.labels["workflow"], s.labels["version"]): s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "comfybento_alias_requests_total"}
    assert counted[("txt2img", "v1")] >= 3 and counted[("txt2img", "v2")] >= 2, counted
