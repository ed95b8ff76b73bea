"""Benchmark: batch jobs against direct requests, and the job system at 1,000 and 10,000 items, in one run.

    .venv/bin/python bench/jobs.py                          # CPU: tiny model, 64x64, 2 steps (throughput + live latency)
    .venv/bin/python bench/jobs.py --profile sd15           # GPU: full-size SD1.5 (random weights), 512x512, 20 steps
    .venv/bin/python bench/jobs.py --scale 1000,10000       # also the job system at those sizes, on SQLite and Redis
    .venv/bin/python bench/jobs.py --quick                  # a short smoke run

Throughput (one comfybento server, the profile's workflow and size, distinct prompts and seeds):
- stock: stock ComfyUI's own server, the N prompts from C clients (the baseline);
- direct: the N prompts as C concurrent `POST /txt2img` requests;
- job: the same N prompts as one `POST /jobs`, timed from the submit to its terminal state;
- limit: sampler + decoder in a tight loop at the workflow's max batch, no serving (the ceiling).
Each comfybento phase reports img/s, the engine's mean batch size and the executor's idle share while work was
queued (from /metrics). Targets: job >= 0.95 x direct img/s, job mean batch >= 0.9 x max batch, idle < 5%.
Live latency: L requests from 2 clients alone, then the same while a background job keeps the engine busy: p50/p95.

Scale (`--scale`, per store: SQLite, then Redis): submit latency, the front's peak RSS while the job runs,
`GET /jobs/{id}` and `/results` paging latency at the end, the store's size, the archive streamed to the
client (bytes, seconds, front RSS). On SQLite the largest job is also killed with `kill -9` of every process
of the server a third of the way in, then restarted: every item must end exactly once.
Results: bench/results/<name>-jobs.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    PROFILES,
    engine_figures,
    idle_text,
    limit_rows,
    machine,
    measure,
    ours_sender,
    process_memory,
    scrape,
    serve_ours,
    serve_stock,
    stock_sender,
    workspace,
)
from tests.e2e.conftest import kill_server, stop_server  # noqa: E402
from tests.e2e.test_jobs import wait_job  # noqa: E402
from tests.redis_server import redis_server  # noqa: E402

JOB_PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {**PROFILES["cpu"], "width": 64, "height": 64, "steps": 2, "max_batch": 8, "n": 256, "clients": 16},
    "sd15": {**PROFILES["sd15"], "max_batch": 16, "n": 512, "clients": 32},
    "sdxl": {**PROFILES["sdxl"], "max_batch": 8, "n": 128, "clients": 16},
}
_prompt_ids = iter(range(10**9))


def items(n: int, body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """n distinct prompts and seeds (ComfyUI's cache and the result cache never answer one)."""
    return [{**body, "prompt": f"a photo of object {tag} {next(_prompt_ids)}", "seed": 10**6 + next(_prompt_ids)} for _ in range(n)]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def submit(url: str, job_items: list[dict[str, Any]]) -> tuple[str, float]:
    resp, seconds = timed(httpx.post, f"{url}/jobs", json={"workflow": "txt2img", "items": job_items}, timeout=600)
    resp.raise_for_status()
    return str(resp.json()["id"]), seconds


class PeakMemory:
    """Samples the server's processes' RSS every 0.5 s in a thread; `peak` per role (MB)."""

    def __init__(self, proc: Any) -> None:
        self.proc, self.peak, self._stop = proc, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self._run_once()
            if self._stop.wait(0.5):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._run_once()

    def _run_once(self) -> None:
        try:
            for role, mb in process_memory(self.proc).items():
                self.peak[role] = max(mb, self.peak.get(role, 0.0))
        except Exception:  # a process that just ended
            pass

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self


# ---------------------------------------------------------------- throughput and live latency


def direct_phase(url: str, body: dict[str, Any], n: int, clients: int) -> dict[str, Any]:
    before = scrape(url)
    row: dict[str, Any] = asyncio.run(measure(ours_sender(url, body), clients, n))
    row.update(engine_figures(before, scrape(url)))
    return row


def job_phase(url: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    before = scrape(url)
    started = time.perf_counter()
    job_id, submit_s = submit(url, items(n, body, "job"))
    status = wait_job(url, job_id, timeout=7200)
    elapsed = time.perf_counter() - started
    if status["counts"] != {"succeeded": n}:
        raise RuntimeError(f"job ended {status['state']} {status['counts']}")
    return {"requests": n, "images_per_s": n / elapsed, "submit_s": submit_s, **engine_figures(before, scrape(url))}


def live_latency(url: str, body: dict[str, Any], requests: int, background: int) -> dict[str, Any]:
    """p50/p95 of live requests from 2 clients, alone, then while a job of `background` items runs."""
    alone = asyncio.run(measure(ours_sender(url, body), 2, requests))
    job_id, _ = submit(url, items(background, body, "background"))
    while httpx.get(f"{url}/jobs/{job_id}", timeout=60).json()["counts"].get("running", 0) == 0:
        time.sleep(0.1)
    busy = asyncio.run(measure(ours_sender(url, body), 2, requests))
    left = httpx.get(f"{url}/jobs/{job_id}", timeout=60).json()["counts"].get("queued", 0)
    httpx.post(f"{url}/jobs/{job_id}/cancel", timeout=60)
    return {"requests": requests, "alone_p50_s": alone["p50_s"], "alone_p95_s": alone["p95_s"],
            "with_job_p50_s": busy["p50_s"], "with_job_p95_s": busy["p95_s"], "job_items_still_queued_after": left}


def heavy_latency(url: str, body: dict[str, Any], heavy: dict[str, Any], requests: int) -> dict[str, Any]:
    """p50/p95 of live requests from 2 clients while one heavy item (a job of one, 4x the pixels, 10x the steps) runs."""
    job_id, _ = submit(url, [{**heavy, "prompt": "a heavy item", "seed": 7}])
    busy = asyncio.run(measure(ours_sender(url, body), 2, requests))
    status = wait_job(url, job_id, timeout=7200)
    item = httpx.get(f"{url}/jobs/{job_id}/results", timeout=60).json()["items"][0]
    return {"with_heavy_p50_s": busy["p50_s"], "with_heavy_p95_s": busy["p95_s"], "heavy": heavy,
            "heavy_state": status["state"], "heavy_execution_s": (item.get("execution_ms") or 0) / 1000}


# ---------------------------------------------------------------- the job system at scale


def _median_latency(get: Any, url: str, repeat: int = 5, **kwargs: Any) -> float:
    times = []
    for _ in range(repeat):
        resp, seconds = timed(get, url, timeout=300, **kwargs)
        resp.raise_for_status()
        times.append(seconds)
    return statistics.median(times)


def archive_download(url: str, job_id: str) -> dict[str, float]:
    total, started = 0, time.perf_counter()
    with httpx.stream("GET", f"{url}/jobs/{job_id}/archive", timeout=3600) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_bytes():
            total += len(chunk)
    return {"archive_mb": total / 2**20, "archive_s": time.perf_counter() - started}


def store_size_mb(store: str, work: Path, redis_url: str | None) -> float:
    if store == "redis":
        import redis

        return float(redis.Redis.from_url(str(redis_url)).info("memory")["used_memory"]) / 2**20
    return sum(p.stat().st_size for p in work.glob("jobs.sqlite3*")) / 2**20


def exactly_once(url: str, job_id: str, n: int) -> bool:
    seen: list[int] = []
    urls: set[str] = set()
    for offset in range(0, n, 1000):
        page = httpx.get(f"{url}/jobs/{job_id}/results", params={"offset": offset, "limit": 1000}, timeout=300).json()["items"]
        seen += [i["index"] for i in page if i["state"] == "succeeded" and len(i["outputs"]) == 1]
        urls |= {i["outputs"][0]["url"] for i in page if i["outputs"]}
    return seen == list(range(n)) and len(urls) == n


def scale_row(store: str, n: int, body: dict[str, Any], work: Path, env: dict[str, str], redis_url: str | None,
              crash: bool) -> dict[str, Any]:
    proc, url = serve_ours("ours", work, env)
    row: dict[str, Any] = {"store": store, "items": n}
    try:
        with PeakMemory(proc) as mem:
            job_id, row["submit_s"] = submit(url, items(n, body, f"scale-{store}"))
            started = time.perf_counter()
            if crash:
                while httpx.get(f"{url}/jobs/{job_id}", timeout=120).json()["counts"].get("succeeded", 0) < n // 3:
                    time.sleep(0.5)
                kill_server(proc)  # kill -9 of the arbiter and every worker: no cleanup
                proc, url = serve_ours("ours", work, env)
                mem.proc = proc
                row["killed_at_item"] = n // 3
            status = wait_job(url, job_id, timeout=7200)
            row["run_s"] = time.perf_counter() - started
        row.update(front_peak_rss_mb=mem.peak.get("front_rss_mb", 0.0), engine_peak_rss_mb=mem.peak.get("engine_rss_mb", 0.0))
        row["state"], row["counts"] = status["state"], status["counts"]
        row["status_read_s"] = _median_latency(httpx.get, f"{url}/jobs/{job_id}")
        row["results_first_page_s"] = _median_latency(httpx.get, f"{url}/jobs/{job_id}/results", params={"limit": 100})
        row["results_last_page_s"] = _median_latency(httpx.get, f"{url}/jobs/{job_id}/results",
                                                     params={"offset": n - 100, "limit": 100})
        row["exactly_once"] = exactly_once(url, job_id, n)
        row["store_mb"] = store_size_mb(store, work, redis_url)
        with PeakMemory(proc) as mem:
            row.update(archive_download(url, job_id))
        row["front_rss_during_archive_mb"] = mem.peak.get("front_rss_mb", 0.0)
    finally:
        stop_server(proc)
    print("scale", json.dumps(row), flush=True)
    return row


def scale_rows(sizes: list[int], body: dict[str, Any], root: Path, env: dict[str, str], stores: list[str]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes if "sqlite" in stores else []:
        rows.append(scale_row("sqlite", n, body, root / f"sqlite-{n}", env, None, crash=n == max(sizes)))
    if "redis" not in stores:
        return rows
    (root / "redis").mkdir(parents=True, exist_ok=True)
    with redis_server(root / "redis") as redis_url:
        for n in sizes:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
            store_env = {**env, "COMFYBENTO_JOBS_BACKEND": "redis", "COMFYBENTO_REDIS_URL": redis_url}
            rows.append(scale_row("redis", n, body, root / f"redis-{n}", store_env, redis_url, crash=False))
    return rows


# ---------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    d, j, s, lim = result["direct"], result["job"], result.get("stock"), result["limit"]
    max_batch = result["max_batch"]
    lines = [f"# Jobs benchmark: {result['name']}", "", f"Machine: {result['machine']}. Workload: {result['workload']}.", "",
             f"Command: `{result['command']}`", "",
             f"{d['requests']} prompts; direct: {d['clients']} concurrent clients; the workflow's max batch {max_batch}.", "",
             "| phase | img/s | vs direct | vs stock | vs limit | mean batch (of max) | executor idle while queued |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in (("stock ComfyUI (direct)", s), ("comfybento direct", d), ("comfybento job", j)):
        if row is None:
            continue
        stock = f"{row['images_per_s'] / s['images_per_s']:.2f}x" if s else "n/a"
        batch = f"{row['mean_batch']:.2f} ({row['mean_batch'] / max_batch:.2f})" if "mean_batch" in row else "1 (serial)"
        idle = idle_text(row) if "queued_s" in row else "n/a"
        lines.append(f"| {name} | {row['images_per_s']:.2f} | {row['images_per_s'] / d['images_per_s']:.2f} | {stock} | "
                     f"{row['images_per_s'] / lim['images_per_s']:.2f} | {batch} | {idle} |")
    lines += ["", f"Limit: batch {lim['batch']}: {lim['images_per_s']:.2f} img/s (sampler + decoder in a loop, no serving).",
              f"Job submit ({j['requests']} items): {j['submit_s'] * 1000:.0f} ms.", ""]
    live = result["live"]
    lines += ["Live requests (2 clients), alone and while a background job runs:", "",
              "| | p50 (s) | p95 (s) |", "| --- | ---: | ---: |",
              f"| alone | {live['alone_p50_s']:.2f} | {live['alone_p95_s']:.2f} |",
              f"| with a background job | {live['with_job_p50_s']:.2f} | {live['with_job_p95_s']:.2f} |"]
    if "with_heavy_p50_s" in live:
        h = live["heavy"]
        lines.append(f"| with one heavy item running ({h['width']}x{h['height']}, {h['steps']} steps: "
                     f"{live['heavy_execution_s']:.1f} s, {live['heavy_state']}) | {live['with_heavy_p50_s']:.2f} | "
                     f"{live['with_heavy_p95_s']:.2f} |")
    lines.append("")
    if result.get("scale"):
        lines += ["The job system at scale:", "",
                  "| store | items | submit (s) | run (s) | img/s | front peak RSS (MB) | GET /jobs/{id} (ms) | results first / last "
                  "page (ms) | store (MB) | archive MB / s / front RSS (MB) | kill -9 + restart | exactly once |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for r in result["scale"]:
            lines.append(
                f"| {r['store']} | {r['items']} | {r['submit_s']:.2f} | {r['run_s']:.0f} | {r['items'] / r['run_s']:.1f} | "
                f"{r['front_peak_rss_mb']:.0f} | {r['status_read_s'] * 1000:.0f} | {r['results_first_page_s'] * 1000:.0f} / "
                f"{r['results_last_page_s'] * 1000:.0f} | {r['store_mb']:.1f} | {r['archive_mb']:.0f} / {r['archive_s']:.1f} / "
                f"{r['front_rss_during_archive_mb']:.0f} | {'at item ' + str(r['killed_at_item']) if 'killed_at_item' in r else 'no'} | "
                f"{'yes' if r['exactly_once'] else 'NO'} ({r['state']}) |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=sorted(JOB_PROFILES), default="cpu")
    parser.add_argument("--n", type=int, default=None, help="prompts per throughput phase (default: the profile's)")
    parser.add_argument("--clients", type=int, default=None, help="direct clients (default: the profile's)")
    parser.add_argument("--scale", default="", help="job sizes for the scale phase, e.g. 1000,10000 (default: none)")
    parser.add_argument("--scale-stores", default="sqlite,redis", help="stores of the scale phase")
    parser.add_argument("--scale-only", action="store_true", help="only the scale phase")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock ComfyUI baseline")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few prompts")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    profile = JOB_PROFILES[args.profile]
    n = 32 if args.quick else (args.n or profile["n"])
    clients = args.clients or profile["clients"]
    body = {"width": profile["width"], "height": profile["height"], "steps": profile["steps"]}
    cpu = bool(profile["cpu"])
    space = workspace(profile, "comfybento-bench-jobs-")
    root, graph, models = space.root, space.graph, space.models
    env = {**space.env, "COMFYBENTO_MAX_BATCH_SIZE": str(profile["max_batch"]), "COMFYBENTO_JOB_MAX_ITEMS": "100000"}
    result: dict[str, Any] = {
        "name": args.name or f"{time.strftime('%Y-%m-%d')}-{args.profile}-jobs", "machine": machine(cpu),
        "workload": f"txt2img, {profile['ckpt']}, {body['width']}x{body['height']}, {body['steps']} steps, euler, cfg 8",
        "command": "python bench/jobs.py " + " ".join(sys.argv[1:]), "max_batch": profile["max_batch"],
    }
    if args.scale_only:
        result["scale"] = scale_rows([int(x) for x in args.scale.split(",")], body, root / "scale", env, args.scale_stores.split(","))
        out = ROOT / "bench" / "results" / result["name"]
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        return
    if not args.no_stock:
        proc, url = serve_stock(root / "stock", models, cpu)
        try:
            send = stock_sender(url, graph, body)
            asyncio.run(measure(send, 2, 4))  # warm
            result["stock"] = asyncio.run(measure(send, clients, n))
        finally:
            stop_server(proc)
    proc, url = serve_ours("ours", root / "ours", env)
    try:
        asyncio.run(measure(ours_sender(url, body), 4, 2 * profile["max_batch"]))  # warm
        result["direct"] = {**direct_phase(url, body, n, clients), "clients": clients}
        result["job"] = job_phase(url, body, n)
        result["live"] = live_latency(url, body, 8 if args.quick else 24, background=4 * n)
        heavy = {**body, "width": 2 * body["width"], "height": 2 * body["height"], "steps": 10 * body["steps"]}
        result["live"].update(heavy_latency(url, body, heavy, 8 if args.quick else 24))
        result["memory"] = process_memory(proc)
    finally:
        stop_server(proc)
    result["limit"] = limit_rows(profile["ckpt"], body, [profile["max_batch"]], cpu)[0]
    if args.scale:
        result["scale"] = scale_rows([int(x) for x in args.scale.split(",")], body, root / "scale", env, args.scale_stores.split(","))
    out = ROOT / "bench" / "results" / result["name"]
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
