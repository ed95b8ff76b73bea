"""The OpenAPI document is valid, and the server conforms to it under fuzzing (Schemathesis, every check).

Schemathesis runs with every check (`--checks all`: no 5xx, status codes, content types, headers and bodies as
documented, schema-valid requests accepted and schema-violating ones refused, the stateful checks), in positive and
negative mode; tests/e2e/schemathesis.toml holds the few exceptions, each with the reason it holds for this API.

Most runs are against a server with small limits, so that every request the fuzzer makes valid is cheap on the CPU
(requests over them must get a 4xx like any other bad input): the coverage phase once, and three seeds of the random
phases. One run is against the default limits (what a deployment has). The random runs are bounded in time
(`--max-time`: they repeat until it is spent), so the module takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.e2e.conftest import serving
from tests.helpers import ROOT, make_workflows_dir, service_env

pytestmark = pytest.mark.e2e

LIMITS = {
    "COMFYBENTO_MAX_IMAGE_PIXELS": str(64 * 96),
    "COMFYBENTO_MAX_REQUEST_PIXELS": str(2 * 64 * 96),
    "COMFYBENTO_MAX_IMAGES": "2",
    "COMFYBENTO_MAX_STEPS": "8",
    "COMFYBENTO_JOB_MAX_ITEMS": "3",
    "COMFYBENTO_MAX_BODY_BYTES": str(2 * 1024 * 1024),
}
# The demo workflow within those limits: its defaults (20 steps, 128 x 128) and presets are over them.
SIDECAR = """params:
  - {node: "3", input: steps, default: 4}
  - {node: "5", input: width, default: 64}
  - {node: "5", input: height, default: 64}
presets:
  fast: {steps: 2, cfg: 5.0}
  quality: {steps: 8, sampler_name: dpmpp_2m, scheduler: karras}
"""
CONFIG = Path(__file__).with_name("schemathesis.toml")
# /failing fails on purpose (its node raises: a 500 by design); the infra routes are BentoML's.
EXCLUDED = "^/(failing|healthz|livez|readyz|metrics)"


def fuzz_workflows(root: Path) -> Path:
    workflows = make_workflows_dir(root / "workflows")
    (workflows / "txt2img.yaml").write_text(SIDECAR, encoding="utf-8")
    return workflows


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    with serving({**service_env(fuzz_workflows(root), root / "work"), **LIMITS}, root) as url:
        yield url


def schemathesis(url: str, seed: int, cwd: Path, *options: str, timeout: float = 600) -> tuple[int, str]:
    """`st run` of the served document with every check (schemathesis.toml); (exit code, output)."""
    command = [str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG), "run", f"{url}/docs.json",
               "--mode", "all", "--seed", str(seed), "--workers", "1", "--continue-on-failure", "--generation-database",
               "none", "--suppress-health-check", "all", "--exclude-path-regex", EXCLUDED, "--no-color", *options]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the config's hooks: tests.e2e.fuzz_hooks
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    return run.returncode, run.stdout + run.stderr


def passed(output: str) -> int:
    """Test cases that passed every check, from the summary (0 when it has none: every case failed or none ran)."""
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    return int(cases.group(2)) if cases else 0


def test_openapi_document_is_valid_and_documented(fuzzed):
    doc = httpx.get(f"{fuzzed}/docs.json", timeout=30).json()
    validate(doc)  # openapi-spec-validator: raises on any violation of OpenAPI 3.0
    ops = [op for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)]
    ids = [op["operationId"] for op in ops]
    assert len(ids) == len(set(ids))
    assert doc["info"]["version"] not in ("", "None")
    txt2img = doc["paths"]["/txt2img"]["post"]["responses"]
    for code in ("400", "413", "429", "503"):
        assert txt2img[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    schemas = doc["components"]["schemas"]
    assert schemas["Txt2imgJobItem"]["properties"]["steps"]["maximum"] == 8  # the limit, not ComfyUI's 10000
    seed = schemas["Txt2imgJobItem"]["properties"]["seed"]
    assert seed["type"] == "integer" and seed["nullable"] is True
    submit = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jobs = {v["$ref"]: schemas[v["$ref"].rsplit("/", 1)[1]] for v in submit["oneOf"]}  # whole schemas, one per workflow
    assert {v["properties"]["workflow"]["enum"][0] for v in jobs.values()} >= {"txt2img", "img2img"}
    # What the server does, stated: an optional body when every field has a default, null among a nullable enum's
    # values, an image's three formats, a job's item count limit.
    assert doc["paths"]["/txt2img"]["post"]["requestBody"]["required"] is False
    assert doc["paths"]["/img2img"]["post"]["requestBody"]["required"] is True  # its image has no default
    assert schemas["Txt2imgInput"]["properties"]["preset"]["enum"] == ["fast", "quality", None]
    png = {"image/png", "image/webp", "image/jpeg", "application/octet-stream"}  # octet-stream: what generators read as bytes
    assert set(doc["paths"]["/txt2img/png"]["post"]["responses"]["200"]["content"]) == png
    assert jobs["#/components/schemas/Txt2imgJobSubmit"]["properties"]["items"]["maxItems"] == 3
    page = httpx.get(f"{fuzzed}/docs", timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text and "/docs.json" in page.text
    assert httpx.get(f"{fuzzed}/static_content/swagger-ui-bundle.js", timeout=30).status_code == 200


def test_the_coverage_phases_at_small_limits_conform(fuzzed, tmp_path):
    """The examples and the coverage phase: each field's boundaries and each documented value, the same for every seed."""
    # The slowest valid request at these limits (2 images of 64 x 96, 8 steps) takes about a second on 2 cores.
    code, output = schemathesis(fuzzed, 1, tmp_path, "--phases", "examples,coverage", "--request-timeout", "120",
                                "--max-response-time", "60")
    assert code == 0, output[-8000:]
    assert passed(output) >= 100, output[-3000:]  # it really sent requests


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzing_at_small_limits_conforms(fuzzed, tmp_path, seed):
    """The random phases (fuzzing, then stateful: sequences linked by the document's links), bounded in time."""
    code, output = schemathesis(fuzzed, seed, tmp_path, "--phases", "fuzzing,stateful", "--max-examples", "4",
                                "--request-timeout", "120", "--max-response-time", "60", "--max-time", "45")
    assert code == 0, output[-8000:]
    assert passed(output) >= 100, output[-3000:]


def test_fuzzing_at_default_limits_conforms(tmp_path):
    """The default limits (the CPU engine's): every schema-valid request is run or refused with a 413 naming a limit."""
    with serving(service_env(make_workflows_dir(tmp_path / "workflows"), tmp_path / "work"), tmp_path) as url:
        # Seed 3 once took the engine to 7.5 GB (bench/fuzz_memory.py measures it). A request may run up to the CPU
        # engine's execution budget (COMFYBENTO_MAX_EXECUTION_S, 120 s) before it is refused.
        code, output = schemathesis(url, 3, tmp_path, "--phases", "fuzzing", "--max-examples", "2", "--request-timeout",
                                    "180", "--max-response-time", "180", "--max-time", "75")
    assert code == 0, output[-8000:]
    assert passed(output) >= 10, output[-3000:]
