"""Versions of a workflow (workflows/<name>/<version>.json + versions.yaml), the alias that routes between them, jobs."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from comfybento.config import Settings
from comfybento.errors import InvalidRequest, WorkflowError
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.routing import as_version, check_output, routes_of
from comfybento.models.lock import parse_lock
from comfybento.outputs.storage import LocalStorage
from comfybento.workflows.catalog import load_catalog
from comfybento.workflows.project import Project
from comfybento.workflows.versions import Alias, Routing, load_aliases, parse_routing, resolve

ROOT = Path(__file__).resolve().parents[2]
LOCK = parse_lock(ROOT / "models.lock")


def _versions(folder: Path, versions_yaml: str | None = "default: v1\n", steps: dict[str, int] | None = None) -> Path:
    """folder/txt2img/<v>.json for each version (the demo graph, its steps changed), a flat img2img.json beside."""
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    (folder / "txt2img").mkdir(parents=True)
    for version, count in (steps or {"v1": 4, "v2": 6}).items():
        graph["3"]["inputs"]["steps"] = count
        (folder / "txt2img" / f"{version}.json").write_text(json.dumps(graph))
    if versions_yaml is not None:
        (folder / "txt2img" / "versions.yaml").write_text(versions_yaml)
    shutil.copy(ROOT / "workflows" / "txt2img.json", folder / "flat.json")
    return folder


def _settings(folder: Path) -> Settings:
    return Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models"), "COMFYBENTO_WORKFLOWS": str(folder)})


def _project(node_defs, folder: Path) -> Project:
    catalog = load_catalog(_settings(folder), node_defs, LOCK)
    return Project(settings=_settings(folder), lock=LOCK, catalog=catalog, aliases=load_aliases(folder, catalog))


def test_each_version_is_a_workflow_of_its_own_beside_the_flat_ones(node_defs, tmp_path):
    project = _project(node_defs, _versions(tmp_path))
    assert sorted(project.catalog) == ["flat", "txt2img_v1", "txt2img_v2"]
    v1, v2 = project.catalog["txt2img_v1"], project.catalog["txt2img_v2"]
    assert (v1.route, v1.version, v1.family) == ("txt2img/v1", "v1", "txt2img")
    assert project.catalog["flat"].route == "flat" and project.catalog["flat"].version is None
    assert v1.input_model.model_fields["steps"].default == 4 and v2.input_model.model_fields["steps"].default == 6
    alias = project.aliases["txt2img"]
    assert alias.schema is v1 and alias.routing == Routing(default="v1") and alias.pick() is v1
    paths = sorted(r.path for r in routes_of(project))
    assert paths == ["flat", "txt2img", "txt2img/v1", "txt2img/v2"]


def test_a_version_has_its_own_sidecar(node_defs, tmp_path):
    folder = _versions(tmp_path)
    (folder / "txt2img" / "v2.yaml").write_text("presets:\n  fast: {steps: 2}\n")
    catalog = load_catalog(_settings(folder), node_defs, LOCK)
    assert catalog["txt2img_v2"].presets == {"fast": {"steps": 2}} and catalog["txt2img_v1"].presets == {}


@pytest.mark.parametrize(("text", "message"), [
    ("default: v3\n", r"default: 'v3' is not a version of this workflow; its versions: \['v1', 'v2'\]"),
    ("default: v1\nweights: {v1: 50, v9: 50}\n", r"weights: 'v9' is not a version"),
    ("default: v1\nweights: {v1: -1, v2: 10}\n", r"weights.v1 must be a whole number, 0 or more \(got -1\)"),
    ("default: v1\nweights: {v1: 0, v2: 0}\n", r"weights are all 0"),
    ("default: v1\nweights: {v1: 0.5}\n", r"weights.v1 must be a whole number"),
    ("weights: {v1: 1}\n", r"expected a mapping with `default: <version>`"),
    ("default: v1\ncanary: v2\n", r"unknown keys \['canary'\]"),
    ("default: [v1\n", r"cannot be read as YAML"),
])
def test_a_bad_versions_file_fails_startup_naming_it(tmp_path, text, message):
    path = tmp_path / "versions.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowError, match=message) as failed:
        parse_routing(path, ["v1", "v2"])
    assert str(path) in str(failed.value)


def test_the_catalog_refuses_versions_without_a_versions_file_and_name_clashes(node_defs, tmp_path):
    folder = _versions(tmp_path / "a", versions_yaml=None)
    with pytest.raises(WorkflowError, match=r"no versions.yaml; add one naming the version /txt2img serves, e.g. `default: v1`"):
        load_catalog(_settings(folder), node_defs, LOCK)
    folder = _versions(tmp_path / "b")
    shutil.copy(ROOT / "workflows" / "txt2img.json", folder / "txt2img.json")  # /txt2img would be both
    with pytest.raises(WorkflowError, match=r"also served from .*txt2img\.json"):
        load_catalog(_settings(folder), node_defs, LOCK)
    folder = _versions(tmp_path / "c", steps={"stream": 4})
    (folder / "txt2img" / "versions.yaml").write_text("default: stream\n")
    with pytest.raises(WorkflowError, match=r"version\(s\) \['stream'\] would share a path with /txt2img/<route>"):
        _project(node_defs, folder)
    folder = _versions(tmp_path / "d", steps={"V1": 4})
    with pytest.raises(WorkflowError, match=r"'V1' cannot be a version name"):
        load_catalog(_settings(folder), node_defs, LOCK)


def test_weights_split_the_requests_between_versions(tmp_path):
    routing = Routing(default="v1", weights={"v1": 75, "v2": 25})
    rng = random.Random(7)
    counts = Counter(routing.pick(rng) for _ in range(4000))
    assert set(counts) == {"v1", "v2"} and 0.70 < counts["v1"] / 4000 < 0.80
    assert Counter(Routing(default="v2").pick(rng) for _ in range(50)) == {"v2": 50}  # no weights: the default
    (tmp_path / "versions.yaml").write_text("default: v1\nweights: {v1: 0, v2: 5}\n")
    assert parse_routing(tmp_path / "versions.yaml", ["v1", "v2"]).weights == {"v2": 5}  # a 0 is never picked


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_versions_file_is_read_again_once_it_changes_at_most_once_a_second(node_defs, tmp_path, caplog):
    project = _project(node_defs, _versions(tmp_path))
    path = tmp_path / "txt2img" / "versions.yaml"
    clock = Clock()
    alias = Alias("txt2img", path, {s.version: s for s in project.catalog.values() if s.version}, clock=clock)  # type: ignore[misc]
    first = alias.pick()
    _rewrite(path, "default: v2\n")
    clock.now += 0.5
    assert alias.pick() is first  # not looked at again within a second
    clock.now += 0.6
    assert alias.pick().version == "v2" and alias.schema.version == "v1"  # the schema stays the startup default's
    _rewrite(path, "default: v1\nweights: {v1: 0, v2: 0}\n")
    clock.now += 1.1
    with caplog.at_level(logging.ERROR, logger="comfybento.workflows.versions"):
        assert alias.pick().version == "v2"  # a bad file keeps the routing it had, and says why
    assert "weights are all 0" in caplog.text and str(path) in caplog.text
    _rewrite(path, "default: v2\nweights: {v1: 1}\n")
    clock.now += 1.1
    assert alias.pick().version == "v1"
    path.unlink()
    clock.now += 1.1
    assert alias.pick().version == "v1"  # gone: the last routing stays


def _rewrite(path: Path, text: str) -> None:
    """A new text with a new modification time (a later second than the last, whatever the file system's resolution)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_names_a_client_may_use_for_a_workflow(node_defs, tmp_path):
    project = _project(node_defs, _versions(tmp_path))
    catalog, aliases = project.catalog, project.aliases
    assert resolve(catalog, aliases, "txt2img") is catalog["txt2img_v1"]
    assert resolve(catalog, aliases, "txt2img/v2") is catalog["txt2img_v2"]
    assert resolve(catalog, aliases, "txt2img_v2") is catalog["txt2img_v2"]
    assert resolve(catalog, aliases, "flat") is catalog["flat"]
    assert resolve(catalog, aliases, "txt2img/v9") is None and resolve(catalog, aliases, "flat/v1") is None


def test_a_request_routed_to_another_version_gets_its_fields(node_defs, tmp_path):
    project = _project(node_defs, _versions(tmp_path))
    v1, v2 = project.catalog["txt2img_v1"], project.catalog["txt2img_v2"]
    def routed(**fields: object) -> dict[str, object]:
        sent = v1.input_model.model_validate(fields)
        return as_version(v2, {k: getattr(sent, k) for k in v1.input_model.model_fields}, v1)

    assert (routed(prompt="a kite")["prompt"], routed(prompt="a kite")["steps"]) == ("a kite", 6)  # v2's own default
    assert routed(steps=9)["steps"] == 9  # what the client chose
    with pytest.raises(InvalidRequest, match=r"routed to version 'v2' of 'txt2img'.*steps"):
        as_version(v2, {"steps": 10**6}, v1)


def test_a_job_records_its_version_and_may_name_the_alias_or_a_version(node_defs, tmp_path):
    project = _project(node_defs, _versions(tmp_path))
    store = SQLiteJobStore(tmp_path / "jobs.db")
    service = JobService(project.catalog, store, LocalStorage(tmp_path / "out"), AllowList([]), 100, 3600,
                         aliases=project.aliases)
    by_alias, _ = service.submit(JobSubmit(workflow="txt2img", items=[{"prompt": "a"}]))
    by_version, _ = service.submit(JobSubmit(workflow="txt2img/v2", items=[{"prompt": "b"}]))
    flat, _ = service.submit(JobSubmit(workflow="flat", items=[{"prompt": "c"}]))
    views = [service.status_of(job, store.get_items(job.id, 0, 10)) for job in (by_alias, by_version, flat)]
    assert [(v.workflow, v.version) for v in views] == [("txt2img_v1", "v1"), ("txt2img_v2", "v2"), ("flat", None)]
    assert store.get_items(by_version.id, 0, 1)[0].params["steps"] == 6  # v2's own default
    with pytest.raises(InvalidRequest, match=r"unknown workflow 'txt2img/v3'; known: .*'txt2img/v1', 'txt2img/v2'"):
        service.submit(JobSubmit(workflow="txt2img/v3", items=[{}]))


def test_an_alias_output_route_refuses_a_version_without_that_output(node_defs, tmp_path):
    folder = _versions(tmp_path)
    v2 = json.loads((folder / "txt2img" / "v2.json").read_text())
    saver = next(n for n in v2.values() if n["class_type"] == "SaveImage")
    saver["_meta"] = {"title": "poster"}
    (folder / "txt2img" / "v2.json").write_text(json.dumps(v2))
    project = _project(node_defs, folder)
    v1, v2_spec = project.catalog["txt2img_v1"], project.catalog["txt2img_v2"]
    name = v1.outputs[0].name
    check_output(v1, name)  # the default version has it
    assert [o.name for o in v2_spec.outputs] == ["poster"]
    with pytest.raises(InvalidRequest, match=rf"version 'v2' of 'txt2img', which has no output '{name}' \(its outputs: poster\)"):
        check_output(v2_spec, name)
