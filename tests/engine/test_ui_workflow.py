"""A UI-format workflow (as ComfyUI saves it from its normal menu) loads through the catalog and runs.

tests/graphs/ui_txt2img.json is the demo workflow with a reroute, a primitive feeding the seed, a bypassed
latent upscale, a muted preview, a note and a group added: converted, it is the same graph, so it takes the
same parameters and makes the same image as workflows/txt2img.json.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfybento.config import Settings
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.workflows.project import load_project
from tests.helpers import make_workflows_dir, png_array, service_env

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_engine")
    settings = Settings.from_env(service_env(make_workflows_dir(root / "workflows", extra=("ui_txt2img",)), root / "work"))
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=10)


def test_ui_format_workflow_is_typed_like_its_api_export(engine):
    ui, api = engine.catalog["ui_txt2img"], engine.catalog["txt2img"]
    assert ui.graph == api.graph
    assert [(p.name, p.kind, p.default) for p in ui.params] == [(p.name, p.kind, p.default) for p in api.params]
    assert [o.name for o in ui.outputs] == [o.name for o in api.outputs]
    assert ui.batch_plan is not None


def test_ui_format_workflow_runs_and_makes_the_api_exports_image(engine):
    values = {"prompt": "a red car", "width": 64, "height": 64, "steps": 3}
    ui = engine.run("ui_txt2img", [EngineItem(values=dict(values), seed=5)], timeout=120)[0]
    api = engine.run("txt2img", [EngineItem(values=dict(values), seed=5)], timeout=120)[0]
    assert ui.ok and api.ok
    image = png_array(ui.outputs[0].data)
    assert image.shape == (64, 64, 3) and image.std() > 5
    assert np.array_equal(image, png_array(api.outputs[0].data))
