"""Choosing the checkpoint per request, on the real ComfyUI with two different tiny checkpoints."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest

from comfybento.config import Settings
from comfybento.engine.collect import Collector
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.models.first_use import FirstUseCheck
from comfybento.models.lock import ModelEntry, sha256_file
from comfybento.runtime.bootstrap import bootstrap
from comfybento.runtime.generators import model_generators
from comfybento.scheduling.events import Started
from comfybento.workflows.project import load_project
from tests.helpers import png_array, service_env
from tests.model_choice import CORRUPT, DEFAULT, make_models, make_workflows

pytestmark = pytest.mark.engine

WORKFLOW = "choose_model"
ALT, ALT2 = "tiny-sd-alt.safetensors", "tiny-sd-alt2.safetensors"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_choice")
    models, lock = make_models(root)
    size = (models / "checkpoints" / DEFAULT).stat().st_size
    env = {
        **service_env(make_workflows(root), root / "work"),
        "COMFYBENTO_MODELS": str(models),
        "COMFYBENTO_MODELS_LOCK": str(lock),
        "COMFYBENTO_MODEL_CACHE_BYTES": str(size * 5 // 2),
    }  # the default + one more
    settings = Settings.from_env(env)
    bootstrap(settings)
    import folder_paths  # ComfyUI's folders are set by the first bootstrap of the process, maybe another test module's

    folder_paths.add_model_folder_path("checkpoints", str(models / "checkpoints"), is_default=True)
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=10)


def _item(checkpoint: str | None, seed: int = 7, prompt: str = "a lighthouse") -> EngineItem:
    values = {"prompt": prompt, "width": 64, "height": 64, "steps": 3}
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    return EngineItem(values=values, seed=seed)


def _image(engine, checkpoint: str | None, **kw):
    result = engine.run(WORKFLOW, [_item(checkpoint, **kw)], timeout=600)[0]
    assert result.ok, result.error
    return png_array(result.outputs[0].data)


def _cached() -> list[str]:
    from comfybento.runtime.nodes import checkpoint_cache

    return checkpoint_cache().keys()


def test_the_request_chooses_the_checkpoint_verified_on_its_first_use(engine):
    stamp = engine.settings.models_dir / "checkpoints" / f"{ALT}.sha256.json"  # written when the file is hashed
    assert not stamp.exists() and ALT not in _cached()
    default, explicit, alternate = _image(engine, None), _image(engine, DEFAULT), _image(engine, ALT)
    assert stamp.exists() and ALT in _cached()
    assert np.array_equal(default, explicit)
    assert np.abs(default - alternate).mean() > 5  # other weights, other picture
    assert np.array_equal(alternate, _image(engine, ALT))  # and the same one again from the cache


def test_least_recently_used_checkpoint_leaves_and_the_default_stays(engine):
    import comfy.model_management as mm

    from comfybento.runtime.nodes import checkpoint_cache

    first = _image(engine, ALT)
    alt_model = checkpoint_cache().peek(ALT)[0]
    assert ALT in _cached()
    _image(engine, ALT2)  # the budget holds the default and one more: ALT leaves
    assert DEFAULT in _cached() and ALT2 in _cached() and ALT not in _cached()
    assert checkpoint_cache().is_pinned(DEFAULT)
    assert not any(m.model is not None and m.model.is_clone(alt_model) for m in mm.current_loaded_models)
    assert np.array_equal(first, _image(engine, ALT))  # loaded again on demand, same weights
    assert ALT2 not in _cached()


@contextmanager
def executor_busy(engine):
    blocker = Collector()
    engine.submit(WORKFLOW, EngineItem(values={"prompt": "blocker", "width": 64, "height": 64, "steps": 30}, seed=1), blocker)
    deadline = time.monotonic() + 300
    while not any(isinstance(e, Started) for e in blocker.events):
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.005)
    yield
    assert blocker.wait(600).ok


def test_requests_for_different_checkpoints_never_share_a_batch(engine):
    _image(engine, ALT)  # loaded, so its prompts are bucketed by its own tokenizer
    items = [_item(DEFAULT, seed=1), _item(ALT, seed=2), _item(DEFAULT, seed=3), _item(ALT, seed=4)]
    with executor_busy(engine):
        together = engine.run(WORKFLOW, items, timeout=600)
    assert all(r.ok for r in together), [r.error for r in together]
    assert [r.batch_size for r in together] == [2, 2, 2, 2]
    for item, result in zip(items, together, strict=True):  # each batch ran its own checkpoint
        alone = engine.run(WORKFLOW, [item], timeout=600)[0]
        assert np.abs(png_array(result.outputs[0].data) - png_array(alone.outputs[0].data)).max() <= 2


def test_a_corrupt_checkpoint_fails_its_requests_by_name_and_the_engine_goes_on(engine):
    for _ in range(2):  # the second fails at once, from what the first found
        result = engine.run(WORKFLOW, [_item(CORRUPT)], timeout=600)[0]
        assert not result.ok and result.status == 500 and result.error_kind == "workflow"
        assert f"checkpoints/{CORRUPT}" in result.error and "sha256" in result.error
    assert CORRUPT not in _cached()
    assert _image(engine, DEFAULT).std() > 5 and _image(engine, ALT).std() > 5


def test_an_unknown_checkpoint_is_refused_naming_the_field(engine):
    result = engine.run(WORKFLOW, [_item("rogue.safetensors")], timeout=600)[0]  # on disk, not in models.lock
    assert not result.ok and result.status == 422 and "checkpoint" in result.error


def test_with_fetching_on_a_missing_model_is_fetched_then_checked_before_its_first_use(engine, tmp_path):
    good = engine.settings.models_dir / "checkpoints" / ALT
    entry = ModelEntry(path=f"checkpoints/{ALT}", size=good.stat().st_size, sha256=sha256_file(good), source={"generator": "tiny-sd-alt"})
    FirstUseCheck(tmp_path, fetch=True, generators=model_generators()).ensure(entry)
    assert sha256_file(entry.local_path(tmp_path)) == entry.sha256
    wrong = ModelEntry(path="checkpoints/other.safetensors", size=entry.size, sha256=entry.sha256, source={"generator": "tiny-sd"})
    with pytest.raises(Exception, match=r"checkpoints/other\.safetensors: fetched file has sha256"):
        FirstUseCheck(tmp_path, fetch=True, generators=model_generators()).ensure(wrong)
