"""Benchmark: the same prompts through each way of calling comfybento, stock ComfyUI and the in-process limit, one run.

    .venv/bin/python bench/clients.py                      # CPU: tiny model, 64x64, 2 steps, 8 clients, 64 requests each way
    .venv/bin/python bench/clients.py --profile sd15       # GPU: full-size SD1.5 (random weights), 512x512, 20 steps

Rows, on one comfybento server (and stock ComfyUI's own server for the baseline), each with distinct prompts and seeds:
- native: POST /txt2img, the images as base64 in the JSON answer;
- openai-b64: the official `openai` Python package, unchanged but for base_url: `images.generate(response_format="b64_json")`;
- openai-url: the same with `response_format="url"`, each image then downloaded (as OpenAI's clients do);
- openai-n4: `images.generate(n=4)`: four images from one call, one engine batch;
- comfyui: ComfyUI's API on comfybento (POST /prompt, its /ws, GET /view), as ComfyUI clients call it;
- stock: the same ComfyUI calls against stock ComfyUI's server (the baseline);
- limit: sampler + decoder in a tight loop in one process at the server's largest batch (the ceiling).
What it shows: the cost of each client's protocol over the native endpoint, and that all of them batch (mean batch
from the engine's metrics). Results: bench/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    PROFILES,
    Send,
    engine_figures,
    limit_rows,
    machine,
    measure,
    ours_sender,
    scrape,
    serve_ours,
    serve_stock,
    stock_sender,
    workspace,
)
from tests.e2e.conftest import stop_server  # noqa: E402

CLIENT_PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {**PROFILES["cpu"], "width": 64, "height": 64, "steps": 2, "max_batch": 8, "n": 64, "clients": 8},
    "sd15": {**PROFILES["sd15"], "max_batch": 16, "n": 128, "clients": 16},
}
WAYS = ("native", "openai-b64", "openai-url", "openai-n4", "comfyui")


def openai_sender(url: str, body: dict[str, Any], response_format: str, n: int = 1) -> Send:
    """images.generate through the official SDK; returns the images it got (downloading each URL answer)."""
    from openai import AsyncOpenAI

    clients: dict[int, AsyncOpenAI] = {}  # one per event loop: each measurement runs in a loop of its own
    size = f"{body['width']}x{body['height']}"

    async def send(http: httpx.AsyncClient, i: int) -> int:
        loop = id(asyncio.get_running_loop())
        client = clients.get(loop)
        if client is None:
            client = clients[loop] = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=1800, max_retries=0)
        answer = await client.images.generate(model="txt2img", prompt=f"a photo of object {i}", n=n, size=size,
                                              quality="bench", response_format=response_format)  # type: ignore[call-overload]  # quality: a preset
        images = answer.data or []
        for image in images:
            if response_format == "url":
                assert image.url, image
                (await http.get(image.url)).raise_for_status()
            else:
                assert image.b64_json and base64.b64decode(image.b64_json)[:4] == b"\x89PNG", "not a PNG"
        return len(images)

    return send


def run_way(name: str, send: Send, url: str | None, clients: int, n: int) -> dict[str, Any]:
    asyncio.run(measure(send, min(4, clients), 8))  # warm: connections, caches
    before = scrape(url) if url else None
    row: dict[str, Any] = {"way": name, **asyncio.run(measure(send, clients, n))}
    if url and before is not None:
        row.update(engine_figures(before, scrape(url)))
    print(json.dumps(row), flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    native = next(r for r in rows if r["way"] == "native")["images_per_s"]
    stock = next((r["images_per_s"] for r in rows if r["way"] == "stock"), None)
    limit = result["limit"]["images_per_s"]
    lines = [f"# Benchmark: {result['name']}", "", f"Machine: {result['machine']}. Workload: {result['workload']}.", "",
             f"Command: `{result['command']}`", "",
             "| way | clients | requests | img/s | vs native | vs stock | vs limit | p50 (s) | p95 (s) | mean batch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
        vs_stock = f"{r['images_per_s'] / stock:.2f}x" if stock else "-"
        lines.append(f"| {r['way']} | {r['clients']} | {r['requests']} | {r['images_per_s']:.2f} | "
                     f"{r['images_per_s'] / native:.2f} | {vs_stock} | {r['images_per_s'] / limit:.2f} | "
                     f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {batch} |")
    lines += ["", f"Limit (sampler + decoder in a loop, one process, batch {result['limit']['batch']}): "
              f"{limit:.2f} img/s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=sorted(CLIENT_PROFILES), default="cpu")
    parser.add_argument("--n", type=int, default=None, help="requests per way (default: the profile's)")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default: the profile's)")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock ComfyUI baseline")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    profile = CLIENT_PROFILES[args.profile]
    n, clients = args.n or profile["n"], args.clients or profile["clients"]
    body = {"width": profile["width"], "height": profile["height"], "steps": profile["steps"]}
    cpu = bool(profile["cpu"])
    space = workspace(profile, "comfybento-bench-clients-")
    root, graph, models = space.root, space.graph, space.models
    # OpenAI's API has no steps: its `quality` picks a sidecar preset, here the profile's steps.
    (root / "workflows" / "txt2img.yaml").write_text(f"presets:\n  bench: {{steps: {profile['steps']}}}\n")
    env = {**space.env, "COMFYBENTO_MAX_BATCH_SIZE": str(profile["max_batch"])}
    result: dict[str, Any] = {
        "name": args.name or f"{time.strftime('%Y-%m-%d')}-{args.profile}-clients", "machine": machine(cpu),
        "workload": f"txt2img, {profile['ckpt']}, {body['width']}x{body['height']}, {body['steps']} steps, euler, cfg 8",
        "command": "python bench/clients.py " + " ".join(sys.argv[1:]), "rows": [],
    }
    if not args.no_stock:
        proc, url = serve_stock(root / "stock", models, cpu)
        try:
            result["rows"].append(run_way("stock", stock_sender(url, graph, body), None, clients, n))
        finally:
            stop_server(proc)
    proc, url = serve_ours("ours", root / "ours", env)
    try:
        senders = {"native": ours_sender(url, body), "openai-b64": openai_sender(url, body, "b64_json"),
                   "openai-url": openai_sender(url, body, "url"), "openai-n4": openai_sender(url, body, "b64_json", n=4),
                   "comfyui": stock_sender(url, graph, body)}
        for way in WAYS:
            result["rows"].append(run_way(way, senders[way], url, clients, n // 4 if way == "openai-n4" else n))
    finally:
        stop_server(proc)
    [result["limit"]] = limit_rows(profile["ckpt"], body, [profile["max_batch"]], cpu)
    out = ROOT / "bench" / "results" / result["name"]
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
