"""Benchmark: comfybento (batching on/off) vs stock ComfyUI's server vs a no-serving limit.

    .venv/bin/python bench/run.py                      # CPU, tiny model, demo workflow
    .venv/bin/python bench/run.py --levels 1,4 --quick # a short smoke run

Every row runs the demo graph (workflows/txt2img.json) with the same model,
size and steps on this machine, in one run. Clients send distinct prompts
and seeds. Results go to bench/results/<name>.json and .md.
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import stop_server, wait_ready  # noqa: E402
from tests.helpers import free_port  # noqa: E402

Send = Callable[[httpx.AsyncClient, int], Awaitable[int]]
# Every request of the whole run gets a distinct prompt and seed: ComfyUI's cache must never answer one.
_REQUEST_IDS = itertools.count()


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
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        # Warm-up, not counted: also takes BentoML's batching optimizer through its training calls.
        await asyncio.gather(*(send(http, next(_REQUEST_IDS)) for _ in range(min(concurrency, 4))))
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


def ours_sender(url: str, body: dict[str, object]) -> Send:
    async def send(http: httpx.AsyncClient, i: int) -> int:
        resp = await http.post(f"{url}/txt2img", json={**body, "prompt": f"a photo of object {i}", "seed": 1000 + i})
        resp.raise_for_status()
        return len(resp.json()["images"])

    return send


def stock_sender(url: str, graph: dict[str, dict], body: dict[str, object]) -> Send:
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


def run_levels(send: Send, levels: list[int], per_client: int) -> list[dict[str, float]]:
    asyncio.run(measure(send, 4, 24))  # steady state before the first measured level
    return [asyncio.run(measure(send, c, max(8, c * per_client))) for c in levels]


def serve_ours(batching: bool, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.e2e.conftest import start_server

    env = {
        "COMFYBENTO_BATCHING": "1" if batching else "0", "COMFYBENTO_MAX_BATCH_SIZE": "32",
        "COMFYBENTO_MAX_QUEUE": "10000", "COMFYBENTO_MAX_LATENCY_MS": "600000",
        "COMFYBENTO_WORK_DIR": str(work), "COMFYBENTO_CPU": os.environ.get("COMFYBENTO_CPU", "1"),
    }
    log = work / "serve.log"
    work.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(env, log)
    wait_ready(proc, url, log)
    return proc, url


def serve_stock(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = (work / "stock.log").open("wb")
    cmd = [sys.executable, str(ROOT / "bench" / "stock_comfyui.py"), "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(work / "base"), "--models", str(ROOT / "models")]
    if os.environ.get("COMFYBENTO_CPU", "1") == "1":
        cmd.append("--cpu")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((work / "stock.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/system_stats", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    raise RuntimeError("stock ComfyUI did not start")


def limit_rows(body: dict[str, object], levels: list[int]) -> list[dict[str, float]]:
    """Sampler + decoder in a tight loop, in-process, no serving (the ceiling)."""
    code = f"""
import json, time, torch
from comfybento.config import get_settings
from comfybento.runtime.bootstrap import bootstrap
bootstrap(get_settings())
import nodes
model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny-sd.safetensors")[:3]
rows = []
with torch.inference_mode():
    for b in {levels!r}:
        def once():
            pos = nodes.CLIPTextEncode().encode(clip, "a photo")[0]
            neg = nodes.CLIPTextEncode().encode(clip, "")[0]
            lat = nodes.EmptyLatentImage().generate({body['width']}, {body['height']}, b)[0]
            s = nodes.common_ksampler(model, 1, {body['steps']}, 8.0, "euler", "normal", pos, neg, lat)[0]
            return nodes.VAEDecode().decode(vae, s)[0]
        once()
        n = max(2, 16 // b)
        t = time.perf_counter()
        for _ in range(n):
            once()
        dt = (time.perf_counter() - t) / n
        rows.append({{"batch": b, "images_per_s": b / dt, "seconds_per_batch": dt}})
print("ROWS" + json.dumps(rows))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "COMFYBENTO_CPU": os.environ.get("COMFYBENTO_CPU", "1")})
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("ROWS"))[4:])


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available() and os.environ.get("COMFYBENTO_CPU") != "1":
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, {platform.system()}"


def markdown(result: dict) -> str:
    lines = [f"# Benchmark: {result['name']}", "", f"Machine: {result['machine']}. Workload: {result['workload']}.", "",
             f"Command: `{result['command']}`", "",
             "| clients | stock ComfyUI img/s | ours, batching off img/s | ours, batching on img/s | on vs stock | on vs limit | p50 stock / on (s) | p95 stock / on (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    limit_by_batch = {r["batch"]: r["images_per_s"] for r in result["limit"]}
    for stock, off, on in zip(result["stock"], result["ours_unbatched"], result["ours_batched"], strict=True):
        c = on["clients"]
        limit = limit_by_batch.get(c) or max(limit_by_batch.values())
        lines.append(f"| {c} | {stock['images_per_s']:.2f} | {off['images_per_s']:.2f} | {on['images_per_s']:.2f} | "
                     f"{on['images_per_s'] / stock['images_per_s']:.2f}x | {on['images_per_s'] / limit:.2f} | "
                     f"{stock['p50_s']:.2f} / {on['p50_s']:.2f} | {stock['p95_s']:.2f} / {on['p95_s']:.2f} |")
    lines += ["", "Limit (sampler + decoder in a loop, no serving): " + ", ".join(
        f"batch {r['batch']}: {r['images_per_s']:.2f} img/s" for r in result["limit"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--per-client", type=int, default=3, help="requests per client at each level (at least 8 in all)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    body = {"width": args.width, "height": args.height, "steps": args.steps}
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="comfybento-bench-"))
    result: dict = {"name": args.name or time.strftime("%Y-%m-%d") + "-cpu-tiny", "machine": machine(),
                    "workload": f"workflows/txt2img.json, tiny SD model, {args.width}x{args.height}, {args.steps} steps, euler, cfg 8",
                    "command": "python bench/run.py " + " ".join(sys.argv[1:])}
    for key, start in (("ours_batched", lambda: serve_ours(True, work / "on")),
                       ("ours_unbatched", lambda: serve_ours(False, work / "off")),
                       ("stock", lambda: serve_stock(work / "stock"))):
        proc, url = start()
        try:
            send = stock_sender(url, graph, body) if key == "stock" else ours_sender(url, body)
            result[key] = run_levels(send, levels, args.per_client)
            print(key, json.dumps(result[key]), flush=True)
        finally:
            stop_server(proc)
    result["limit"] = limit_rows(body, levels)
    out = ROOT / "bench" / "results" / result["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
