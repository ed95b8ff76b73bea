"""Submitted graphs on the real engine: a matched graph shares batches with typed requests; an unmatched one runs alone."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.engine.collect import Collector
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.front.endpoints import engine_item, free_graph_item
from comfybento.scheduling.events import OutputReady, Started
from comfybento.workflows.binding import resolve_seed
from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs
from comfybento.workflows.matching import match_graph
from comfybento.workflows.project import load_project
from tests.helpers import make_workflows_dir, service_env

pytestmark = pytest.mark.engine


# ComfyUI's nodes that read or write datasets and models, each with inputs that would run.
DISK = {
    "SaveImageDataSetToFolder": {"images": ["8", 0], "folder_name": "ds", "filename_prefix": "image"},
    "SaveImageTextDataSetToFolder": {"images": ["8", 0], "texts": "a caption", "folder_name": "dst", "filename_prefix": "image"},
    "SaveTrainingDataset": {"latents": ["3", 0], "conditioning": ["6", 0], "folder_name": "train", "shard_size": 10},
    "LoadImageDataSetFromFolder": {"folder": "ds"},
    "LoadImageTextDataSetFromFolder": {"folder": "ds"},
    "LoadTrainingDataset": {"folder_name": "train"},
    "CheckpointSave": {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "filename_prefix": "checkpoints/ComfyUI"},
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    env = service_env(make_workflows_dir(root / "workflows", ()), root / "work")
    env["COMFYBENTO_MAX_LATENCY_MS"] = "120000"
    env["COMFYBENTO_SUBMITTED_GRAPHS"] = "any"
    env["COMFYBENTO_GRAPH_NODES"] = ",".join(DISK)  # enabled here, to show that they stay in the request's folder
    settings = Settings.from_env(env)
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=10)


def client_graph(served: dict[str, Any], **sampler: Any) -> dict[str, Any]:
    """The served graph as a client would build it: its own node ids (strings of other numbers), no _meta, other values."""
    new_ids = {old: str(50 + n) for n, old in enumerate(reversed(list(served)))}
    graph = {}
    for old, node in copy.deepcopy(served).items():
        inputs = {k: [new_ids[v[0]], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        if node["class_type"] == "KSampler":
            inputs.update(sampler)
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = "client"
        graph[new_ids[old]] = {"class_type": node["class_type"], "inputs": inputs}
    return graph


def test_a_matched_graph_and_typed_requests_run_in_one_batch(engine):
    spec = engine.catalog["txt2img"]
    run = match_graph(engine.catalog, client_graph(spec.graph, seed=4242, steps=3))
    assert run.workflow == "txt2img" and run.values["seed"] == 4242
    graph_item = engine_item(spec, run.values, resolve_seed(spec.params, run.values))
    typed = [engine_item(spec, {"prompt": f"typed {i}", "width": 64, "height": 64, "steps": 3}, 10 + i) for i in range(2)]
    blocker = Collector()  # the executor is busy: what comes meanwhile waits and forms one batch
    engine.submit("txt2img", EngineItem(values={"prompt": "blocker", "width": 128, "height": 128, "steps": 40}, seed=1), blocker)
    deadline = time.monotonic() + 60
    while not any(isinstance(e, Started) for e in blocker.events):
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.005)
    results = engine.run("txt2img", [graph_item, *typed], timeout=180)
    assert blocker.wait(180).ok
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert results[0].seed == 4242 and len(results[0].outputs) == 1


def test_an_unmatched_graph_runs_alone_and_returns_every_output(engine):
    graph = client_graph(engine.catalog["txt2img"].graph, seed=7, steps=2)
    decode = next(i for i, n in graph.items() if n["class_type"] == "VAEDecode")
    graph["999"] = {"class_type": "PreviewImage", "inputs": {"images": [decode, 0]}}
    run = match_graph(engine.catalog, graph, allow_unmatched=True)
    assert run.workflow == FREE_GRAPH
    typed = engine_item(engine.catalog["txt2img"], {"prompt": "typed", "width": 64, "height": 64, "steps": 2}, 3)
    blocker = Collector()
    engine.submit("txt2img", EngineItem(values={"prompt": "blocker", "width": 128, "height": 128, "steps": 30}, seed=1), blocker)
    free, other = Collector(), Collector()
    engine.submit(FREE_GRAPH, free_graph_item(run.values), free)
    engine.submit("txt2img", typed, other)
    result = free.wait(180)
    assert result.ok, result.error
    assert result.batch_size == 1 and other.wait(180).batch_size == 1 and blocker.wait(180).ok
    assert [(o.node_id, o.kind, o.width) for o in result.outputs] == [
        (next(i for i, n in graph.items() if n["class_type"] == "SaveImage"), "image", 64),
        ("999", "image", 64),
    ]


def test_the_engine_checks_an_unmatched_graph_again(engine):
    graph = client_graph(engine.catalog["txt2img"].graph, seed=7, steps=2)
    graph["999"] = {"class_type": "NoSuchNode", "inputs": {}}
    [result] = engine.run(FREE_GRAPH, [free_graph_item({"graph": graph})], timeout=60)
    assert not result.ok and result.status == 422 and "unknown node class 'NoSuchNode'" in str(result.error)


def _small(engine: Engine) -> dict[str, Any]:
    """The served txt2img graph (node ids 3 KSampler, 4 checkpoint, 6 prompt, 8 VAEDecode, 9 SaveImage), tiny and fast."""
    graph = copy.deepcopy(engine.catalog["txt2img"].graph)
    graph["3"]["inputs"].update(steps=1, seed=3)
    graph["5"]["inputs"].update(width=64, height=64)
    return graph


def _with(graph: dict[str, Any], class_type: str, **inputs: Any) -> dict[str, Any]:
    graph = copy.deepcopy(graph)
    graph["300"] = {"class_type": class_type, "inputs": {**DISK.get(class_type, {}), **inputs}}
    if class_type.startswith("Load"):
        graph["301"] = {"class_type": "PreviewAny", "inputs": {"source": ["300", 0]}}
    return graph


def _files(roots: tuple[Path, ...]) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), r.parent) for r in roots for d, _, names in os.walk(r) for f in names}


@pytest.mark.parametrize("class_type", sorted(DISK))
def test_dataset_and_model_nodes_are_refused_unless_the_operator_names_them(engine, monkeypatch, class_type):
    monkeypatch.setattr(engine, "free_graphs", FreeGraphs(replace(engine.settings, graph_nodes=("*",))))
    [result] = engine.run(FREE_GRAPH, [free_graph_item({"graph": _with(_small(engine), class_type)})], timeout=60)
    assert not result.ok and result.status == 422, result.error
    assert f"node 300 ({class_type})" in str(result.error) and f"COMFYBENTO_GRAPH_NODES names {class_type}" in str(result.error)


@pytest.mark.parametrize("class_type", sorted(DISK))
@pytest.mark.parametrize("where", ["absolute", "up"])
def test_a_path_outside_the_requests_folder_is_refused_and_nothing_is_written(engine, tmp_path, class_type, where):
    name = next(n for n in ("folder_name", "folder", "filename_prefix") if n in DISK[class_type])
    target = tmp_path / "outside"
    value = str(target) if where == "absolute" else os.path.relpath(target, engine.comfy_folders[1])
    before = _files(engine.comfy_folders)
    [result] = engine.run(FREE_GRAPH, [free_graph_item({"graph": _with(_small(engine), class_type, **{name: value})})], timeout=60)
    assert not result.ok and result.status == 422, result.error
    assert f"node 300 ({class_type}) input '{name}' is {value!r}" in str(result.error)
    assert not list(tmp_path.iterdir()) and _files(engine.comfy_folders) == before


def test_what_enabled_nodes_write_stays_in_the_requests_folder_and_goes_with_it(engine):
    graph = _small(engine)
    for n, class_type in enumerate(("SaveImageDataSetToFolder", "SaveImageTextDataSetToFolder", "SaveTrainingDataset", "CheckpointSave")):
        graph[str(300 + n)] = {"class_type": class_type, "inputs": DISK[class_type]}
    before = _files(engine.comfy_folders)
    seen: list[set[str]] = []
    sink = Collector()

    def watch(event: Any) -> None:  # an output is ready: the graph has run, and its folder is still there
        if isinstance(event, OutputReady) and not seen:
            seen.append(_files(engine.comfy_folders) - before)
        sink(event)

    engine.submit(FREE_GRAPH, free_graph_item({"graph": graph}), watch)
    result = sink.wait(180)
    assert result.ok, result.error
    [folder] = {Path(p).parts[1] for p in seen[0]}
    assert folder.startswith("_graph-")
    written = {p.replace(folder, "F") for p in seen[0]}
    assert {"output/F/ds/image_00000.png", "output/F/dst/image_00000.png", "output/F/dst/image_00000.txt",
            "output/F/train/shard_0000.pkl", "output/F/train/metadata.json"} <= written, written
    assert any(p.startswith("output/F/checkpoints/ComfyUI_") for p in written), written
    assert all(p.startswith("output/F/") for p in written), written
    assert _files(engine.comfy_folders) == before  # deleted with the request
    assert not any((root / folder).exists() for root in engine.comfy_folders)


def test_a_node_error_shows_no_server_path(engine):
    graph = _with(_small(engine), "LoadTrainingDataset", folder_name="missing")
    [result] = engine.run(FREE_GRAPH, [free_graph_item({"graph": graph})], timeout=120)
    assert not result.ok and result.error_kind == "node", result.error
    message = str(result.error)
    assert "node 300 (LoadTrainingDataset) failed: Dataset directory not found: …/missing" in message, message
    assert str(engine.settings.work_dir) not in message and "_graph-" not in message and "/output" not in message
