"""Unmatched submitted graphs (COMFYBENTO_SUBMITTED_GRAPHS=any): checked against the node registry and models.lock."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.errors import ConfigError
from comfybento.jobs.api_models import JobSubmit
from comfybento.jobs.service import InvalidItems, JobService
from comfybento.jobs.store import SQLiteJobStore
from comfybento.jobs.webhooks import AllowList
from comfybento.models.lock import parse_lock
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import WorkflowSpec, load_workflow
from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs, GraphRefused
from comfybento.workflows.graph import NodeDef
from comfybento.workflows.matching import GraphMismatch, match_graph

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings.from_env({"COMFYBENTO_SUBMITTED_GRAPHS": "any"})


@pytest.fixture
def spec(node_defs: dict[str, NodeDef]) -> WorkflowSpec:
    return load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), SETTINGS)


@pytest.fixture
def free(node_defs: dict[str, NodeDef]) -> FreeGraphs:
    return FreeGraphs(SETTINGS, node_defs, parse_lock(ROOT / "models.lock"))


def _unmatched(spec: WorkflowSpec) -> dict[str, Any]:
    """The workflow with a preview beside its saved image: a graph no workflow serves."""
    graph = copy.deepcopy(spec.graph)
    graph["100"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return graph


def test_the_setting_is_read_once_and_checked():
    assert Settings.from_env({}).submitted_graphs == "match" and not Settings.from_env({}).runs_unmatched_graphs
    assert SETTINGS.runs_unmatched_graphs
    with pytest.raises(ConfigError, match="COMFYBENTO_SUBMITTED_GRAPHS='some' must be one of"):
        Settings.from_env({"COMFYBENTO_SUBMITTED_GRAPHS": "some"})


def test_an_unmatched_graph_is_refused_unless_allowed(spec: WorkflowSpec):
    catalog = {"txt2img": spec}
    with pytest.raises(GraphMismatch, match="node '100' \\(PreviewImage\\) is not in the workflow"):
        match_graph(catalog, _unmatched(spec))
    run = match_graph(catalog, _unmatched(spec), allow_unmatched=True)
    assert run.workflow == FREE_GRAPH and run.values == {"graph": _unmatched(spec)}
    assert match_graph(catalog, copy.deepcopy(spec.graph), allow_unmatched=True).workflow == "txt2img"  # a match still batches


def test_a_good_graph_becomes_a_one_off_workflow_that_runs_alone(spec: WorkflowSpec, free: FreeGraphs):
    one_off = free.spec({"graph": _unmatched(spec)})
    assert one_off.name == FREE_GRAPH and one_off.params == () and one_off.batch_plan is None
    assert [o.class_type for o in one_off.outputs] == ["SaveImage", "PreviewImage"]
    assert [m.filename for m in one_off.models] == ["tiny-sd.safetensors"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g["3"].update(class_type="KSamplerTurbo"), "node 3 (KSamplerTurbo): unknown node class 'KSamplerTurbo'"),
        (lambda g: g["3"]["inputs"].update(steps=0), "node 3 (KSampler): input 'steps' is 0, outside [1, 10000]"),
        (lambda g: g["3"]["inputs"].update(steps="20"), "node 3 (KSampler): input 'steps' is '20', not an integer"),
        (lambda g: g["3"]["inputs"].update(sampler_name="warp"), "input 'sampler_name' is 'warp', not one of"),
        (lambda g: g["3"]["inputs"].update(cfg=float("nan")), "input 'cfg' is nan, not a finite number"),
        (lambda g: g["3"].update(inputs="seed=1"), "graph: expected an API-format graph"),
        (lambda g: g["3"]["inputs"].update(model="a model"), "input 'model' is 'a model': it takes a link from a MODEL output"),
        (lambda g: g["3"]["inputs"].update(speed=2), "input 'speed' is not an input of KSampler"),
        (lambda g: g["3"]["inputs"].pop("latent_image"), "required input 'latent_image' is missing"),
        (lambda g: g["8"]["inputs"].update(samples=["77", 0]), "links to node 77, which does not exist"),
        (lambda g: g["4"]["inputs"].update(ckpt_name="stolen.safetensors"), "model 'stolen.safetensors' is not in models.lock"),
        (lambda g: g.update({"9": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}, "100": {}}), "graph:"),
    ],
)
def test_what_the_registry_or_models_lock_refuses_is_named(spec: WorkflowSpec, free: FreeGraphs, change: Any, message: str):
    graph = _unmatched(spec)
    change(graph)
    with pytest.raises(GraphRefused, match=re.escape(message)) as err:
        free.spec({"graph": graph})
    assert err.value.error_code == 422


def test_input_files_are_refused_clearly(spec: WorkflowSpec, free: FreeGraphs):
    graph = _unmatched(spec)
    graph["200"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    graph["201"] = {"class_type": "PreviewImage", "inputs": {"images": ["200", 0]}}
    with pytest.raises(GraphRefused, match="node 200 \\(LoadImage\\) input 'image' reads an input file"):
        free.spec({"graph": graph})


def test_jobs_of_unmatched_graphs_are_checked_and_queued_only_when_allowed(spec: WorkflowSpec, free: FreeGraphs, tmp_path):
    def service(free_graphs: FreeGraphs | None) -> JobService:
        return JobService(
            {"txt2img": spec},
            SQLiteJobStore(tmp_path / "j.db"),
            LocalStorage(tmp_path / "out"),
            AllowList(["127.0.0.1"]),
            max_items=5,
            retention_s=60,
            free_graphs=free_graphs,
        )

    run = match_graph({"txt2img": spec}, _unmatched(spec), allow_unmatched=True)
    with pytest.raises(Exception, match="unknown workflow '_graph'"):
        service(None).submit(JobSubmit(workflow=run.workflow, items=[run.values]))
    job, created = service(free).submit(JobSubmit(workflow=run.workflow, items=[run.values]), owner="alice")
    assert created and job.workflow == FREE_GRAPH and job.owner == "alice"
    stored = service(free).store.get_items(job.id, 0, 10)
    assert [i.params["graph"]["100"]["class_type"] for i in stored] == ["PreviewImage"] and stored[0].seed is None
    bad = _unmatched(spec)
    bad["3"]["inputs"]["cfg"] = 1000.0
    with pytest.raises(InvalidItems, match=r"items\[1\].graph: graph: node 3 \(KSampler\): input 'cfg' is 1000.0"):
        service(free).submit(JobSubmit(workflow=FREE_GRAPH, items=[run.values, {"graph": bad}]))
    with pytest.raises(InvalidItems, match=r"items\[0\].graph: .*nothing else"):
        service(free).submit(JobSubmit(workflow=FREE_GRAPH, items=[{"graph": bad, "seed": 3}]))
