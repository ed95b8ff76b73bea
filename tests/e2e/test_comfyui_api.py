"""ComfyUI's own server API against a real `bentoml serve`: third-party ComfyUI clients unchanged, and the raw routes."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers import GRAPHS, ROOT, renumbered, sample_image

TXT2IMG = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
IMG2IMG = json.loads((GRAPHS / "img2img.json").read_text())
SDK_DIR = ROOT / "tests" / "js" / "comfyui"


def _png(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    sample_image(width, height).save(buf, format="PNG")
    return buf.getvalue()


def _graph(prompt: str = "a red fox", seed: int = 7) -> dict[str, Any]:
    graph = copy.deepcopy(TXT2IMG)
    graph["6"]["inputs"]["text"] = prompt
    graph["3"]["inputs"]["seed"] = seed
    graph["3"]["inputs"]["steps"] = 2
    return graph


def _run(server: str, graph: dict[str, Any], client_id: str | None = None) -> str:
    body: dict[str, Any] = {"prompt": graph, **({"client_id": client_id} if client_id else {})}
    r = httpx.post(f"{server}/prompt", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["prompt_id"])


def _run_watched(server: str, graph: dict[str, Any], ws_path: str) -> tuple[str, list[dict[str, Any]]]:
    """Queue `graph` with a /ws client listening: its prompt id, and its events up to the final `executing` null."""
    from websockets.sync.client import connect

    client_id = uuid.uuid4().hex
    with connect(f"{server.replace('http', 'ws')}{ws_path}?clientId={client_id}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
        prompt_id = _run(server, graph, client_id)
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "executing" or seen[-1]["data"]["node"] is not None:
            message = json.loads(ws.recv(timeout=240))
            if message["data"].get("prompt_id") == prompt_id:
                seen.append(message)
    return prompt_id, seen


def _wait_history(server: str, prompt_id: str, timeout: float = 240) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = httpx.get(f"{server}/api/history/{prompt_id}", timeout=10).json()
        if prompt_id in entry:
            return dict(entry[prompt_id])
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish")


def test_comfy_api_simplified_runs_the_served_graph(server: str, tmp_path: Path) -> None:
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(TXT2IMG))
    workflow = ComfyWorkflowWrapper(str(path))
    workflow.set_node_param("KSampler", "seed", 4242)
    workflow.set_node_param("KSampler", "steps", 2)
    workflow["6"]["inputs"]["text"] = "a lighthouse at dusk"
    images = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image")
    assert len(images) == 1
    image = Image.open(io.BytesIO(next(iter(images.values()))))
    assert image.format == "PNG" and image.size == (128, 128)


def test_prompt_history_view_and_queue(server: str) -> None:
    graph = _graph("a quiet harbour", 11)
    prompt_id = _run(server, graph)
    queued = httpx.get(f"{server}/queue", timeout=10).json()
    assert set(queued) == {"queue_running", "queue_pending"}
    assert httpx.get(f"{server}/prompt", timeout=10).json()["exec_info"]["queue_remaining"] >= 0
    entry = _wait_history(server, prompt_id)
    assert entry["status"]["completed"] is True and entry["status"]["status_str"] == "success"
    assert entry["prompt"][1] == prompt_id and entry["prompt"][2] == graph  # the graph as submitted
    (image,) = entry["outputs"]["9"]["images"]
    assert image["type"] == "output" and image["subfolder"] == prompt_id
    view = httpx.get(f"{server}/view", params=image, timeout=10)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(view.content)).size == (128, 128)
    assert prompt_id in httpx.get(f"{server}/history", params={"max_items": 50}, timeout=10).json()
    assert prompt_id not in {e[1] for e in httpx.get(f"{server}/api/queue", timeout=10).json()["queue_pending"]}
    # Results come from the same job store as /jobs (prompt_id is the job id).
    assert httpx.get(f"{server}/jobs/{prompt_id}", timeout=10).json()["workflow"] == "txt2img"
    assert httpx.post(f"{server}/history", json={"delete": [prompt_id]}, timeout=10).status_code == 200
    assert httpx.get(f"{server}/history/{prompt_id}", timeout=10).json() == {}
    missing = httpx.get(f"{server}/view", params={"filename": "x.png", "subfolder": "..", "type": "output"}, timeout=10)
    assert 400 <= missing.status_code < 500


def test_mismatched_graph_is_refused_naming_the_difference(server: str) -> None:
    graph = _graph()
    graph["8"]["class_type"] = "VAEDecodeTiled"
    r = httpx.post(f"{server}/api/prompt", json={"prompt": graph}, timeout=10)
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) >= {"type", "message", "details", "extra_info"} and r.json()["node_errors"] == {}
    assert "node '8' (VAEDecodeTiled) is not in the workflow" in error["message"] and "txt2img" in error["message"]
    graph = _graph()
    graph["5"]["inputs"]["batch_size"] = ["4", 0]
    r = httpx.post(f"{server}/prompt", json={"prompt": graph}, timeout=10)
    assert r.status_code == 400 and "node '5'" in r.json()["error"]["message"]


NODE_INFO_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name", "description",
                  "python_module", "category", "output_node"}


def test_object_info_sends_every_key_comfyui_sends(server: str) -> None:
    info = httpx.get(f"{server}/api/object_info", timeout=30).json()
    for name, entry in info.items():
        assert NODE_INFO_KEYS <= entry.keys(), (name, NODE_INFO_KEYS - entry.keys())
        assert entry["name"] == name and len(entry["output_is_list"]) == len(entry["output"]) == len(entry["output_name"])
        assert set(entry["input_order"]) <= set(entry["input"]), name
    sampler = info["KSampler"]
    assert sampler["category"] == "sampling" and sampler["python_module"] == "nodes" and not sampler.get("deprecated")
    assert sampler["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    assert sum(1 for e in info.values() if e.get("deprecated")) < len(info) / 4  # not every node "[DEPR]"
    assert len({e["category"] for e in info.values()}) > 10  # not every node in one category
    one = httpx.get(f"{server}/object_info/KSampler", timeout=10).json()
    assert one == {"KSampler": sampler}


def test_object_info_and_system(server: str) -> None:
    info = httpx.get(f"{server}/object_info", timeout=30).json()
    assert "KSampler" in info and "seed" in info["KSampler"]["input"]["required"]
    one = httpx.get(f"{server}/api/object_info/CheckpointLoaderSimple", timeout=10).json()
    assert "tiny-sd.safetensors" in one["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert httpx.get(f"{server}/object_info/NoSuchNode", timeout=10).json() == {}
    stats = httpx.get(f"{server}/system_stats", timeout=10).json()
    assert stats["system"]["os"] and stats["devices"][0]["type"] == "cpu"
    assert httpx.post(f"{server}/free", json={"unload_models": True}, timeout=10).status_code == 200
    assert isinstance(httpx.get(f"{server}/embeddings", timeout=10).json(), list)


def test_upload_and_websocket_events(server: str) -> None:
    from websockets.sync.client import connect

    up = httpx.post(f"{server}/upload/image", files={"image": ("fox.png", _png(), "image/png")}, data={"overwrite": "true"}, timeout=10)
    assert up.status_code == 200 and up.json() == {"name": "fox.png", "subfolder": "", "type": "input"}
    assert httpx.get(f"{server}/view", params={"filename": "fox.png", "type": "input"}, timeout=10).content == _png()
    graph = copy.deepcopy(IMG2IMG)
    graph["10"]["inputs"]["image"] = "fox.png"
    client_id = uuid.uuid4().hex
    with connect(f"{server.replace('http', 'ws')}/ws?clientId={client_id}", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        prompt_id = _run(server, graph, client_id)
        seen = []
        while True:
            message = json.loads(ws.recv(timeout=240))
            if message["data"].get("prompt_id") not in (None, prompt_id):
                continue
            seen.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    kinds = [m["type"] for m in seen if m["type"] != "status"]
    assert kinds[:3] == ["execution_start", "execution_cached", "executing"]
    assert "progress" in kinds and kinds[-2:] == ["execution_success", "executing"]
    executed = next(m["data"] for m in seen if m["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["subfolder"] == prompt_id
    progress = [m["data"] for m in seen if m["type"] == "progress"]
    assert progress[-1]["value"] == progress[-1]["max"] and progress[-1]["prompt_id"] == prompt_id


def test_upload_limits_and_missing_file(server: str) -> None:
    r = httpx.post(f"{server}/upload/image", files={"subfolder": (None, "")}, timeout=10)  # multipart, no image part
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]  # ComfyUI's shape and status
    form = httpx.post(f"{server}/upload/image", data={"subfolder": ""}, timeout=10)  # not multipart at all
    assert form.status_code == 415 and "multipart/form-data" in form.json()["error"]["message"] and form.json()["request_id"]
    graph = copy.deepcopy(IMG2IMG)
    graph["10"]["inputs"]["image"] = "never-uploaded.png"
    r = httpx.post(f"{server}/prompt", json={"prompt": graph}, timeout=10)
    assert r.status_code == 400 and "never-uploaded.png" in r.json()["error"]["message"]


def test_prompts_share_engine_batches_with_typed_requests(server: str) -> None:
    """Prompts and typed requests of one workflow submitted together run in shared engine batches."""

    def typed(seed: int) -> int:
        r = httpx.post(f"{server}/txt2img", json={"seed": seed, "steps": 2}, timeout=240)
        assert r.status_code == 200, r.text
        return int(r.json()["timings"]["batch_size"])

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda s: _run(server, _graph("shared batch", s)), range(100, 104)))
        sizes = list(pool.map(typed, range(200, 204)))
    results = [httpx.get(f"{server}/jobs/{i}/results", timeout=10) for i in ids]
    for i in ids:
        _wait_history(server, i)
    batch = [httpx.get(f"{server}/jobs/{i}/results", timeout=10).json()["items"][0]["batch_size"] for i in ids]
    assert all(r.status_code == 200 for r in results)
    assert max(batch) > 1 and max(sizes) > 1, (batch, sizes)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_saintno_comfyui_sdk(server: str, tmp_path: Path) -> None:
    if not (SDK_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SDK_DIR, check=True, capture_output=True, timeout=300)
    graph_path = tmp_path / "img2img.json"
    graph_path.write_text(json.dumps(IMG2IMG))
    image_path = tmp_path / "input.png"
    image_path.write_bytes(_png())
    proc = subprocess.run(["node", "run.mjs", server, str(graph_path), str(image_path)], cwd=SDK_DIR, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uploaded"]["filename"] == "comfyui-sdk-input.png" and out["png"] and out["image_bytes"] > 100
    assert out["outputs"]["images"][0]["subfolder"] == out["promptId"]
    assert {"status", "execution_start", "executing", "executed"} <= set(out["events"])
    history = httpx.get(f"{server}/history/{out['promptId']}", timeout=10).json()[out["promptId"]]
    assert history["prompt"][2]["6"]["inputs"]["text"] == "a comfyui-sdk painting"


def test_comfy_cli_run(server: str, tmp_path: Path) -> None:
    """comfy-cli's `comfy run --wait` submits to /prompt, follows /ws to `executing` {node: null} and reports the /view URL."""
    host, port = server.removeprefix("http://").split(":")
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(_graph("a comfy-cli lighthouse", 99)))
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    comfy = str(Path(sys.executable).with_name("comfy"))
    proc = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "run", "--workflow", str(path), "--host", host,
                           "--port", port, "--wait", "--json", "--where", "local", "--timeout", "240"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    urls = [e["url"] for e in events if e.get("event") == "output" or e.get("type") == "output"]
    assert urls, proc.stdout[-3000:]
    image = httpx.get(urls[0], timeout=10)
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (128, 128)


def test_a_renumbered_graph_s_results_come_under_its_own_node_ids(server: str) -> None:
    graph = renumbered(_graph("a renumbered fox", 21))
    prompt_id, seen = _run_watched(server, graph, "/ws")
    named = {m["data"]["node"] for m in seen if m["type"] in ("executing", "executed", "progress")} - {None}
    assert named and named <= set(graph), named  # no event names the served workflow's ids ("3", "9")
    assert any(m["type"] == "progress" and m["data"]["node"] == "n3x" for m in seen)
    executed = next(m["data"] for m in seen if m["type"] == "executed")
    assert executed["node"] == executed["display_node"] == "n9x"
    entry = _wait_history(server, prompt_id)
    assert set(entry["outputs"]) == {"n9x"} and entry["prompt"][4] == ["n9x"] and set(entry["meta"]) == {"n9x"}
    (image,) = entry["outputs"]["n9x"]["images"]
    assert image == executed["output"]["images"][0]
    view = httpx.get(f"{server}/view", params=image, timeout=10)
    assert view.status_code == 200 and Image.open(io.BytesIO(view.content)).size == (128, 128)


def test_a_failing_node_ends_with_execution_error(server: str) -> None:
    graph = json.loads((GRAPHS / "failing.json").read_text())
    graph["10"]["inputs"]["text"] = "boom"
    prompt_id, seen = _run_watched(server, graph, "/api/ws")
    error = next(m["data"] for m in seen if m["type"] == "execution_error")
    assert error["node_id"] == "10" and error["node_type"] == "RaiseOnText" and error["exception_message"]
    assert "execution_success" not in [m["type"] for m in seen]
    entry = _wait_history(server, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False


# ComfyScript's remote mode, unchanged (tests/e2e/comfyscript_txt2img.py), in a child process: load() installs its
# nodes module-wide and patches the event loop.
COMFYSCRIPT = Path(__file__).with_name("comfyscript_txt2img.py")


def test_comfyscript_remote_mode_runs_txt2img(server: str) -> None:
    proc = subprocess.run([sys.executable, str(COMFYSCRIPT), server], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMAGE (128, 128) RGB" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = next(iter(httpx.get(f"{server}/history", params={"max_items": 1}, timeout=10).json().values()))["prompt"][2]
    assert "SaveImage.0" in ids  # ComfyScript's own node ids: the results were found under them


def test_comfy_toolkit_tracks_a_renumbered_graph_to_its_images(server: str) -> None:
    import comfy_toolkit as toolkit

    client = toolkit.ComfyClient(server)
    workflow = renumbered(client.load_workflow(ROOT / "workflows" / "txt2img.json"))
    workflow = toolkit.customize(workflow, positive="a lighthouse at dawn", seed=42)
    workflow["n3x"]["inputs"]["steps"] = 2
    steps: list[tuple[int, int]] = []
    nodes: list[str | None] = []
    result = toolkit.submit_and_track(client, workflow, on_progress=lambda value, total: steps.append((value, total)),
                                      on_node=nodes.append)
    (image,) = result["images"]
    assert image["node_id"] == toolkit.find_node_by_class(workflow, "SaveImage") == "n9x"
    assert steps and steps[-1] == (2, 2) and set(nodes) - {None} <= set(workflow) and "n3x" in nodes
    assert Image.open(io.BytesIO(client.download(image))).size == (128, 128)
