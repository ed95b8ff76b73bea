"""Choosing models per request: a sidecar-exposed loader input is an enum of models.lock entries, checked once before use."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfybento.config import Settings
from comfybento.errors import ModelLockError, WorkflowError, describe
from comfybento.models.first_use import FirstUseCheck
from comfybento.models.lock import ModelEntry, ModelLock, sha256_file
from comfybento.workflows.binding import shape_key
from comfybento.workflows.catalog import load_workflow
from comfybento.workflows.graph import InputDef, NodeDef

ROOT = Path(__file__).resolve().parents[2]
SHA = "0" * 64


def _entry(path: str) -> ModelEntry:
    return ModelEntry(path=path, size=1, sha256=SHA, source={"generator": "tiny-sd"})


LOCK = ModelLock(
    entries=(
        _entry("checkpoints/tiny-sd.safetensors"),
        _entry("checkpoints/tiny-sd-alt.safetensors"),
        _entry("loras/detail.safetensors"),
        _entry("loras/style/ink.safetensors"),
    )
)


@pytest.fixture
def defs(node_defs) -> dict[str, NodeDef]:
    return loader_defs(node_defs)


def loader_defs(node_defs: dict[str, NodeDef]) -> dict[str, NodeDef]:
    """The unit node definitions, where ComfyUI lists files in checkpoints/ and loras/ that models.lock does not have."""
    on_disk = ("rogue.safetensors", "tiny-sd-alt.safetensors", "tiny-sd.safetensors")
    defs = dict(node_defs)
    defs["CheckpointLoaderSimple"] = NodeDef(
        "CheckpointLoaderSimple",
        {"ckpt_name": InputDef("ckpt_name", "COMBO", True, choices=on_disk)},
        return_types=("MODEL", "CLIP", "VAE"),
    )
    lora_inputs = [
        InputDef("model", "MODEL", True),
        InputDef("clip", "CLIP", True),
        InputDef("lora_name", "COMBO", True, choices=("detail.safetensors", "not-locked.safetensors")),
        InputDef("strength_model", "FLOAT", True, {"min": -100.0, "max": 100.0}),
        InputDef("strength_clip", "FLOAT", True, {"min": -100.0, "max": 100.0}),
    ]
    defs["LoraLoader"] = NodeDef("LoraLoader", {i.name: i for i in lora_inputs}, return_types=("MODEL", "CLIP"))
    return defs


def _workflow(tmp_path: Path, sidecar: str, lora: bool = False) -> Path:
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    if lora:  # checkpoint -> LoRA -> sampler and text encoders
        graph["10"] = {
            "class_type": "LoraLoader",
            "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "detail.safetensors", "strength_model": 1.0, "strength_clip": 1.0},
        }
        graph["3"]["inputs"]["model"] = ["10", 0]
        graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["10", 1]
    path = tmp_path / "choose.json"
    path.write_text(json.dumps(graph))
    path.with_suffix(".yaml").write_text(sidecar)
    return path


def test_an_exposed_checkpoint_is_an_enum_of_the_lock_entries_only(defs, tmp_path):
    path = _workflow(tmp_path, "params:\n  - {node: '4', input: ckpt_name, name: checkpoint}\n")
    spec = load_workflow(path, defs, LOCK, Settings.from_env({}))
    param = next(p for p in spec.params if p.name == "checkpoint")
    assert param.kind == "enum" and param.choices == ("tiny-sd-alt.safetensors", "tiny-sd.safetensors")  # no rogue file
    assert param.default == "tiny-sd.safetensors"  # the graph's own value
    schema = spec.input_model.model_json_schema()["properties"]["checkpoint"]
    assert schema["enum"] == ["tiny-sd-alt.safetensors", "tiny-sd.safetensors"] and schema["default"] == "tiny-sd.safetensors"
    [choice] = spec.model_choices
    assert choice.param == "checkpoint" and choice.folder == "checkpoints"
    assert choice.entry("tiny-sd-alt.safetensors") == LOCK.entries[1] and choice.entry("rogue.safetensors") is None
    assert spec.models == (LOCK.entries[0],)  # only the default is checked (and pinned) at startup


def test_a_model_outside_the_lock_is_refused_naming_the_field(defs, tmp_path):
    spec = load_workflow(
        _workflow(tmp_path, "params:\n  - {node: '4', input: ckpt_name, name: checkpoint}\n"), defs, LOCK, Settings.from_env({})
    )
    with pytest.raises(ValidationError) as info:
        spec.input_model.model_validate({"checkpoint": "rogue.safetensors"})
    assert [e["loc"] for e in info.value.errors()] == [("checkpoint",)]
    assert spec.input_model.model_validate({"checkpoint": "tiny-sd-alt.safetensors"}).checkpoint == "tiny-sd-alt.safetensors"


def test_a_lora_is_an_enum_of_its_folder_and_a_sidecar_default_outside_it_falls_back_to_the_graph(defs, tmp_path):
    sidecar = "params:\n  - {node: '10', input: lora_name, name: lora, default: not-locked.safetensors}\n"
    spec = load_workflow(_workflow(tmp_path, sidecar, lora=True), defs, LOCK, Settings.from_env({}))
    lora = next(p for p in spec.params if p.name == "lora")
    assert lora.choices == ("detail.safetensors", "style/ink.safetensors") and lora.default == "detail.safetensors"
    assert "models.lock" in lora.description
    with pytest.raises(ValidationError, match="lora"):
        spec.input_model.model_validate({"lora": "not-locked.safetensors"})


def test_a_graph_default_that_is_not_in_the_lock_is_a_workflow_error(defs, tmp_path):
    path = _workflow(tmp_path, "params:\n  - {node: '4', input: ckpt_name, name: checkpoint}\n")
    graph = json.loads(path.read_text())
    graph["4"]["inputs"]["ckpt_name"] = "rogue.safetensors"
    path.write_text(json.dumps(graph))
    with pytest.raises(WorkflowError, match=r"rogue\.safetensors' is not in models\.lock"):
        load_workflow(path, defs, LOCK, Settings.from_env({}))


def test_requests_for_different_models_never_share_a_batch_key(defs, tmp_path):
    spec = load_workflow(
        _workflow(tmp_path, "params:\n  - {node: '4', input: ckpt_name, name: checkpoint}\n"), defs, LOCK, Settings.from_env({})
    )

    def key(**values: object) -> str:
        assert spec.batch_plan is not None  # still batched: per model
        return shape_key(spec.params, values, spec.batch_plan.batchable_params)

    assert "checkpoint" not in spec.batch_plan.batchable_params
    assert key(prompt="a", seed=1) == key(prompt="b", seed=2, checkpoint="tiny-sd.safetensors")  # same model: may share
    assert key(prompt="a", checkpoint="tiny-sd-alt.safetensors") != key(prompt="a", checkpoint="tiny-sd.safetensors")


# ------------------------------------------------------------------ checked once, before the first use


class CountingCheck(FirstUseCheck):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.checks = 0

    def _check(self, entry: ModelEntry):  # type: ignore[no-untyped-def]
        self.checks += 1
        return super()._check(entry)


def _model_file(models: Path, name: str, data: bytes) -> ModelEntry:
    path = models / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return ModelEntry(path=f"checkpoints/{name}", size=len(data), sha256=sha256_file(path), source={"generator": "tiny-sd"})


def test_a_good_file_is_hashed_once_even_by_concurrent_requests(tmp_path):
    entry = _model_file(tmp_path, "good.safetensors", b"weights" * 1000)
    check = CountingCheck(tmp_path, fetch=False)
    threads = [threading.Thread(target=check.ensure, args=(entry,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check.ensure(entry)
    assert check.checks == 1


def test_a_corrupt_file_fails_naming_it_is_not_checked_again_until_it_changes(tmp_path):
    entry = _model_file(tmp_path, "alt.safetensors", b"weights" * 1000)
    path = entry.local_path(tmp_path)
    path.write_bytes(b"X" + path.read_bytes()[1:])  # same size, one byte off
    check = CountingCheck(tmp_path, fetch=False)
    for _ in range(3):
        with pytest.raises(ModelLockError, match=r"model file checkpoints/alt.safetensors: sha256 .* does not match models.lock") as info:
            check.ensure(entry)
    assert check.checks == 1  # remembered: later requests fail at once
    assert describe(info.value)["status"] == 500 and describe(info.value)["error_kind"] == "workflow"  # not retried by jobs
    path.write_bytes(b"weights" * 1000)  # the operator puts the right file back
    check.ensure(entry)
    assert check.checks == 2


def test_a_missing_file_is_named(tmp_path):
    entry = ModelEntry(path="checkpoints/gone.safetensors", size=3, sha256=SHA, source={"generator": "tiny-sd"})
    with pytest.raises(ModelLockError, match=r"model file checkpoints/gone\.safetensors: missing"):
        FirstUseCheck(tmp_path, fetch=False).ensure(entry)


def test_a_comfy_pack_input_feeding_a_checkpoint_loader_is_held_to_the_lock_too(defs, tmp_path):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["20"] = {"class_type": "CPackInputAny", "inputs": {"input": "tiny-sd.safetensors"}, "_meta": {"title": "checkpoint"}}
    graph["4"]["inputs"]["ckpt_name"] = ["20", 0]
    path = tmp_path / "cpack_ckpt.json"
    path.write_text(json.dumps(graph))
    spec = load_workflow(path, defs, LOCK, Settings.from_env({}))
    param = next(p for p in spec.params if p.node_id == "20")
    assert param.choices == ("tiny-sd-alt.safetensors", "tiny-sd.safetensors") and param.default == "tiny-sd.safetensors"
    assert [c.param for c in spec.model_choices] == [param.name]
    with pytest.raises(ValidationError, match=param.name):
        spec.input_model.model_validate({param.name: "rogue.safetensors"})
