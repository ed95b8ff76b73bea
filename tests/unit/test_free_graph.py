"""Unmatched submitted graphs (COMFYBENTO_SUBMITTED_GRAPHS=any): checked against the node registry and models.lock."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from comfybento.config import Settings
from comfybento.errors import ConfigError
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import InvalidItems, JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.models.lock import parse_lock
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import WorkflowSpec, load_workflow
from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs, GraphRefused
from comfybento.workflows.graph import InputDef, NodeDef
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


# ------------------------------------------------------------ the sandbox (workflows/sandbox.py)

DATASET_NODES = {
    "SaveImageDataSetToFolder": {"images": ["8", 0], "folder_name": "dataset", "filename_prefix": "image"},
    "SaveImageTextDataSetToFolder": {"images": ["8", 0], "texts": "a caption", "folder_name": "dataset", "filename_prefix": "image"},
    "SaveTrainingDataset": {"latents": ["3", 0], "conditioning": ["6", 0], "folder_name": "training", "shard_size": 10},
    "LoadImageDataSetFromFolder": {"folder": "dataset"},
    "LoadImageTextDataSetFromFolder": {"folder": "dataset"},
    "LoadTrainingDataset": {"folder_name": "training"},
    "CheckpointSave": {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "filename_prefix": "checkpoints/ComfyUI"},
}


def _s(name: str, required: bool = True, default: str | None = None) -> InputDef:
    return InputDef(name=name, type="STRING", required=required, options={} if default is None else {"default": default})


@pytest.fixture
def sandbox_defs(node_defs: dict[str, NodeDef]) -> dict[str, NodeDef]:
    """The unit node definitions, with ComfyUI 0.3.75's dataset and model-saving nodes and a few others."""
    link = lambda name, typ: InputDef(name=name, type=typ, required=True)  # noqa: E731
    extra = [
        NodeDef("SaveImageDataSetToFolder", {"images": link("images", "IMAGE"), "folder_name": _s("folder_name"),
                                             "filename_prefix": _s("filename_prefix")}, output_node=True),
        NodeDef("SaveImageTextDataSetToFolder", {"images": link("images", "IMAGE"), "texts": _s("texts"),
                                                 "folder_name": _s("folder_name"), "filename_prefix": _s("filename_prefix")},
                output_node=True),
        NodeDef("SaveTrainingDataset", {"latents": link("latents", "LATENT"), "conditioning": link("conditioning", "CONDITIONING"),
                                        "folder_name": _s("folder_name"), "shard_size": InputDef("shard_size", "INT", True)},
                output_node=True),
        NodeDef("LoadImageDataSetFromFolder", {"folder": InputDef("folder", "COMBO", True)}, return_types=("IMAGE",)),
        NodeDef("LoadImageTextDataSetFromFolder", {"folder": InputDef("folder", "COMBO", True)}, return_types=("IMAGE", "STRING")),
        NodeDef("LoadTrainingDataset", {"folder_name": _s("folder_name")}, return_types=("LATENT", "CONDITIONING")),
        NodeDef("CheckpointSave", {"model": link("model", "MODEL"), "clip": link("clip", "CLIP"), "vae": link("vae", "VAE"),
                                   "filename_prefix": _s("filename_prefix")}, output_node=True),
        NodeDef("SaveAnimatedWEBP", {"images": link("images", "IMAGE"), "filename_prefix": _s("filename_prefix", False, "ComfyUI")},
                output_node=True),
        NodeDef("RegexReplace", {"string": _s("string"), "regex_pattern": _s("regex_pattern"), "replace": _s("replace")},
                return_types=("STRING",)),
        NodeDef("StringConcatenate", {"string_a": _s("string_a"), "string_b": _s("string_b")}, return_types=("STRING",)),
    ]
    return {**node_defs, **{d.class_type: d for d in extra}}


def _free(defs: dict[str, NodeDef], graph_nodes: str = "") -> FreeGraphs:
    env = {"COMFYBENTO_SUBMITTED_GRAPHS": "any", "COMFYBENTO_GRAPH_NODES": graph_nodes}
    return FreeGraphs(Settings.from_env(env), defs, parse_lock(ROOT / "models.lock"))


def _with(spec: WorkflowSpec, class_type: str, inputs: dict[str, Any]) -> dict[str, Any]:
    graph = _unmatched(spec)
    graph["300"] = {"class_type": class_type, "inputs": inputs}
    if class_type.startswith("Load"):  # its outputs used, so that it is part of the graph
        graph["301"] = {"class_type": "PreviewAny", "inputs": {"source": ["300", 0]}}
    return graph


def test_the_operators_node_types_are_read_once():
    assert Settings.from_env({}).graph_nodes == ()
    assert Settings.from_env({"COMFYBENTO_GRAPH_NODES": " RegexReplace, SaveTrainingDataset ,"}).graph_nodes == (
        "RegexReplace", "SaveTrainingDataset")


@pytest.mark.parametrize("class_type", sorted(DATASET_NODES))
def test_nodes_that_read_or_write_datasets_or_models_are_refused_unless_named(spec, sandbox_defs, class_type):
    sandbox_defs["PreviewAny"] = NodeDef("PreviewAny", {"source": InputDef("source", "*", True)}, output_node=True)
    graph = _with(spec, class_type, dict(DATASET_NODES[class_type]))
    for setting in ("", "*", "RegexReplace"):
        with pytest.raises(GraphRefused, match=rf"node 300 \({class_type}\) (writes|reads) .* on the server's disk; an unmatched "
                                               rf"graph may use it only if COMFYBENTO_GRAPH_NODES names {class_type}") as err:
            _free(sandbox_defs, setting).spec({"graph": graph})
        assert err.value.error_code == 422
    assert _free(sandbox_defs, f"RegexReplace,{class_type}").spec({"graph": graph}).name == FREE_GRAPH


def test_node_types_outside_the_default_set_are_refused_unless_added(spec, sandbox_defs):
    graph = _with(spec, "RegexReplace", {"string": "a", "regex_pattern": "(a+)+$", "replace": "b"})
    graph["6"]["inputs"]["text"] = ["300", 0]
    with pytest.raises(GraphRefused, match=r"node 300 \(RegexReplace\): node type RegexReplace is not allowed in a graph "
                                           r"that matches no served workflow \(COMFYBENTO_GRAPH_NODES adds node types"):
        _free(sandbox_defs).spec({"graph": graph})
    assert _free(sandbox_defs, "RegexReplace").spec({"graph": graph}).name == FREE_GRAPH
    assert _free(sandbox_defs, "*").spec({"graph": graph}).name == FREE_GRAPH


@pytest.mark.parametrize(
    ("class_type", "change", "message"),
    [
        ("SaveImageDataSetToFolder", {"folder_name": "/tmp/outside"}, "input 'folder_name' is '/tmp/outside', an absolute path"),
        ("SaveImageDataSetToFolder", {"folder_name": "../../outside"}, "input 'folder_name' is '../../outside': '..' may not leave"),
        ("SaveImageDataSetToFolder", {"folder_name": "ok/../../up"}, "input 'folder_name' is 'ok/../../up': '..' may not leave"),
        ("SaveImageDataSetToFolder", {"filename_prefix": "../x"}, "input 'filename_prefix' is '../x': '..' may not"),
        ("SaveImageDataSetToFolder", {"filename_prefix": "sub/x"}, "input 'filename_prefix' is 'sub/x': a name inside the node's folder"),
        ("SaveImageTextDataSetToFolder", {"folder_name": "C:/x"}, "input 'folder_name' is 'C:/x', an absolute path"),
        ("SaveTrainingDataset", {"folder_name": "~root"}, "input 'folder_name' is '~root': a path is a relative name"),
        ("SaveTrainingDataset", {"folder_name": "a\\b"}, "input 'folder_name' is 'a\\\\b': a path is a relative"),
        ("LoadImageDataSetFromFolder", {"folder": "/etc"}, "input 'folder' is '/etc', an absolute path"),
        ("LoadImageTextDataSetFromFolder", {"folder": "../input"}, "input 'folder' is '../input': '..' may not"),
        ("LoadTrainingDataset", {"folder_name": "/var/lib"}, "input 'folder_name' is '/var/lib', an absolute path"),
        ("LoadTrainingDataset", {"folder_name": ["6", 0]}, "input 'folder_name' takes a link; a path must be a literal name"),
        ("CheckpointSave", {"filename_prefix": "/models/checkpoints/x"}, "input 'filename_prefix' is '/models/checkpoints/x', an abs"),
        ("SaveAnimatedWEBP", {"filename_prefix": "../../x"}, "input 'filename_prefix' is '../../x': '..' may not"),
        ("SaveAnimatedWEBP", {"filename_prefix": 7}, "input 'filename_prefix' is 7, not a string"),
    ],
)
def test_a_path_input_stays_inside_the_requests_folder(spec, sandbox_defs, class_type, change, message):
    sandbox_defs["PreviewAny"] = NodeDef("PreviewAny", {"source": InputDef("source", "*", True)}, output_node=True)
    inputs = {**DATASET_NODES.get(class_type, {"images": ["8", 0]}), **change}
    graph = _with(spec, class_type, inputs)
    with pytest.raises(GraphRefused, match=rf"node 300 \({class_type}\) " + re.escape(message)):
        _free(sandbox_defs, ",".join(DATASET_NODES)).spec({"graph": graph})


def test_path_inputs_are_moved_into_the_requests_own_folder(spec, sandbox_defs):
    from comfybento.workflows.free_graph import scratch_folder

    graph = _with(spec, "SaveImageDataSetToFolder", {"images": ["8", 0], "folder_name": "ds", "filename_prefix": "img"})
    graph["301"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0], "filename_prefix": "anim/x"}}
    graph["302"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0]}}  # its default prefix
    free = _free(sandbox_defs, "SaveImageDataSetToFolder")
    checked = free.spec({"graph": graph})
    assert checked.graph["300"]["inputs"]["folder_name"] == "ds"  # what a job stores: the graph as sent
    runs = [free.runnable({"graph": graph}) for _ in range(2)]
    folder = scratch_folder(runs[0])
    assert re.fullmatch(r"_graph-[0-9a-f]{32}", folder) and folder != scratch_folder(runs[1])  # one folder per run
    inputs = {n: runs[0].graph[n]["inputs"] for n in ("300", "301", "302")}
    assert inputs["300"]["folder_name"] == f"{folder}/ds" and inputs["300"]["filename_prefix"] == "img"  # a name inside it
    assert inputs["301"]["filename_prefix"] == f"{folder}/anim/x" and inputs["302"]["filename_prefix"] == f"{folder}/ComfyUI"
    assert runs[0].graph["9"]["inputs"]["filename_prefix"] == f"{folder}/ComfyUI"  # SaveImage too (collected, never written)
