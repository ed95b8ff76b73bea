"""`bentoml build` of the project, and `bentoml serve <tag>` of the Bento it makes.

The build needs no model file on disk; the Bento asks for a GPU for the engine and lets many requests in flight
per entry replica (no external queue); served from its tag it fetches its models into the cache, not the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import wait_gone
from tests.e2e.conftest import BENTOML, SERVER_MARKER, wait_ready
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.e2e


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_bentoml_build_then_serve_from_the_tag(tmp_path):
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    env = {**os.environ, "COMFYBENTO_MODELS": str(empty_models), "BENTOML_HOME": str(tmp_path / "bentoml-home"),
           "COMFYBENTO_WORK_DIR": str(tmp_path / "work")}
    out = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = next(line for line in out.stdout.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")
    bento_dir = tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/")
    assert (bento_dir / "src" / "service.py").is_file() and (bento_dir / "src" / "models.lock").is_file()
    assert not list(bento_dir.rglob("*.safetensors"))
    config = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    services = {svc["name"]: svc["config"] for svc in config["services"]}
    assert services["comfybento-engine"]["resources"] == {"gpu": 1}  # built on a CPU machine, for a GPU deployment
    front = services["comfybento"]["traffic"]
    assert front["external_queue"] is False and front["concurrency"] >= 64

    before = _files(bento_dir)
    port, marker = free_port(), uuid.uuid4().hex
    serve_env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home"), "COMFYBENTO_CPU": "1",
                 "COMFYBENTO_CACHE_DIR": str(tmp_path / "cache"), SERVER_MARKER: marker}
    for name in ("COMFYBENTO_MODELS", "COMFYBENTO_WORK_DIR", "COMFYBENTO_WORKFLOWS"):
        serve_env.pop(name, None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=serve_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log_path, timeout=400)
        resp = httpx.post(f"http://127.0.0.1:{port}/txt2img", json={"steps": 2, "width": 64, "height": 64, "seed": 1}, timeout=120)
        assert resp.status_code == 200, resp.text
        assert (tmp_path / "cache" / "models" / "checkpoints" / "tiny-sd.safetensors").is_file()  # fetched, into the cache
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        for leftover in wait_gone(SERVER_MARKER, marker, timeout=40):
            leftover.kill()
    written = _files(bento_dir) - before
    # Python writes the bytecode of service.py itself as it imports it; everything after goes to the cache.
    assert {w for w in written if "__pycache__" not in w} == set(), written
    assert all((w.startswith("src/__pycache__") and "service." in w) or w == "src/__pycache__" for w in written), written
