"""Presets: a sidecar's named field values, chosen per request or per job with `preset`; checked at startup."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfybento.config import Settings
from comfybento.errors import InvalidRequest, WorkflowError
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.openapi import fix_openapi
from comfybento.models.lock import parse_lock
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import WorkflowSpec, load_workflow
from comfybento.workflows.sidecar import load_sidecar

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")})
PRESETS = "presets:\n  fast: {steps: 4, cfg: 5.0}\n  quality: {steps: 30, cfg: 7.5, sampler_name: dpmpp_2m, width: 256}\n"


def _workflow(node_defs, tmp_path: Path, sidecar: str) -> WorkflowSpec:
    shutil.copy(ROOT / "workflows" / "txt2img.json", tmp_path / "txt2img.json")
    (tmp_path / "txt2img.yaml").write_text(sidecar)
    return load_workflow(tmp_path / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), SETTINGS)


def test_a_preset_fills_the_fields_and_explicit_fields_win(node_defs, tmp_path):
    model = _workflow(node_defs, tmp_path, PRESETS).input_model
    fast = model.model_validate({"prompt": "a kite", "preset": "fast"}).model_dump()
    assert (fast["steps"], fast["cfg"], fast["prompt"]) == (4, 5.0, "a kite")
    overridden = model.model_validate({"preset": "quality", "steps": 12}).model_dump()
    assert (overridden["steps"], overridden["cfg"], overridden["sampler_name"], overridden["width"]) == (12, 7.5, "dpmpp_2m", 256)
    plain = model.model_validate({}).model_dump()
    assert plain["steps"] == 20 and plain["preset"] is None  # the graph's own values without a preset


def test_an_unknown_preset_is_refused_naming_it_and_the_known_ones(node_defs, tmp_path):
    model = _workflow(node_defs, tmp_path, PRESETS).input_model
    with pytest.raises(ValidationError) as refused:
        model.model_validate({"preset": "turbo"})
    (error,) = refused.value.errors()
    assert error["loc"] == ("preset",) and error["msg"] == "unknown preset 'turbo'; this workflow has fast, quality"


def test_a_workflow_without_presets_has_no_preset_field(node_defs, tmp_path):
    model = _workflow(node_defs, tmp_path, "max_batch_size: 2\n").input_model
    assert "preset" not in model.model_fields
    with pytest.raises(ValidationError, match="preset"):
        model.model_validate({"preset": "fast"})


@pytest.mark.parametrize(("sidecar", "message"), [
    ("presets:\n  fast: {steps: 500}\n", r"presets.fast: steps: Input should be less than or equal to 150 \(got 500\)"),
    ("presets:\n  fast: {cfg: 'high'}\n", r"presets.fast: cfg: Input should be a valid number.*\(got 'high'\)"),
    ("presets:\n  fast: {sampler_name: nope}\n", r"presets.fast: sampler_name: Input should be"),
    ("presets:\n  fast: {stepz: 4}\n", r"presets.fast: \['stepz'\] are not fields of 'txt2img'"),
    ("presets:\n  big: {width: 384, height: 384, batch_size: 4}\n", r"presets.big is over a limit: .*max_request_pixels"),
    ("presets:\n  Fast: {steps: 4}\n", r"preset name 'Fast' must be lowercase"),
    ("presets:\n  fast: {}\n", r"presets.fast must be a non-empty mapping"),
    ("presets: [fast]\n", r"'presets' must be a mapping"),
])
def test_bad_presets_stop_the_startup_with_a_clear_message(node_defs, tmp_path, sidecar, message):
    with pytest.raises(WorkflowError, match=message):
        _workflow(node_defs, tmp_path, sidecar)


def test_a_parameter_named_preset_clashes_only_when_there_are_presets(node_defs, tmp_path):
    rename = "params:\n  - {node: '6', input: text, name: preset}\n"
    assert "preset" in _workflow(node_defs, tmp_path, rename).input_model.model_fields  # the workflow's own field
    with pytest.raises(WorkflowError, match="a parameter is named 'preset'"):
        _workflow(node_defs, tmp_path, rename + PRESETS)


def test_the_demo_workflow_ships_presets(node_defs):
    sidecar = load_sidecar(ROOT / "workflows" / "txt2img.yaml")
    assert set(sidecar.presets) == {"fast", "balanced", "quality"}
    spec = load_workflow(ROOT / "workflows" / "txt2img.json", node_defs, parse_lock(ROOT / "models.lock"), SETTINGS)
    assert spec.presets == sidecar.presets


def test_presets_are_an_enum_in_the_openapi_with_their_values_described(node_defs, tmp_path):
    spec = _workflow(node_defs, tmp_path, PRESETS)
    field = spec.input_model.model_json_schema()["properties"]["preset"]
    assert field["enum"] == ["fast", "quality"] and field["nullable"] is True
    assert field["x-presets"]["fast"] == {"steps": 4, "cfg": 5.0}  # the values themselves, for clients (the playground)
    assert "fast: steps=4, cfg=5.0; quality: steps=30, cfg=7.5, sampler_name='dpmpp_2m', width=256" in field["description"]
    doc = fix_openapi({"info": {}, "paths": {"/jobs": {"post": {"requestBody": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/JobSubmit"}}}}}}}, "components": {"schemas": {}}}, {"txt2img": spec})
    item = doc["components"]["schemas"]["Txt2imgJobItem"]["properties"]["preset"]
    assert doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Txt2imgJobSubmit"}
    job = doc["components"]["schemas"]["Txt2imgJobSubmit"]["properties"]["preset"]
    assert item["enum"] == job["enum"] == ["fast", "quality", None]  # nullable: null is one of its values (3.0.3)


@pytest.fixture
def jobs(node_defs, tmp_path) -> JobService:
    spec = _workflow(node_defs, tmp_path, PRESETS)
    return JobService({"txt2img": spec}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"), AllowList([]),
                      max_items=10, retention_s=60)


def test_a_job_preset_applies_to_every_item_and_items_override_it(jobs):
    req = JobSubmit(workflow="txt2img", preset="fast", items=[{"prompt": "a"}, {"prompt": "b", "steps": 9},
                                                               {"prompt": "c", "preset": "quality"}])
    job, _ = jobs.submit(req)
    params = [i.params for i in jobs.store.get_items(job.id, 0, 10)]
    assert [(p["steps"], p["cfg"]) for p in params] == [(4, 5.0), (9, 5.0), (30, 7.5)]
    assert all("preset" not in p for p in params)  # stored as the values the items run with


def test_a_job_with_an_unknown_preset_is_refused_before_anything_is_queued(jobs):
    with pytest.raises(InvalidRequest, match="preset: unknown preset 'turbo' of workflow 'txt2img'; its presets: fast, quality"):
        jobs.submit(JobSubmit(workflow="txt2img", preset="turbo", items=[{"prompt": "a"}]))
    assert jobs.store.list_jobs(10, 0) == []
