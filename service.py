"""BentoML façade: one typed endpoint per workflow in workflows/. No logic here.

    bentoml serve .          # or ./scripts/serve

Importing this module never imports torch or ComfyUI: only the engine
worker does, when its service starts (comfybento/engine/engine.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if (_HERE.parent / "bento.yaml").is_file():  # served from a built Bento: never write into it
    sys.pycache_prefix = str(Path.home() / ".cache" / "comfybento" / "pycache")
# `bentoml serve comfybento:<tag>` first tries the tag as an import path from the current folder: started in a
# project checkout, that imports the checkout's comfybento package. The Bento runs its own, beside this file.
_loaded = sys.modules.get("comfybento")
if _loaded is not None and Path(_loaded.__file__ or "").resolve().parent != _HERE / "comfybento":
    for _name in [m for m in sys.modules if m == "comfybento" or m.startswith("comfybento.")]:
        del sys.modules[_name]
    if str(_HERE) in sys.path:  # BentoML put this folder first while it imports this module
        sys.path.remove(str(_HERE))
    sys.path.insert(0, str(_HERE))

import bentoml  # noqa: E402

from comfybento import lifecycle, logs  # noqa: E402
from comfybento.config import IN_BENTO, get_settings  # noqa: E402
from comfybento.engine.service import make_engine_services  # noqa: E402
from comfybento.front.app import make_front_service  # noqa: E402
from comfybento.runtime.devices import engine_devices, engine_resources, pin_engines_ourselves  # noqa: E402
from comfybento.workflows.project import get_project  # noqa: E402

logs.configure(get_settings().log_trace)  # our lines at INFO, none printed twice, the trace suffix optional
_project = get_project()
if lifecycle.in_worker():
    lifecycle.install(_project.settings.drain_timeout_s)
    logs.uvicorn_at_info()  # "Waiting for connections to close" on stop
_devices = engine_devices(_project.settings)  # one engine per GPU (COMFYBENTO_GPUS), each pinned to its device
pin_engines_ourselves(_devices)
ComfyEngines = make_engine_services(_project, engine_resources(_project.settings), _devices)
ComfyBento = make_front_service(_project, ComfyEngines)


def bento_image() -> bentoml.images.Image:
    """The image `bentoml build` writes into the Bento (env/docker/Dockerfile), docs/deploying.md "The image": Python 3.11
    on Debian, every package from requirements-bento.lock (pinned and hash-checked, torch's CUDA 13.0 build: regenerate
    it with ./scripts/lock-bento for another), then the ComfyUI tree and the custom nodes once their files are copied."""
    # Steps are Image.run(), not run_script(): BentoML 1.4.39 loses run_script()'s file when it merges bentofile.yaml in.
    return (bentoml.images.Image(python_version="3.11", lock_python_packages=False)  # the lock is ours, not rebuilt
            .requirements_file(os.path.relpath(_HERE / "requirements-bento.lock"))  # BentoML takes relative paths
            # copied before the steps below run (`COPY . ./` brings the rest of the Bento after them); git is in
            # BentoML's Debian image already, for the custom nodes
            .build_include("comfybento", "custom_nodes", "requirements-comfyui.txt", "scripts/bento-setup.sh")
            .run("bash src/scripts/bento-setup.sh")  # the ComfyUI tree: --no-deps --require-hashes
            .run("cd src && python -m comfybento nodes install --dir custom_nodes"))


if not IN_BENTO:  # read by `bentoml build`; a built Bento carries its image in bento.yaml and env/docker/
    ComfyBento.image = bento_image()
