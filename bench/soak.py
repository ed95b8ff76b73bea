"""Memory soak: N requests of every kind against a real `bentoml serve`, RSS of each process along the way.

    .venv/bin/python bench/soak.py                  # 1000 requests, CPU, tiny model
    .venv/bin/python bench/soak.py --requests 200   # shorter

The mix, in rounds: a valid small generation (JSON), a valid img2img upload,
and the inputs that used to cost memory or a 500: a decompression-bomb PNG
(20 KB claiming 13000 x 13000), a truncated PNG, random bytes, an over-limit
size, a huge prompt, a body over the limit. Every answer must be a 200 or a
4xx (any 5xx fails the run). RSS of the arbiter, front and engine is sampled
every `--every` requests; the report gives first, peak and last, and the
growth from the first sample after warm-up to the last. The baseline, in the
same run: a bare BentoML service (bench/bare/service.py, one trivial API) gets
the same number of requests, and both growths are reported per request.
Results: bench/results/<date>-soak.json and .md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import machine, process_memory, serve_ours  # noqa: E402
from tests.e2e.conftest import BENTOML, stop_server, wait_ready  # noqa: E402
from tests.helpers import free_port, make_workflows_dir, sample_image, service_env  # noqa: E402

BODY_LIMIT = 4 * 1024 * 1024


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def requests_mix() -> list[tuple[str, dict[str, Any]]]:
    """(kind, httpx.post kwargs) of one round."""
    small = _png(sample_image(64, 64))
    noisy = _png(Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)))
    bomb = _png(Image.new("1", (13000, 13000)))
    upload = {"data": {"seed": "1", "steps": "2"}}
    return [
        ("txt2img", {"url": "/txt2img", "json": {"prompt": "soak", "steps": 2, "width": 64, "height": 64}}),
        ("img2img", {"url": "/img2img", "files": {"image": ("a.png", small, "image/png")}, **upload}),
        ("bomb", {"url": "/img2img", "files": {"image": ("b.png", bomb, "image/png")}, **upload}),
        ("truncated", {"url": "/img2img", "files": {"image": ("t.png", noisy[: len(noisy) // 2], "image/png")}, **upload}),
        ("random", {"url": "/img2img", "files": {"image": ("r.png", os.urandom(20_000), "image/png")}, **upload}),
        ("too_big", {"url": "/txt2img", "json": {"width": 16384, "height": 16384, "steps": 1}}),
        ("long_prompt", {"url": "/txt2img", "json": {"prompt": "x" * 2_000_000}}),
        ("big_body", {"url": "/txt2img", "content": b" " * (BODY_LIMIT + 1), "headers": {"content-type": "application/json"}}),
    ]


def soak(url: str, proc: Any, total: int, every: int) -> dict[str, Any]:
    mix = requests_mix()
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind, _ in mix}
    samples = [{"requests": 0, **process_memory(proc)}]
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=300) as client:
        for n in range(1, total + 1):
            kind, kwargs = mix[(n - 1) % len(mix)]
            kwargs = dict(kwargs)
            statuses[kind][client.post(kwargs.pop("url"), **kwargs).status_code] += 1
            if n % every == 0 or n == total:
                samples.append({"requests": n, **process_memory(proc)})
    server_errors = {k: {s: c for s, c in v.items() if s >= 500} for k, v in statuses.items()}
    return {"requests": total, "seconds": time.monotonic() - started, "samples": samples,
            "statuses": {k: dict(v) for k, v in statuses.items()}, "server_errors": {k: v for k, v in server_errors.items() if v}}


def bare_baseline(total: int, work: Path) -> dict[str, float]:
    """RSS growth per request of a bare BentoML service's worker under `total` requests (after 200 to warm up)."""
    port = free_port()
    log = work / "bare.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BENTOML, "serve", "service:Bare", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT / "bench" / "bare", stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "BENTOML_HOME": str(work / "bare-home")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        worker = next(p for p in psutil.Process(proc.pid).children(recursive=True) if "_bentoml_impl.worker" in " ".join(p.cmdline()))
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(200):
                client.post("/echo", json={"text": "warm"})
            before = worker.memory_info().rss / 2**20
            for _ in range(total):
                client.post("/echo", json={"text": "soak"})
            after = worker.memory_info().rss / 2**20
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return {"before_mb": before, "after_mb": after, "kb_per_request": 1024 * (after - before) / total}


def summary(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per process: first sample after warm-up (the second), peak, last, and growth from that first one."""
    samples = result["samples"]
    base = samples[1] if len(samples) > 2 else samples[0]
    out = {}
    for key in (k for k in samples[-1] if k.endswith("_rss_mb")):
        values = [s[key] for s in samples if key in s]
        requests = samples[-1]["requests"] - (samples[1]["requests"] if len(samples) > 2 else 0)
        out[key.removesuffix("_rss_mb")] = {"after_warmup_mb": base[key], "peak_mb": max(values), "last_mb": values[-1],
                                            "growth_pct": 100 * (values[-1] - base[key]) / base[key],
                                            "kb_per_request": 1024 * (values[-1] - base[key]) / max(1, requests)}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Memory soak, {result['date']}", "", f"Machine: {result['machine']}", "",
             f"`{result['command']}`: {result['requests']} requests in {result['seconds']:.0f} s, "
             f"RSS sampled every {result['every']} requests.", "",
             "| process | after warm-up (MB) | peak (MB) | last (MB) | growth | per request |", "|---|---:|---:|---:|---:|---:|"]
    for role, row in result["summary"].items():
        lines.append(f"| {role} | {row['after_warmup_mb']:.0f} | {row['peak_mb']:.0f} | {row['last_mb']:.0f} | "
                     f"{row['growth_pct']:+.1f}% | {row['kb_per_request']:+.1f} KB |")
    bare = result.get("bare")
    if bare:
        lines += ["", f"Baseline, same run: a bare BentoML service's worker (bench/bare/service.py) grew "
                      f"{bare['before_mb']:.0f} -> {bare['after_mb']:.0f} MB over {result['requests']} requests, "
                      f"{bare['kb_per_request']:+.1f} KB per request."]
    lines += ["", "| request kind | answers |", "|---|---|"]
    lines += [f"| {kind} | {', '.join(f'{s}: {c}' for s, c in sorted(st.items()))} |" for kind, st in result["statuses"].items()]
    lines += ["", f"Server errors (5xx): {result['server_errors'] or 'none'}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="comfybento-soak-"))
    env = {**service_env(make_workflows_dir(work / "workflows"), work / "work"), "COMFYBENTO_MAX_BODY_BYTES": str(BODY_LIMIT)}
    proc, url = serve_ours("ours", work, env)
    try:
        result = soak(url, proc, args.requests, args.every)
    finally:
        stop_server(proc)
    result["bare"] = bare_baseline(args.requests, work)
    result.update(date=date.today().isoformat(), machine=machine(cpu=True), every=args.every,
                  command=" ".join(["bench/soak.py", *sys.argv[1:]]))
    result["summary"] = summary(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['date']}-soak"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    if result["server_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
