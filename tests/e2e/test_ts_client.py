"""The generated TypeScript client (clients/typescript) against a real `bentoml serve`: its node test suite
(`npm test`: the type check, then test/smoke.test.ts) runs with the service's URL in COMFYBENTO_URL.

The service serves the project's own workflows/ (txt2img, img2img) with default limits: the schema the client was generated from.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.e2e.conftest import JOB_ENV, serving
from tests.helpers import ROOT, make_workflows_dir, service_env

pytestmark = pytest.mark.e2e

CLIENT = ROOT / "clients" / "typescript"
NPM = shutil.which("npm")


def test_the_generated_client_calls_a_running_service(tmp_path):
    if shutil.which("node") is None or NPM is None:
        pytest.skip("Node.js (node and npm, >= 20.19) is not installed: the TypeScript client's test needs it")
    assert (CLIENT / "node_modules" / ".bin" / "tsx").exists(), "run `npm ci` in clients/typescript (./scripts/test does)"
    env = service_env(make_workflows_dir(tmp_path / "workflows", extra=("img2img",)), tmp_path / "work")
    with serving({**env, **JOB_ENV}, tmp_path) as url:
        run = subprocess.run([NPM, "test"], cwd=CLIENT, env={**os.environ, "COMFYBENTO_URL": url}, capture_output=True, text=True,
                             timeout=420, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed and failed and int(passed.group(1)) == 4 and int(failed.group(1)) == 0, output[-3000:]
