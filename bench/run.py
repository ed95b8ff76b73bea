"""Benchmark: comfybento vs stock ComfyUI's server vs the in-process limit, on one machine, in one run.

    .venv/bin/python bench/run.py                       # CPU: tiny model, 512x512, 2 steps
    .venv/bin/python bench/run.py --profile sd15        # GPU: full-size SD1.5 (random weights), 512x512, 20 steps
    .venv/bin/python bench/run.py --profile sdxl        # GPU: full-size SDXL (random weights), 1024x1024, 20 steps
    .venv/bin/python bench/run.py --levels 1,4 --quick  # a short smoke run

Rows, each on the same graph (workflows/txt2img.json with the profile's
checkpoint), size, steps and machine:
- stock: stock ComfyUI's own server (POST /prompt, its websocket, GET /view);
- off: comfybento with batching off (COMFYBENTO_BATCHING=0);
- ours: comfybento's scheduler (the default);
- bentoml: BentoML's adaptive batcher in front of the engine (COMFYBENTO_ENGINE_ENTRY=bentoml);
- limit: sampler + decoder in a tight loop in one process, no serving, at each batch size.
Clients send distinct prompts and seeds. The GPU profiles generate their
checkpoints from bench/models.gpu.lock first. Results: bench/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import server_processes, start_server, stop_server, wait_ready  # noqa: E402
from tests.helpers import free_port  # noqa: E402

Send = Callable[[httpx.AsyncClient, int], Awaitable[int]]
# Every request of the whole run gets a distinct prompt and seed: ComfyUI's cache must never answer one.
_REQUEST_IDS = itertools.count()

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"ckpt": "tiny-sd.safetensors", "width": 512, "height": 512, "steps": 2, "levels": "1,4,16", "cpu": True},
    "cpu-128": {"ckpt": "tiny-sd.safetensors", "width": 128, "height": 128, "steps": 20, "levels": "1,4,16,32", "cpu": True},
    "sd15": {"ckpt": "sd15-random.safetensors", "width": 512, "height": 512, "steps": 20, "levels": "1,8,32", "cpu": False},
    "sdxl": {"ckpt": "sdxl-random.safetensors", "width": 1024, "height": 1024, "steps": 20, "levels": "1,8,16", "cpu": False},
}
SYSTEMS = ("stock", "off", "ours", "bentoml")


async def measure(send: Send, concurrency: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    images = 0
    counter = iter(range(total))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal images
        for _ in counter:
            started = time.perf_counter()
            produced = await send(http, next(_REQUEST_IDS))  # (not `images += await ...`: that loses updates)
            images += produced
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if images < total:
        raise RuntimeError(f"{total} requests returned only {images} images")
    latencies.sort()
    return {
        "clients": concurrency, "requests": total, "images_per_s": images / elapsed,
        "p50_s": statistics.median(latencies), "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def ours_sender(url: str, body: dict[str, Any]) -> Send:
    async def send(http: httpx.AsyncClient, i: int) -> int:
        resp = await http.post(f"{url}/txt2img", json={**body, "prompt": f"a photo of object {i}", "seed": 1000 + i})
        resp.raise_for_status()
        return len(resp.json()["outputs"])

    return send


def stock_sender(url: str, graph: dict[str, dict], body: dict[str, Any]) -> Send:
    import aiohttp

    async def send(http: httpx.AsyncClient, i: int) -> int:
        prompt = json.loads(json.dumps(graph))
        prompt["3"]["inputs"].update(seed=1000 + i, steps=body["steps"])
        prompt["5"]["inputs"].update(width=body["width"], height=body["height"])
        prompt["6"]["inputs"]["text"] = f"a photo of object {i}"
        client_id = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            resp = await http.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id})
            resp.raise_for_status()
            prompt_id = resp.json()["prompt_id"]
            files: list[dict[str, str]] = []
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data["data"].get("prompt_id") != prompt_id:
                    continue
                if data["type"] == "executed":
                    files += (data["data"].get("output") or {}).get("images", [])
                elif data["type"] == "execution_error":
                    raise RuntimeError(data["data"].get("exception_message"))
                elif data["type"] == "executing" and data["data"].get("node") is None:
                    break
        for img in files:  # download the PNGs, as our clients receive them
            (await http.get(f"{url}/view", params=img)).raise_for_status()
        return len(files)

    return send


# ---------------------------------------------------------------- metrics of our servers


def scrape(url: str) -> dict[str, float]:
    """Sums of the engine's counters that the rows report (batch sizes, executor idle time)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"comfybento_batch_size_sum", "comfybento_batch_size_count", "comfybento_executor_busy_seconds_total",
              "comfybento_executor_idle_while_queued_seconds_total", "comfybento_queue_nonempty_seconds_total",
              "comfybento_executor_coalescing_seconds_total"}
    totals = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] += sample.value
    return totals


def engine_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    batches = d["comfybento_batch_size_count"]
    queued = d["comfybento_queue_nonempty_seconds_total"]
    return {
        "mean_batch": d["comfybento_batch_size_sum"] / batches if batches else 0.0,
        "executor_idle_while_queued": d["comfybento_executor_idle_while_queued_seconds_total"] / queued if queued else 0.0,
        "queued_s": queued,
        "coalescing_s": d["comfybento_executor_coalescing_seconds_total"],
        "executor_busy_s": d["comfybento_executor_busy_seconds_total"],
    }


def idle_text(row: dict[str, Any]) -> str:
    """The executor's idle share while requests waited (and its coalescing waits); n/a when (almost) nothing waited."""
    queued = row.get("queued_s")
    if queued is None:  # results written before queued_s was recorded
        return f"{100 * row['executor_idle_while_queued']:.1f}%"
    if queued < 1.0:
        return "(nothing waited)"
    text = f"{100 * row['executor_idle_while_queued']:.1f}% of {queued:.0f} s"
    return text + f" (+{row['coalescing_s']:.1f} s coalescing)" if "coalescing_s" in row else text


def process_memory(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    """RSS (MB) of the arbiter, front and engine; on a GPU, each one's device memory (MiB)."""
    out: dict[str, float] = {}
    gpu = _gpu_memory_by_pid()
    for p in server_processes(proc):
        cmd = p.cmdline()
        role = "arbiter" if p.pid == proc.pid else ("engine" if "comfybento-engine" in cmd else "front")
        out[f"{role}_rss_mb"] = p.memory_info().rss / 2**20
        if gpu:
            out[f"{role}_gpu_mib"] = gpu.get(p.pid, 0.0)
    return out


def _gpu_memory_by_pid() -> dict[int, float]:
    try:
        text = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [line.split(",") for line in text.strip().splitlines() if line.strip()]
    return {int(pid): float(mem) for pid, mem in rows}


# ---------------------------------------------------------------- the systems


def serve_ours(system: str, work: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        "COMFYBENTO_BATCHING": "0" if system == "off" else "1",
        "COMFYBENTO_ENGINE_ENTRY": "bentoml" if system == "bentoml" else "scheduler",
        "COMFYBENTO_MAX_BATCH_SIZE": "32", "COMFYBENTO_MAX_QUEUE": "10000", "COMFYBENTO_MAX_LATENCY_MS": "600000",
        "COMFYBENTO_MAX_IMAGE_PIXELS": str(1024 * 1024), "COMFYBENTO_MAX_REQUEST_PIXELS": str(1024 * 1024),  # the CPU's 448²
        "COMFYBENTO_WORK_DIR": str(work), **env_extra,
    }
    log = work / "serve.log"
    work.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(env, log)
    wait_ready(proc, url, log, timeout=900)
    return proc, url


def serve_stock(work: Path, models: Path, cpu: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = (work / "stock.log").open("wb")
    cmd = [sys.executable, str(ROOT / "bench" / "stock_comfyui.py"), "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(work / "base"), "--models", str(models)]
    if cpu:
        cmd.append("--cpu")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((work / "stock.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/system_stats", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    raise RuntimeError("stock ComfyUI did not start")


def run_system(system: str, send: Send, url: str, levels: list[int], per_client: int, warmup: int) -> list[dict[str, Any]]:
    # Steady state first: warm caches, and take BentoML's batching optimizer through its training calls.
    asyncio.run(measure(send, min(4, max(levels)), warmup))
    rows = []
    for clients in levels:
        before = scrape(url) if system != "stock" else None
        row: dict[str, Any] = asyncio.run(measure(send, clients, max(8, clients * per_client)))
        if before is not None:
            row.update(engine_figures(before, scrape(url)))
        rows.append(row)
        print(system, json.dumps(row), flush=True)
    return rows


def limit_rows(ckpt: str, body: dict[str, Any], levels: list[int], cpu: bool) -> list[dict[str, float]]:
    """Sampler + decoder in a tight loop, in-process, no serving (the ceiling)."""
    code = f"""
import json, time, torch
from comfybento.config import get_settings
from comfybento.runtime.bootstrap import bootstrap
bootstrap(get_settings())
import nodes, comfy.model_management as mm
model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint({ckpt!r})[:3]
rows = []
with torch.inference_mode():
    for b in {levels!r}:
        def once():
            pos = nodes.CLIPTextEncode().encode(clip, "a photo")[0]
            neg = nodes.CLIPTextEncode().encode(clip, "")[0]
            lat = nodes.EmptyLatentImage().generate({body['width']}, {body['height']}, b)[0]
            s = nodes.common_ksampler(model, 1, {body['steps']}, 8.0, "euler", "normal", pos, neg, lat)[0]
            img = nodes.VAEDecode().decode(vae, s)[0]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return img
        once()
        n = max(2, 16 // b)
        t = time.perf_counter()
        for _ in range(n):
            once()
        dt = (time.perf_counter() - t) / n
        rows.append({{"batch": b, "images_per_s": b / dt, "seconds_per_batch": dt}})
print("ROWS" + json.dumps(rows))
"""
    env = {**os.environ, "COMFYBENTO_CPU": "1" if cpu else "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("ROWS"))[4:])


def machine(cpu: bool) -> str:
    if not cpu:
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return f"CPU: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, {platform.system()}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Benchmark: {result['name']}", "", f"Machine: {result['machine']}. Workload: {result['workload']}.", "",
             f"Command: `{result['command']}`", "",
             "| clients | stock img/s | off img/s | ours img/s | bentoml img/s | ours vs stock | ours vs limit | ours vs bentoml "
             "| mean batch ours / bentoml | ours: executor idle while queued | p50 stock / off / ours (s) | p95 stock / ours (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    limit_by_batch = {r["batch"]: r["images_per_s"] for r in result["limit"]}
    rows = zip(*(result[s] for s in SYSTEMS), strict=True)
    for stock, off, ours, bento in rows:
        c = ours["clients"]
        limit = limit_by_batch.get(c) or max(limit_by_batch.values())
        lines.append(
            f"| {c} | {stock['images_per_s']:.2f} | {off['images_per_s']:.2f} | {ours['images_per_s']:.2f} | "
            f"{bento['images_per_s']:.2f} | {ours['images_per_s'] / stock['images_per_s']:.2f}x | {ours['images_per_s'] / limit:.2f} | "
            f"{ours['images_per_s'] / bento['images_per_s']:.2f}x | {ours['mean_batch']:.1f} / {bento['mean_batch']:.1f} | "
            f"{idle_text(ours)} | {stock['p50_s']:.2f} / {off['p50_s']:.2f} / {ours['p50_s']:.2f} | "
            f"{stock['p95_s']:.2f} / {ours['p95_s']:.2f} |")
    lines += ["", "Limit (sampler + decoder in a loop, one process, no serving): " + ", ".join(
        f"batch {r['batch']}: {r['images_per_s']:.2f} img/s" for r in result["limit"]), ""]
    mem = result.get("memory", {})
    if mem:
        lines += ["Process memory while serving (ours): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(mem.items())), ""]
    return "\n".join(lines)


def prepare_models(lock: Path, models: Path) -> None:
    env = {**os.environ, "COMFYBENTO_MODELS_LOCK": str(lock), "COMFYBENTO_MODELS": str(models)}
    subprocess.run([sys.executable, "-m", "comfybento", "models", "fetch"], cwd=ROOT, env=env, check=True)


@dataclass(frozen=True)
class Workspace:
    """A benchmark's served folder: the shipped txt2img graph on the profile's checkpoint, its models fetched."""

    root: Path  # a fresh temporary folder; the graph is in root/workflows
    graph: dict[str, Any]  # the API-format graph as served (stock ComfyUI gets the same)
    models: Path  # the models folder, fetched from the profile's lock
    env: dict[str, str]  # COMFYBENTO_* for serving it: device, workflows, models.lock and models folder


def workspace(profile: dict[str, Any], prefix: str, models: Path | None = None) -> Workspace:
    cpu = bool(profile["cpu"])
    lock = ROOT / ("models.lock" if cpu else "bench/models.gpu.lock")
    models = models or ROOT / "models"
    prepare_models(lock, models)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    (root / "workflows").mkdir()
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = profile["ckpt"]
    (root / "workflows" / "txt2img.json").write_text(json.dumps(graph))
    env = {"COMFYBENTO_CPU": "1" if cpu else "0", "COMFYBENTO_WORKFLOWS": str(root / "workflows"),
           "COMFYBENTO_MODELS_LOCK": str(lock), "COMFYBENTO_MODELS": str(models)}
    return Workspace(root, graph, models, env)


def rewrite_markdown(json_path: Path) -> None:
    """Regenerate a result's .md from its .json (after a change to the table)."""
    result = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--levels", default=None, help="client counts (default: the profile's)")
    parser.add_argument("--per-client", type=int, default=3, help="requests per client at each level (at least 8 in all)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="a subset of " + ",".join(SYSTEMS))
    parser.add_argument("--warmup", type=int, default=8, help="requests (4 at a time) before measuring each system")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    levels = [int(x) for x in (args.levels or profile["levels"]).split(",")]
    per_client = 1 if args.quick else args.per_client
    body = {"width": profile["width"], "height": profile["height"], "steps": profile["steps"]}
    cpu = bool(profile["cpu"])
    models = Path(os.environ.get("COMFYBENTO_MODELS", ROOT / "models"))
    space = workspace(profile, "comfybento-bench-", models)
    result: dict[str, Any] = {
        "name": args.name or f"{time.strftime('%Y-%m-%d')}-{args.profile}", "machine": machine(cpu),
        "workload": f"txt2img, {profile['ckpt']}, {body['width']}x{body['height']}, {body['steps']} steps, euler, cfg 8",
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
    }
    warmup = 4 if args.quick else args.warmup
    for system in args.systems.split(","):
        proc, url = serve_stock(space.root / "stock", space.models, cpu) if system == "stock" else serve_ours(system, space.root / system, space.env)
        try:
            send = stock_sender(url, space.graph, body) if system == "stock" else ours_sender(url, body)
            result[system] = run_system(system, send, url, levels, per_client, warmup)
            if system == "ours":
                result["memory"] = process_memory(proc)
        finally:
            stop_server(proc)
    result["limit"] = limit_rows(profile["ckpt"], body, levels, cpu)
    out = ROOT / "bench" / "results" / result["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    if all(s in result for s in SYSTEMS):
        out.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))


if __name__ == "__main__":
    main()
