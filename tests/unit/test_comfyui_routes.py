"""ComfyUI's routes on the real jobs app (in-process client), with a real SQLite store, output folder and catalog."""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from comfybento.config import Settings
from comfybento.errors import InvalidRequest, NotFound
from comfybento.front.compat import comfyui
from comfybento.front.compat.comfyui import files, routes
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.root import root_app
from comfybento.models.lock import parse_lock
from comfybento.outputs.encoding import png_bytes
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import load_workflow
from tests.helpers import sample_image

ROOT = Path(__file__).resolve().parents[2]
GRAPH = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
PNG = png_bytes(sample_image(8, 8))


@pytest.fixture
def client(node_defs, tmp_path):
    settings = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")})
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), settings)
    service = JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"),
                         AllowList(["127.0.0.1"]), max_items=10_000, retention_s=60)
    app = root_app(lambda: service.storage)  # ComfyUI's routes installed
    app.state.jobs = service
    routes = len(app.router.routes)
    comfyui.install(app)  # a second call adds nothing
    assert len(app.router.routes) == routes
    with TestClient(app) as c:
        yield c, service


def _graph(text: str = "a red fox") -> dict[str, Any]:
    graph = copy.deepcopy(GRAPH)
    graph["6"]["inputs"]["text"] = text
    return graph


def _finish(service: JobService) -> None:
    """Run the one queued item as the runner records it: one PNG from node 9."""
    (lease,) = service.store.lease("w", 1, 60, 3)
    key = f"{lease.job_id}/00000-a1-save_image-0.png"
    service.storage.put(key, PNG, "image/png")
    output = {"output": "save_image", "node_id": "9", "index": 0, "kind": "image", "media_type": "image/png", "key": key}
    assert service.store.complete("w", lease, {"outputs": [output], "batch_size": 1})


def test_a_matching_prompt_is_a_job_of_the_workflow_and_its_history_keeps_the_graph(client):
    c, service = client
    graph = _graph("a lighthouse")
    r = c.post("/api/prompt", json={"prompt": graph, "client_id": "c1", "extra_data": {"k": 1}})
    assert r.status_code == 200 and set(r.json()) == {"prompt_id", "number", "node_errors"}
    prompt_id = r.json()["prompt_id"]
    (item,) = service.store.get_items(prompt_id, 0, 10)
    assert service.job(prompt_id).workflow == "txt2img" and item.params["prompt"] == "a lighthouse"
    assert c.get("/prompt").json() == {"exec_info": {"queue_remaining": 1}}
    assert [e[1] for e in c.get("/queue").json()["queue_pending"]] == [prompt_id]
    assert c.get(f"/history/{prompt_id}").json() == {}  # not finished yet
    _finish(service)
    entry = c.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["prompt"][1:4] == [prompt_id, graph, {"k": 1}] and entry["status"]["completed"] is True
    image = entry["outputs"]["9"]["images"][0]
    assert image == {"filename": "00000-a1-save_image-0.png", "subfolder": prompt_id, "type": "output"}
    view = c.get("/view", params=image)
    assert view.content == PNG and view.headers["content-type"] == "image/png"
    assert list(c.get("/history", params={"max_items": 1}).json()) == [prompt_id]
    assert c.post("/history", json={"delete": [prompt_id]}).status_code == 200
    assert c.get("/history").json() == {} and service.store.get_job(prompt_id) is None


def test_a_mismatched_graph_gets_comfyuis_error_shape_naming_the_difference(client):
    c, _ = client
    graph = _graph()
    del graph["7"]
    r = c.post("/prompt", json={"prompt": graph})
    assert r.status_code == 400
    body = r.json()
    assert body["node_errors"] == {} and body["error"]["type"] == "invalid_prompt"
    assert "node '7' (CLIPTextEncode) is missing" in body["error"]["message"]
    assert c.post("/prompt", content=b"{not json").status_code == 400
    assert "prompt" in c.post("/prompt", json={"prompt": []}).json()["error"]["message"]


def test_an_unmatched_prompt_runs_as_a_graph_job_when_submitted_graphs_is_any(client, node_defs):
    """COMFYBENTO_SUBMITTED_GRAPHS=any: /prompt queues what /jobs and /api/v2/jobs run (as the README says)."""
    from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs

    c, service = client
    graph = _graph()
    graph["100"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    service.free_graphs = FreeGraphs(Settings.from_env({"COMFYBENTO_SUBMITTED_GRAPHS": "any"}), node_defs,
                                     parse_lock(ROOT / "models.lock"))
    r = c.post("/prompt", json={"prompt": graph, "client_id": "c1"})
    assert r.status_code == 200, r.text
    job = service.job(r.json()["prompt_id"])
    assert job.workflow == FREE_GRAPH
    (item,) = service.store.get_items(job.id, 0, 1)
    assert item.params["graph"]["100"] == {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    graph["100"]["class_type"] = "SaveImageDataSetToFolder"
    graph["100"]["inputs"].update(folder_name="../../x", filename_prefix="a")
    refused = c.post("/prompt", json={"prompt": graph})
    assert refused.status_code == 400 and "node 100 (SaveImageDataSetToFolder)" in refused.json()["error"]["message"]


def test_websocket_sends_status_then_the_end_of_the_clients_prompt_from_the_store(client):
    c, service = client
    prompt_id = c.post("/prompt", json={"prompt": _graph(), "client_id": "ws-client"}).json()["prompt_id"]
    with c.websocket_connect("/ws?clientId=ws-client") as ws:
        first = ws.receive_json()
        assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "ws-client"}}
        _finish(service)  # the store says it finished: the next poll reports it
        seen = []
        while not seen or seen[-1]["type"] != "status":
            seen.append(ws.receive_json())
    kinds = [m["type"] for m in seen]
    assert kinds == ["execution_start", "execution_cached", "executing", "executing", "executed", "execution_success",
                     "executing", "status"]
    assert seen[4]["data"]["output"]["images"][0]["subfolder"] == prompt_id and seen[4]["data"]["node"] == "9"
    assert seen[6]["data"] == {"node": None, "display_node": None, "prompt_id": prompt_id}
    assert seen[7]["data"]["status"]["exec_info"]["queue_remaining"] == 0


def test_cancelled_and_failed_prompts_end_as_comfyui_says(client):
    c, service = client
    first = c.post("/prompt", json={"prompt": _graph("one")}).json()["prompt_id"]
    second = c.post("/prompt", json={"prompt": _graph("two")}).json()["prompt_id"]
    c.post("/queue", json={"delete": [first]})
    assert service.job(first).state == "cancelled"
    assert c.get(f"/history/{first}").json()[first]["status"]["messages"][-1][0] == "execution_interrupted"
    (lease,) = service.store.lease("w", 1, 60, 3)
    assert lease.job_id == second
    error = {"kind": "node", "message": "boom", "retryable": False, "node_id": "3", "class_type": "KSampler"}
    service.store.fail("w", lease, error, None)
    entry = c.get(f"/history/{second}").json()[second]
    kind, data = entry["status"]["messages"][-1]
    assert kind == "execution_error" and data["node_id"] == "3" and data["node_type"] == "KSampler"
    assert data["exception_message"] == "boom" and entry["status"]["status_str"] == "error"


def test_uploads_keep_names_rename_on_clash_and_are_bounded(client, monkeypatch):
    c, _ = client
    up = c.post("/upload/image", files={"image": ("a.png", PNG, "image/png")}, data={"subfolder": "s"})
    assert up.json() == {"name": "a.png", "subfolder": "s", "type": "input"}
    assert c.post("/upload/image", files={"image": ("a.png", PNG, "image/png")}, data={"subfolder": "s"}).json()["name"] == "a.png"
    other = png_bytes(sample_image(9, 9))
    assert c.post("/api/upload/image", files={"image": ("a.png", other, "image/png")}, data={"subfolder": "s"}).json()["name"] == "a (1).png"
    assert c.get("/view", params={"filename": "a (1).png", "subfolder": "s", "type": "input"}).content == other
    small = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models"), "COMFYBENTO_MAX_UPLOAD_BYTES": "50"})
    monkeypatch.setattr(routes, "get_settings", lambda: small)
    r = c.post("/upload/image", files={"image": ("b.png", PNG, "image/png")})
    message = r.json()["error"]["message"]  # ComfyUI's shape, as every ComfyUI route's error
    assert r.status_code == 413 and "50 bytes" in message and "COMFYBENTO_MAX_UPLOAD_BYTES" in message


def test_view_and_uploads_never_follow_a_link_out_of_storage(client, tmp_path):
    """A link placed in the job storage (the webhook secret beside it, say) reads as missing and is never written through."""
    c, service = client
    secret = tmp_path / "webhook-secret"
    secret.write_text("whsec_not_yours")
    job_id = c.post("/api/prompt", json={"prompt": _graph("links")}).json()["prompt_id"]
    _finish(service)  # a real prompt's output folder to plant links in
    c.post("/upload/image", files={"image": ("a.png", PNG, "image/png")}, data={"subfolder": "s"})
    real = {"filename": "00000-a1-save_image-0.png", "subfolder": job_id, "type": "output"}
    assert c.get("/view", params=real).content == PNG
    root = service.storage.root
    (root / job_id / "secret.png").symlink_to(secret)
    (root / "comfyui-inputs" / "s" / "secret.png").symlink_to(secret)
    (root / "comfyui-inputs" / "out").symlink_to(tmp_path)
    for params in ({"filename": "secret.png", "subfolder": job_id, "type": "output"},
                   {"filename": "secret.png", "subfolder": "s", "type": "input"},
                   {"filename": "webhook-secret", "subfolder": "out", "type": "input"}):
        r = c.get("/view", params=params)
        assert r.status_code == 404 and b"whsec" not in r.content, params
    assert c.post("/upload/image", files={"image": ("x.png", PNG, "image/png")}, data={"subfolder": "out"}).status_code == 404
    assert not (tmp_path / "x.png").exists() and secret.read_text() == "whsec_not_yours"


def test_mask_upload_stores_the_original_with_the_masks_alpha(client):
    c, _ = client
    c.post("/upload/image", files={"image": ("orig.png", PNG, "image/png")}, data={"overwrite": "true"})
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    mask.putpixel((0, 0), (0, 0, 0, 255))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    ref = json.dumps({"filename": "orig.png", "subfolder": "", "type": "input"})
    r = c.post("/upload/mask", files={"image": ("mask.png", buf.getvalue(), "image/png")}, data={"original_ref": ref})
    assert r.status_code == 200 and r.json()["type"] == "input"
    stored = Image.open(io.BytesIO(c.get("/view", params={"filename": r.json()["name"], "type": "input"}).content))
    assert stored.mode == "RGBA" and stored.getpixel((0, 0))[3] == 255 and stored.getpixel((5, 5))[3] == 0
    bad = c.post("/upload/mask", files={"image": ("m.png", buf.getvalue(), "image/png")}, data={"original_ref": "nope"})
    assert bad.status_code == 400 and "original_ref" in bad.json()["error"]["message"]  # ComfyUI's 400, not 422


def test_file_references_stay_in_the_input_and_output_folders(tmp_path):
    assert files.key("a.png", "", "input") == "comfyui-inputs/a.png"
    assert files.key("a.png", "x/y", "input") == "comfyui-inputs/x/y/a.png"
    assert files.key("o.png", "job1", "output") == "job1/o.png"
    for filename, subfolder, kind in (("../a.png", "", "input"), ("a.png", "..", "output"), ("a.png", "../x", "input"),
                                      (".hidden", "", "input")):
        with pytest.raises((InvalidRequest, NotFound)):
            files.key(filename, subfolder, kind)
    with pytest.raises(NotFound):
        files.key("a.png", "", "temp")
    assert files.split_annotation("x/a.png [output]") == ("x/a.png", "output")
    assert files.split_annotation("a.png") == ("a.png", "input")


def test_websocket_translates_live_events_and_sends_preview_frames(client):
    c, service = client
    prompt_id = c.post("/prompt", json={"prompt": _graph(), "client_id": "live"}).json()["prompt_id"]
    preview = png_bytes(sample_image(4, 4))
    with c.websocket_connect("/api/ws?clientId=live") as ws:
        assert ws.receive_json()["type"] == "status"
        base = {"job_id": prompt_id, "index": 0}
        c.portal.call(service.live.publish, prompt_id, {"event": "started", "batch_size": 2, "queue_ms": 1.0, **base})
        assert [ws.receive_json()["type"] for _ in range(3)] == ["execution_start", "execution_cached", "executing"]
        c.portal.call(service.live.publish, prompt_id, {"event": "progress", "value": 1, "max": 2, "node_id": "3", **base})
        assert ws.receive_json() == {"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": prompt_id, "node": "3"}}
        event = {"event": "preview", "media_type": "image/png", "data": base64.b64encode(preview).decode(), **base}
        c.portal.call(service.live.publish, prompt_id, event)
        frame = ws.receive_bytes()
        assert frame[:8] == struct.pack(">II", 1, 2) and frame[8:] == preview
        c.portal.call(service.live.publish, "another-job", {"event": "progress", "value": 1, "max": 2, "job_id": "another-job", "index": 0})
        _finish(service)
        c.portal.call(service.live.publish, prompt_id, {"event": "item", "status": "succeeded", "outputs": [], **base})
        kinds = []
        while not kinds or kinds[-1] != "status":
            kinds.append(ws.receive_json()["type"])
    assert kinds == ["executing", "executed", "execution_success", "executing", "status"]

