"""A full disk, for real: the work folder (job store, outputs, ComfyUI's folders) on a small tmpfs, filled to the last byte.

New work that writes is refused (507, or 503 + Retry-After in the ComfyUI and Comfy API v2 routes), never a 500 or a
dropped connection; inline requests still run; /readyz says why. Once the filler is deleted, without a restart, the
job accepted before completes, each item once, and new work is accepted. Then retention frees the disk by itself: filled
again while URL outputs past their retention are stored, the server deletes them at once (their URLs answer 404) and
accepts new work, the filler still there.

Mounting needs root (CAP_SYS_ADMIN); where it is not allowed the test is skipped, and the same paths are covered by
the fault-injection seams of tests/unit/test_diskspace.py.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import JOB_ENV, serving
from tests.helpers import make_workflows_dir, png_array, sample_image, service_env

pytestmark = pytest.mark.e2e

WATERMARK = 8 * 1024 * 1024
JOB = {"workflow": "txt2img", "base": {"width": 64, "height": 64, "steps": 2, "prompt": "a red cube"},
       "fanout": {"seed": list(range(1, 9))}}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs, unmounted afterwards (whatever the test left in it goes with it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({done.stderr.strip() or done.returncode}); "
                    "tests/unit/test_diskspace.py covers the same paths with fault injection")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path, name: str = "filler") -> Path:
    """A file that takes every free byte of folder's file system."""
    filler = folder / name
    with filler.open("wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 14, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def wait_ready(url: str, ready: bool, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{url}/readyz", timeout=10)
        if (answer.status_code == 200) == ready or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def png() -> bytes:
    buf = io.BytesIO()
    sample_image(16, 16).save(buf, format="PNG")
    return buf.getvalue()


def refusals(url: str) -> dict[str, list[Any]]:
    """Every kind of new work at once, several of each: (status, body or error) per call."""
    small = {"width": 64, "height": 64, "steps": 2, "prompt": "a cube", "seed": 3}
    calls: dict[str, Any] = {
        "job": lambda c: c.post(f"{url}/jobs", json=JOB),
        "url": lambda c: c.post(f"{url}/txt2img", json={**small, "output_delivery": "url"}),
        "url_stream": lambda c: c.post(f"{url}/txt2img/stream", json={**small, "output_delivery": "url"}),
        "upload": lambda c: c.post(f"{url}/upload/image", files={"image": ("a.png", png(), "image/png")}),
        "v2_asset": lambda c: c.post(f"{url}/api/v2/assets", files={"file": ("a.png", png(), "image/png")}),
        "prompt": lambda c: c.post(f"{url}/prompt", json={"prompt": {}}),
        "inline": lambda c: c.post(f"{url}/txt2img", json=small),
    }

    def call(name: str) -> tuple[str, Any]:
        with httpx.Client(timeout=120) as client:
            try:
                answer = calls[name](client)
            except httpx.HTTPError as exc:  # a dropped connection
                return name, (None, repr(exc), None)
            return name, (answer.status_code, answer.json(), answer.headers.get("retry-after"))

    found: dict[str, list[Any]] = {name: [] for name in calls}
    with ThreadPoolExecutor(16) as pool:
        for name, outcome in pool.map(call, [name for name in calls for _ in range(4)]):
            found[name].append(outcome)
    return found


def test_a_full_disk_refuses_new_work_cleanly_and_recovers_by_itself(tmp_path, small_disk):
    env = service_env(make_workflows_dir(tmp_path / "workflows"), small_disk / "work")
    env.update(JOB_ENV, COMFYBENTO_MIN_FREE_BYTES=str(WATERMARK), COMFYBENTO_DISK_CHECK_MS="100")
    with serving(env, tmp_path) as url:
        accepted = httpx.post(f"{url}/jobs", json=JOB, timeout=60)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        filler = fill(small_disk)  # while the job's items run: some find no room for their outputs

        not_ready = wait_ready(url, ready=False)
        assert not_ready.status_code == 503 and "below the watermark of 8.0 MiB" in not_ready.text, not_ready.text
        found = refusals(url)
        answered = [(name, o[0]) for name, outcomes in found.items() for o in outcomes]
        assert all(status is not None and status != 500 for _, status in answered), found  # no 500, no dropped connection
        for name in ("job", "url", "url_stream"):
            for status, body, retry_after in found[name]:
                assert (status, body["error_kind"], retry_after) == (507, "storage_full", "30"), (name, body)
                assert body["free_bytes"] < WATERMARK and body["folder"] in ("work", "outputs", "jobs"), body
        for status, body, retry_after in found["v2_asset"]:
            assert (status, body["error"]["code"], retry_after) == (503, "storage_full", "30"), body
        for status, body, retry_after in found["prompt"] + found["upload"]:  # ComfyUI's routes: its shape
            assert (status, body["error"]["type"], retry_after) == (503, "storage_full", "30"), body
        for status, body, _ in found["inline"]:  # writes nothing: still runs
            assert status == 200 and png_array(body["outputs"][0]["data"]).shape == (64, 64, 3), body

        filler.unlink()  # space freed: no restart
        assert wait_ready(url, ready=True).status_code == 200
        deadline = time.monotonic() + 240
        while (status := httpx.get(f"{url}/jobs/{job_id}", timeout=30).json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status["state"] == "succeeded" and status["counts"] == {"succeeded": 8}, status
        assert status["usage"]["images"] == 8  # each item counted once
        results = httpx.get(f"{url}/jobs/{job_id}/results", timeout=30).json()["items"]
        assert sorted(r["seed"] for r in results) == list(range(1, 9))
        for item in results:
            assert len(item["outputs"]) == 1
            image = httpx.get(item["outputs"][0]["url"], timeout=30)
            assert image.status_code == 200 and png_array(image.content).shape == (64, 64, 3)

        again = httpx.post(f"{url}/jobs", json={**JOB, "fanout": {"seed": [42]}}, timeout=60)
        assert again.status_code == 202, again.text
        upload = httpx.post(f"{url}/upload/image", files={"image": ("b.png", png(), "image/png")}, timeout=30)
        assert upload.status_code == 200, upload.text
        asset = httpx.post(f"{url}/api/v2/assets", files={"file": ("b.png", png(), "image/png")}, timeout=30)
        assert asset.status_code in (200, 201), asset.text
        retention_frees_the_disk_by_itself(url, small_disk)


def retention_frees_the_disk_by_itself(url: str, disk: Path) -> None:
    """URL outputs past their retention (a real one, and 10 MiB more in a folder of the same shape), then the disk full:
    the watcher's crossing sweeps them at once, and new work is accepted without deleting the filler."""
    small = {"width": 64, "height": 64, "steps": 2, "prompt": "a cube", "seed": 5, "output_delivery": "url"}
    made = httpx.post(f"{url}/txt2img", json=small, timeout=120)
    assert made.status_code == 200, made.text
    stored = made.json()["outputs"][0]["url"]
    live = disk / "work" / "outputs" / "outputs"  # COMFYBENTO_OUTPUT_DIR's outputs/<folder>/<file> (front/delivery.py)
    folders = [live / stored.split("/")[-2], live / ("0" * 32)]
    folders[1].mkdir()
    (folders[1] / "save_image-0.png").write_bytes(b"\0" * (10 << 20))
    week_ago = time.time() - 8 * 24 * 3600  # past COMFYBENTO_OUTPUT_RETENTION_S (7 days)
    for file in (f for folder in folders for f in folder.iterdir()):
        os.utime(file, (week_ago, week_ago))
    filler = fill(disk, "filler-again")
    try:
        deadline = time.monotonic() + 10  # a periodic sweep is a minute apart: the crossing starts this one
        while any(f.exists() for f in folders) or httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, [f for f in folders if f.exists()]
            time.sleep(0.1)
        gone = httpx.get(stored, timeout=30)
        assert gone.status_code == 404 and gone.json()["error_kind"] == "not_found", gone.text
        again = httpx.post(f"{url}/txt2img", json=small, timeout=120)
        assert again.status_code == 200 and httpx.get(again.json()["outputs"][0]["url"], timeout=30).status_code == 200, again.text
    finally:
        filler.unlink()
