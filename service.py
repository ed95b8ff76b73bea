"""BentoML façade: one typed endpoint per workflow in workflows/. No logic here.

    bentoml serve .          # or ./scripts/serve

Importing this module never imports torch or ComfyUI: only the engine
worker does, when its service starts (comfybento/engine/engine.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if (Path(__file__).resolve().parent.parent / "bento.yaml").is_file():  # served from a built Bento: never write into it
    sys.pycache_prefix = str(Path.home() / ".cache" / "comfybento" / "pycache")

from comfybento import lifecycle, logs
from comfybento.config import get_settings
from comfybento.engine.service import make_engine_service
from comfybento.front.app import make_front_service
from comfybento.runtime.devices import engine_resources
from comfybento.workflows.project import get_project

logs.configure(get_settings().log_trace)  # our lines at INFO, none printed twice, the trace suffix optional
_project = get_project()
if lifecycle.in_worker():
    lifecycle.install(_project.settings.drain_timeout_s)
    logs.uvicorn_at_info()  # "Waiting for connections to close" on stop
ComfyEngine = make_engine_service(_project, engine_resources(_project.settings))
ComfyBento = make_front_service(_project, ComfyEngine)
