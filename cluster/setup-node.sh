#!/usr/bin/env bash
# Install Tide on a cluster node (run by the `ray up` YAMLs' setup_commands, inside the node's Ray container).
# GPU nodes (nvidia-smi answers) get tide-serve[gpu] (CUDA vLLM); all others the CPU build, as `make` does.
# Idempotent: `ray up` runs this on every launch, and a node whose Python already holds this Tide (same version,
# same source, its dependencies as pyproject.toml asks: cluster/node_check.py) installs nothing.
# The install is editable, so the synced folder is the code the node runs.
# TIDE_SRC: the synced project folder (default ~/tide). TIDE_SETUP_DRY_RUN=1 prints the commands instead.
# TIDE_REINSTALL=1 installs even when nothing changed.
set -euo pipefail
SRC="${TIDE_SRC:-$HOME/tide}"
run() { if [ "${TIDE_SETUP_DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ENGINE=gpu; else ENGINE=cpu; fi
if [ "${TIDE_REINSTALL:-0}" != 1 ] && python "$SRC/cluster/node_check.py" "$SRC" "$ENGINE"; then
  exit 0
fi
if [ "$ENGINE" = gpu ]; then
  run python -m pip install -q -e "${SRC}[gpu]"
else
  run python -m pip install -q --extra-index-url https://download.pytorch.org/whl/cpu -e "${SRC}[cpu]"
  # pip pulls CUDA builds of these beside the CPU torch; they break `import transformers` (see README).
  run python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
fi
