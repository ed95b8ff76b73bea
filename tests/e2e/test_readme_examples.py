"""Every example in README.md and docs/*.md runs as written against a real service (the shared `server` fixture).

An example is a fenced block in a shell (```bash, sh, console) that calls `curl` or `python -m comfybento`, or a
```python, ```ts/typescript or ```js block. Other fences (JSON answers, TOML, YAML, folder trees, setup commands such
as ./scripts/serve) are not examples and are not run.

What differs from a reader's machine, and nothing else:
- `http://localhost:3000` and `localhost:3000` become the test server's URL, and COMFY_BASE_URL / COMFYBENTO_URL (the
  variables the SDK and the batch CLI read) are set to it; `.venv/bin/python` is this interpreter, with the project
  on PYTHONPATH (a reader runs `python -m comfybento` in the project);
- `<id>` (a job id the reader copies from an answer) is a one-item job this test submitted first; `$KEY` is empty
  (the test server has no API keys);
- each runs in a scratch folder holding the files the examples name (photo.png, prompts.txt, rows.csv) and links
  to the project's workflows/, clients/, models.lock, models/ and the @comfyorg/sdk install of tests/js/comfy-v2;
- shell examples run under `set -euo pipefail`, with curl failing on an HTTP error (`--fail-with-body`);
  TypeScript/JavaScript ones run as ES modules (`example.mts`) with tsx, pinned in clients/typescript.
A block passes when it exits 0 and every file it writes (`-o FILE`, `to_file("FILE")`, `toFile("FILE")`) is there.

An example that cannot run in CI (a GPU, BentoCloud, Docker, credentials, a file we do not have) is marked
`<!-- no-run: why -->` on the line just before its fence: it is reported as skipped with that reason, and
EXPECTED_NO_RUN below must list it, so a new one is a decision in review, never a silent skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, sample_image

pytestmark = pytest.mark.e2e

PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(\S.*?)\s*-->\s*$")
SHELLS, PYTHONS, SCRIPTS = {"bash", "sh", "console", "shell"}, {"python", "py"}, {"ts", "typescript", "js", "javascript", "mts", "mjs"}
WRITES = re.compile(r"""(?:\s-o\s+|to_file\(|toFile\()["']?([\w./-]+)""")
TSX = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "tsx"
# The npm packages the examples import (@comfyorg/sdk, openai), from the lockfiles of the JS tests that use them.
SDK_MODULES = [ROOT / "tests" / "js" / "comfy-v2" / "node_modules", ROOT / "tests" / "js" / "openai" / "node_modules"]
TIMEOUT_S = 240

# The examples marked no-run, by page and the first line of their code, each with the reason its marker gives.
EXPECTED_NO_RUN = {
    ("docs/comfy-pack.md", ".venv/bin/python -m comfybento import simple-pixel-art-generation.cpack.zip"),
    ("docs/inputs.md", "curl -H 'content-type: application/json' localhost:3000/img2img \\"),
    ("docs/jobs.md", ".venv/bin/python -m comfybento batch --workflow txt2img rows.jsonl --url https://my-deployment --api-key $KEY"),
    ("docs/models.md", "# with checkpoints/dreamshaper-8.safetensors in models.lock beside the graph's own checkpoint"),
    ("docs/models.md", "curl -s localhost:3000/txt2img -H 'content-type: application/json' -d '{"),
    ("docs/workflows.md", "curl -s -D - -o /dev/null localhost:3000/txt2img/v2 -H 'content-type: application/json' -d '{\"prompt\": \"a lighthouse\"}' \\"),
}


@dataclass(frozen=True)
class Example:
    page: str  # relative to the project
    line: int  # of its opening fence
    lang: str
    code: str
    no_run: str | None  # the marker's reason

    @property
    def first_line(self) -> str:
        return self.code.strip().splitlines()[0]


def _is_example(lang: str, code: str) -> bool:
    if lang in SHELLS:
        return "curl " in code or "python -m comfybento" in code
    return lang in PYTHONS | SCRIPTS


def find_examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for fence in FENCE.finditer(text):
            lang, code = fence.group(1).lower(), fence.group(2)
            before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NO_RUN.match(before.strip())
            line = text.count("\n", 0, fence.start()) + 1
            name = page.relative_to(ROOT).as_posix()
            if not _is_example(lang, code):
                assert marker is None, f"{name}:{line}: a no-run marker on a fence that is not an example"
                continue
            found.append(Example(name, line, lang, code, marker.group(1) if marker else None))
    return found


EXAMPLES = find_examples()


def test_every_page_is_read_and_the_no_run_list_is_the_marked_one():
    assert len(EXAMPLES) >= 20, [f"{e.page}:{e.line}" for e in EXAMPLES]
    assert {(e.page, e.first_line) for e in EXAMPLES if e.no_run} == EXPECTED_NO_RUN


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The folder the examples run in: the files they name, and links to the project's."""
    folder = tmp_path_factory.mktemp("examples")
    sample_image(128, 128).save(folder / "photo.png")
    (folder / "prompts.txt").write_text("a red chair\na blue lamp\n")
    (folder / "rows.csv").write_text("prompt,seed\na red chair,1\na blue lamp,2\n")
    for name in ("workflows", "clients", "models.lock", "models"):
        (folder / name).symlink_to(ROOT / name)
    modules = folder / "node_modules"
    modules.mkdir()
    for installed in SDK_MODULES:
        for package in installed.iterdir():
            if not package.name.startswith(".") and not (modules / package.name).exists():
                (modules / package.name).symlink_to(package)
    return folder


def _job_ids(server: str) -> set[str]:
    return {j["id"] for j in httpx.get(f"{server}/jobs", params={"limit": 500}, timeout=30).json()["jobs"]}


@pytest.fixture(scope="module")
def job_id(server) -> str:
    """A finished one-item job for the examples' `<id>`."""
    body = {"workflow": "txt2img", "items": [{"prompt": "a red chair", "steps": 2, "width": 64, "height": 64}]}
    job = httpx.post(f"{server}/jobs", json=body, timeout=60).json()["id"]
    deadline = time.monotonic() + 120
    while httpx.get(f"{server}/jobs/{job}", timeout=30).json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the examples' job did not finish"
        time.sleep(0.5)
    return job


def _as_run_here(example: Example, server: str, job: str) -> str:
    code = example.code.replace("http://localhost:3000", server).replace("localhost:3000", server)
    return code.replace(".venv/bin/python", sys.executable).replace("<id>", job)


def _command(example: Example, folder: Path, code: str) -> list[str]:
    if example.lang in SHELLS:
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body --show-error "$@"; }\n'
        return ["bash", "-c", prelude + code]
    if example.lang in PYTHONS:
        return [sys.executable, "-c", code]
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the TypeScript and JavaScript examples need it")
    assert TSX.exists(), "run `npm ci` in clients/typescript (./scripts/test does)"
    for package, installed in (("@comfyorg/sdk", SDK_MODULES[0]), ('"openai"', SDK_MODULES[1])):
        if package in code:
            assert installed.exists(), f"run `npm ci` in {installed.parent} (./scripts/test does)"
    (folder / "example.mts").write_text(code, encoding="utf-8")
    return [str(TSX), "example.mts"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.page}:{e.line}" for e in EXAMPLES])
def test_the_example_runs_as_written(example: Example, server, scratch, job_id):
    if example.no_run:
        pytest.skip(f"no-run: {example.no_run}")
    code = _as_run_here(example, server, job_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYBENTO_", "COMFY_"))}
    env.update(COMFY_BASE_URL=server, COMFYBENTO_URL=server, KEY="", PYTHONPATH=str(ROOT))
    before = _job_ids(server)
    try:
        run = subprocess.run(
            _command(example, scratch, code), cwd=scratch, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    finally:  # the jobs it submitted and does not wait for would hold the engine for the next examples: cancel them
        for queued in _job_ids(server) - before:
            httpx.post(f"{server}/jobs/{queued}/cancel", timeout=30)
    output = f"{example.page}:{example.line} exited {run.returncode}\n--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-3000:]}"
    assert run.returncode == 0, output
    for written in WRITES.findall(example.code):
        assert (scratch / written).is_file() and (scratch / written).stat().st_size > 0, f"{written} not written\n{output}"
