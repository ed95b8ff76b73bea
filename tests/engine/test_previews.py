"""Preview images (COMFYBENTO_PREVIEWS=latent2rgb) from the real ComfyUI sampler, through the engine's progress hook."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from comfybento.config import Settings
from comfybento.engine.collect import Collector
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.errors import ConfigError
from comfybento.scheduling.events import Done, Preview, Progress
from comfybento.workflows.project import load_project
from tests.helpers import make_workflows_dir, service_env

pytestmark = pytest.mark.engine


def _events(engine: Engine, steps: int) -> list[object]:
    collector = Collector()
    engine.submit("txt2img", EngineItem(values={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": steps}, seed=3),
                  collector)
    assert collector.wait(120).ok
    return list(collector.events)


def test_previews_come_as_jpegs_between_steps_only_when_enabled(tmp_path):
    env = service_env(make_workflows_dir(tmp_path / "workflows"), tmp_path / "work")
    on = Settings.from_env({**env, "COMFYBENTO_PREVIEWS": "latent2rgb"})
    engine = Engine(on, load_project(on).catalog)
    engine.start()
    try:
        events = _events(engine, steps=3)
        previews = [e for e in events if isinstance(e, Preview)]
        assert previews and previews[-1].media_type == "image/jpeg"
        image = Image.open(io.BytesIO(previews[-1].data))
        assert image.format == "JPEG" and image.size == (8, 8)  # latent2rgb: one pixel per latent cell (64 / 8)
        first_preview = events.index(previews[0])
        assert isinstance(events[first_preview - 1], Progress) and isinstance(events[-1], Done)
    finally:
        engine.stop(drain_s=10)
    with pytest.raises(ConfigError, match="COMFYBENTO_PREVIEWS"):
        Settings.from_env({**env, "COMFYBENTO_PREVIEWS": "taesd"})
