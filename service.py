"""BentoML façade: one typed endpoint per workflow in workflows/. No logic here.

    bentoml serve .          # or ./scripts/serve
"""

from __future__ import annotations

import logging

from comfybento.runtime.devices import engine_resources
from comfybento.serving.project import get_project
from comfybento.serving.services import make_engine_service, make_front_service

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

_project = get_project()
ComfyEngine = make_engine_service(_project, engine_resources(_project.settings))
ComfyBento = make_front_service(_project, ComfyEngine)
