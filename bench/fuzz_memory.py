"""Memory under fuzzing: Schemathesis at the default limits against a real `bentoml serve`, the peak RSS per request.

    .venv/bin/python bench/fuzz_memory.py                        # seeds 1 2 3, 600 s each
    .venv/bin/python bench/fuzz_memory.py --seeds 3 --max-time 300

After the fuzzing, the largest requests the limits allow (`LARGEST`) run on the RSS it left behind: the worst case.
Each seed gets a fresh server with the default limits (the CPU engine's, with the tiny model) and one
`st run --mode all` (workers 1: one request in flight at a time). A thread samples the RSS of the arbiter, the front
and the engine every 50 ms; a Schemathesis check of this module (loaded as its hook) logs each request as it ends:
operation, status, duration and the size it asked for (width, height, batch, steps, items). Each process's peak
during each request is matched to it, and the report lists, per seed, every process's peak and the requests that
raised the engine's peak the most: the ones a memory limit has to bound (the goal: every process under 2 GB).
Results: bench/results/<date>-fuzz-memory.json and .md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psutil
import schemathesis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import machine  # noqa: E402
from comfybento.limits import CPU_LIMITS  # noqa: E402 (the defaults of the CPU engine under test)
from tests.e2e.conftest import server_processes, start_server, stop_server, wait_ready  # noqa: E402
from tests.helpers import make_workflows_dir, service_env  # noqa: E402

LOG_ENV = "COMFYBENTO_FUZZ_MEMORY_LOG"
SIZE_FIELDS = ("width", "height", "batch_size", "steps")
EXCLUDED = "^/(failing|healthz|livez|readyz|metrics)"  # /failing raises by design; the infra routes are BentoML's
GOAL_MB = 2048


@schemathesis.check
def fuzz_memory_log(ctx: Any, response: Any, case: Any) -> bool | None:
    """Not a check: appends the request that just ended to the log this probe reads (loaded as a hook by `st`)."""
    path = os.environ.get(LOG_ENV)
    if path:
        row = {"end": time.time(), "elapsed": response.elapsed, "op": f"{case.method} {case.operation.path}",
               "status": response.status_code, "size": _size(case.body)}
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(row) + "\n")
    return None


def _size(body: Any) -> str:
    """What a request asked for: the size fields of its body (of a job's base or first item), and a job's item count."""
    if not isinstance(body, dict):
        return ""
    fields = (body.get("base") or (body.get("items") or [None])[0]) if "workflow" in body else body
    parts = [f"{k}={fields[k]}" for k in SIZE_FIELDS if isinstance(fields, dict) and k in fields]
    if isinstance(body.get("items"), list):
        parts.append(f"items={len(body['items'])}")
    if isinstance(body.get("fanout"), dict):
        parts.append("fanout=" + "x".join(str(len(v)) for v in body["fanout"].values() if isinstance(v, list)))
    return " ".join(parts)


class Sampler(threading.Thread):
    """RSS (MB) of every process of a server, by role, every `every` seconds, until stopped."""

    def __init__(self, proc: subprocess.Popen[bytes], every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc, self.every = proc, every
        self.samples: list[tuple[float, str, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        found, refreshed = [], 0.0
        while not self.done.is_set():
            if time.monotonic() - refreshed > 2:  # a worker that was killed comes back with a new pid
                found, refreshed = self._roles(), time.monotonic()
            now = time.time()
            for role, p in found:
                try:
                    self.samples.append((now, role, p.memory_info().rss / 2**20))
                except psutil.Error:
                    refreshed = 0.0
            self.done.wait(self.every)

    def _roles(self) -> list[tuple[str, psutil.Process]]:
        out = []
        for p in server_processes(self.proc):
            try:
                role = "arbiter" if p.pid == self.proc.pid else ("engine" if "comfybento-engine" in p.cmdline() else "front")
            except psutil.Error:
                continue
            out.append((role, p))
        return out


def probe(seed: int, max_time: int, work: Path) -> dict[str, Any]:
    """One seed against a fresh server at the default limits: each process's peak, and the requests that raised it."""
    log = work / f"requests-{seed}.jsonl"
    proc, url = start_server(service_env(make_workflows_dir(work / f"workflows-{seed}"), work / f"work-{seed}"),
                             work / f"serve-{seed}.log")
    try:
        wait_ready(proc, url, work / f"serve-{seed}.log")
        sampler = Sampler(proc)
        sampler.start()
        command = [str(Path(sys.executable).with_name("st")), "run", f"{url}/docs.json", "--mode", "all", "--seed", str(seed),
                   "--checks", "not_a_server_error,fuzz_memory_log", "--workers", "1", "--max-time", str(max_time),
                   "--request-timeout", "300", "--continue-on-failure", "--generation-database", "none",
                   "--suppress-health-check", "all", "--exclude-path-regex", EXCLUDED, "--no-color"]
        config = work / "schemathesis.toml"
        config.write_text('hooks = "bench.fuzz_memory"\n', encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT), LOG_ENV: str(log)}
        started = time.monotonic()
        run = subprocess.run([command[0], "--config-file", str(config), *command[1:]], capture_output=True, text=True,
                             cwd=work, env=env, timeout=max_time + 900, check=False)
        wall_s = time.monotonic() - started
        largest(url, log)  # then the largest requests the limits allow, on the RSS the fuzzing left behind
        sampler.done.set()
        sampler.join()
    finally:
        stop_server(proc)
    requests = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    return {"seed": seed, "wall_s": round(wall_s, 1), "st_exit": run.returncode, "requests": len(requests),
            "summary": run.stdout[run.stdout.rfind("Test cases:"):].strip()[:400], "failures": _failures(run.stdout),
            "peaks_mb": _peaks(sampler.samples), "raised": _raised(sampler.samples, requests)}


# The largest requests the CPU defaults allow (448² pixels per request), each at few steps (memory does not grow with them).
SIDE = int(CPU_LIMITS.max_request_pixels ** 0.5)
LARGEST: list[tuple[str, dict[str, Any]]] = [
    ("/txt2img", {"width": SIDE, "height": SIDE, "steps": 4}),
    ("/txt2img", {"width": SIDE // 4, "height": SIDE // 4, "batch_size": 16, "steps": 4}),
    ("/txt2img", {"width": 1264, "height": 158, "steps": 4}),  # 8:1, just under the pixel limit
    ("/two_outputs", {"width": SIDE, "height": SIDE, "steps": 4}),
    ("/img2img", {"steps": 4}),  # with a SIDE x SIDE upload
    ("/txt2img", {"width": SIDE, "height": SIDE, "steps": 4}),  # again, after the others
]


def largest(url: str, log: Path) -> None:
    """Send LARGEST one at a time, each logged as the fuzzing's requests are (the report attributes the peaks to them)."""
    from tests.helpers import sample_image

    upload = io.BytesIO()
    sample_image(SIDE, SIDE).save(upload, format="PNG")
    for path, body in LARGEST:
        started = time.time()
        if path == "/img2img":
            files = {"image": ("big.png", upload.getvalue(), "image/png")}
            resp = httpx.post(url + path, data={k: str(v) for k, v in body.items()}, files=files, timeout=600)
            size = f"upload={SIDE}x{SIDE} " + _size(body)
        else:
            resp = httpx.post(url + path, json=body, timeout=600)
            size = _size(body)
        row = {"end": time.time(), "elapsed": time.time() - started, "op": f"POST {path} (largest)", "status": resp.status_code,
               "size": size}
        with log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


def _failures(output: str) -> str:
    """Schemathesis' failure section (each failure with its answer and a curl to reproduce it), shortened."""
    start, end = output.find("= FAILURES ="), output.find("= SUMMARY =")
    return output[start:end].strip()[:6000] if start >= 0 else ""


def _peaks(samples: list[tuple[float, str, float]]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for _, role, rss in samples:
        peaks[role] = max(peaks.get(role, 0.0), rss)
    return {role: round(rss) for role, rss in sorted(peaks.items())}


def _raised(samples: list[tuple[float, str, float]], requests: list[dict[str, Any]], top: int = 12) -> list[dict[str, Any]]:
    """The requests in flight when a process's RSS rose past its peak so far, by how much they raised it."""
    spans = sorted(((r["end"] - r["elapsed"], r["end"], r) for r in requests), key=lambda s: s[0])
    peak: dict[str, float] = {}
    rises: dict[tuple[int, str], dict[str, Any]] = {}
    i = 0
    for t, role, rss in sorted(samples):
        before = peak.get(role)
        peak[role] = max(before or 0.0, rss)
        if before is None or rss <= before:
            continue
        while i < len(spans) and spans[i][1] < t:
            i += 1
        if i == len(spans) or spans[i][0] > t:
            continue  # between requests (the server starting, or work a request left behind)
        request = spans[i][2]
        row = rises.setdefault((i, role), {**request, "process": role, "from_mb": round(before), "to_mb": 0, "rise_mb": 0})
        row["to_mb"] = round(rss)
        row["rise_mb"] = round(rss - row["from_mb"])
    return sorted(rises.values(), key=lambda r: -r["rise_mb"])[:top]


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Memory under fuzzing (default limits), {result['date']}", "", f"Machine: {result['machine']}. "
             f"Model: the tiny test checkpoint (CPU engine). Goal: every process under {GOAL_MB} MB.", "",
             f"Command: `{result['command']}`", "", f"Limits: {result['limits']}", ""]
    for seed in result["seeds"]:
        peaks = ", ".join(f"{role} {mb} MB" for role, mb in seed["peaks_mb"].items())
        over = [role for role, mb in seed["peaks_mb"].items() if mb >= GOAL_MB]
        lines += [f"## Seed {seed['seed']}: {seed['requests']} requests in {seed['wall_s']} s; peak RSS: {peaks}"
                  + (f" (over the goal: {', '.join(over)})" if over else ""), "", f"Schemathesis: {seed['summary']}", "",
                  "The requests in flight when a process's RSS rose past its peak so far, by how much:", "",
                  "| process | RSS before (MB) | peak during (MB) | rise (MB) | request | asked for | status | s |",
                  "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |"]
        for r in seed["raised"]:
            lines.append(f"| {r['process']} | {r['from_mb']} | {r['to_mb']} | {r['rise_mb']} | {r['op']} | {r['size'] or '-'} | "
                         f"{r['status']} | {r['elapsed']:.1f} |")
        lines.append("")
        if seed.get("failures"):
            lines += ["Schemathesis' failures:", "", "```", seed["failures"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-time", type=int, default=600, help="seconds of fuzzing per seed")
    parser.add_argument("--name", default=f"{date.today().isoformat()}-fuzz-memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="comfybento-fuzz-memory-") as tmp:
        seeds = [probe(seed, args.max_time, Path(tmp)) for seed in args.seeds]
    result = {"date": date.today().isoformat(), "machine": machine(cpu=True), "limits": str(CPU_LIMITS), "seeds": seeds,
              "command": "bench/fuzz_memory.py " + " ".join(sys.argv[1:])}
    out = ROOT / "bench" / "results"
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{args.name}.md").write_text(markdown(result) + "\n", encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
