"""`bentoml build` of the project, and `bentoml serve <tag>` of the Bento it makes.

The build needs no model file on disk; the Bento asks for a GPU for the engine and lets many requests in flight
per entry replica (no external queue); served from its tag it fetches its models into the cache, not the store,
and never touches the folder it is started in. The Bento carries exactly what serving needs, and its Dockerfile
(read, not run: no Docker daemon here) installs the locked set, then the ComfyUI tree and the custom nodes once
their files are in the image.
"""

from __future__ import annotations

import os
import re
import shutil
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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, Path, Path]:
    """(tag, the Bento's folder, the tmp folder of its BentoML home): one `bentoml build` for the module."""
    tmp_path = tmp_path_factory.mktemp("bento")
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    env = {**os.environ, "COMFYBENTO_MODELS": str(empty_models), "BENTOML_HOME": str(tmp_path / "bentoml-home"),
           "COMFYBENTO_WORK_DIR": str(tmp_path / "work")}
    out = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = next(line for line in out.stdout.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")
    return tag, tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/"), tmp_path


def test_the_bento_carries_exactly_what_serving_needs(built):
    _, bento_dir, _ = built
    src = {f for f in _files(bento_dir / "src") if (bento_dir / "src" / f).is_file()}
    top = {"service.py", "bentofile.yaml", "README.md", "models.lock", "requirements-comfyui.txt", "scripts/bento-setup.sh"}
    allowed = re.compile(r"comfybento/.*\.py|comfybento/front/static/[^/]+|workflows/([^/]+/)?[^/]+\.(json|yaml)|custom_nodes/.+|inputs/.+")
    assert {f for f in src if f not in top and not allowed.fullmatch(f)} == set()
    assert not [f for f in src if "node_modules" in f or f.startswith(("bench/", "tests/", "docs/", "clients/"))]
    assert top <= src and "comfybento/front/app.py" in src and "workflows/txt2img.json" in src


def test_the_bento_installs_exactly_the_locked_set(built):
    _, bento_dir, _ = built
    installed = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    # Every package of the lock with its hashes; BentoML appends its own pin, bentoml==1.4.39 (the lock has it too).
    assert _requirements(installed) == _requirements((ROOT / "requirements-bento.lock").read_text()) | {("bentoml==1.4.39",)}
    config = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert config["image"]["python_requirements"] == installed  # not re-resolved at build time (lock_python_packages)


def _requirements(text: str) -> set[tuple[str, ...]]:
    """Each requirement of a requirements file as (name==version, its hashes sorted)."""
    joined = re.sub(r"\\\n", " ", text)
    return {(words[0], *sorted(words[1:])) for line in joined.splitlines() if (words := line.split()) and not line.startswith("#")}


def _dockerfile(bento_dir: Path) -> list[str]:
    return [line.strip() for line in (bento_dir / "env" / "docker" / "Dockerfile").read_text().splitlines()]


def _index(lines: list[str], pattern: str) -> int:
    found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert found, f"no line of the Dockerfile matches {pattern!r}"
    return found[0]


def test_the_dockerfile_installs_comfyui_and_the_custom_nodes_after_their_files_are_copied(built):
    _, bento_dir, _ = built
    lines = _dockerfile(bento_dir)
    pip_install = _index(lines, r"pip install -r \$BENTO_PATH/env/python/requirements\.txt")
    comfyui = _index(lines, r"^RUN bash src/scripts/bento-setup\.sh$")
    nodes = _index(lines, r"^RUN cd src && python -m comfybento nodes install --dir custom_nodes$")
    for copied in ("comfybento", "custom_nodes", "requirements-comfyui.txt", "scripts/bento-setup.sh"):
        assert _index(lines, rf"^COPY \S+ \./src/{re.escape(copied)} \./src/{re.escape(copied)}$") < pip_install < comfyui < nodes
    assert (bento_dir / "src" / "scripts" / "bento-setup.sh").read_text().count("-r src/requirements-comfyui.txt") == 2
    assert re.search(r"apt-get install .*\bgit\b", "\n".join(lines[:pip_install]))  # the nodes are cloned with git
    assert nodes < _index(lines, r"^COPY --chown=bentoml:bentoml \. \./$")  # the rest of the Bento comes after


def test_the_dockerfile_gets_torch_built_for_cuda_13(built):
    _, bento_dir, _ = built
    lines = _dockerfile(bento_dir)
    assert _index(lines, r"^FROM ") == _index(lines, r"^FROM python:3\.11-slim AS base-container$")
    installed = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0 \\\n\s+--hash=sha256:", installed, re.M)
    cuda = re.search(r"^nvidia-cuda-runtime==(\d+\.\d+)\.", installed, re.M)
    assert cuda and cuda[1] == "13.0"
    documented = (ROOT / "README.md").read_text() + (ROOT / "docs" / "deploying.md").read_text()
    assert f"CUDA {cuda[1]}" in documented and "TORCH_INDEX=https://download.pytorch.org/whl/" in documented


def _decoy_checkout(folder: Path) -> dict[str, bytes]:
    """A project checkout to start `bentoml serve <tag>` in: its own comfybento package and .comfybento/ state."""
    shutil.copytree(ROOT / "comfybento", folder / "comfybento", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / ".comfybento").mkdir()
    (folder / ".comfybento" / "webhook-secret").write_text("whsec_" + "A" * 44)
    return _tree(folder)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_bentoml_serve_from_the_tag_in_a_checkout(built, tmp_path):
    tag, bento_dir, home = built
    config = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    services = {svc["name"]: svc["config"] for svc in config["services"]}
    assert services["comfybento-engine"]["resources"] == {"gpu": 1}  # built on a CPU machine, for a GPU deployment
    front = services["comfybento"]["traffic"]
    assert front["external_queue"] is False and front["concurrency"] >= 64

    before = _files(bento_dir)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    decoy = _decoy_checkout(checkout)
    port, marker = free_port(), uuid.uuid4().hex
    serve_env = {**os.environ, "BENTOML_HOME": str(home / "bentoml-home"), "COMFYBENTO_CPU": "1",
                 "COMFYBENTO_CACHE_DIR": str(tmp_path / "cache"), SERVER_MARKER: marker}
    for name in ("COMFYBENTO_MODELS", "COMFYBENTO_WORK_DIR", "COMFYBENTO_WORKFLOWS"):
        serve_env.pop(name, None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", str(port)], env=serve_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=checkout)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log_path, timeout=400)
        resp = httpx.post(f"http://127.0.0.1:{port}/txt2img", json={"steps": 2, "width": 64, "height": 64, "seed": 1}, timeout=120)
        assert resp.status_code == 200, resp.text
        assert (tmp_path / "cache" / "models" / "checkpoints" / "tiny-sd.safetensors").is_file()  # fetched, into the cache
        assert (tmp_path / "cache" / ".comfybento" / "webhook-secret").is_file()  # the Bento's own, not the checkout's
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        for leftover in wait_gone(SERVER_MARKER, marker, timeout=40):
            leftover.kill()
    written = _files(bento_dir) - before
    # Python writes the bytecode of service.py itself as it imports it; everything after goes to the cache.
    assert {w for w in written if "__pycache__" not in w} == set(), written
    assert all((w.startswith("src/__pycache__") and "service." in w) or w == "src/__pycache__" for w in written), written
    # The folder it was started in: none of its state used, nothing written. (BentoML itself first tries the tag as an
    # import path there, and Python caches the bytecode of the checkout's comfybento/__init__.py: not ours to stop.)
    assert _tree(checkout) == decoy
