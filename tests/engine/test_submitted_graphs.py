"""Submitted graphs on the real engine: a matched graph shares batches with typed requests; an unmatched one runs alone."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.scheduling.events import Started
from comfybento.serving.engine import Collector, Engine
from comfybento.serving.messages import EngineItem
from comfybento.serving.project import load_project
from comfybento.serving.services import engine_item, free_graph_item
from comfybento.workflows.binding import resolve_seed
from comfybento.workflows.free_graph import FREE_GRAPH
from comfybento.workflows.matching import match_graph
from tests.helpers import make_workflows_dir, service_env

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    env = service_env(make_workflows_dir(root / "workflows", ()), root / "work")
    env["COMFYBENTO_MAX_LATENCY_MS"] = "120000"
    env["COMFYBENTO_SUBMITTED_GRAPHS"] = "any"
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
