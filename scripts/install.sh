#!/usr/bin/env bash
# Install mmae_fast (editable) with the extras given as $1 (default: triton,train,bench,track,test).
# Keeps an installed torch; without one, installs torch ($TORCH_SPEC) -- the CPU build 2.13.0
# where no NVIDIA driver answers. Every other package is constrained to the installed torch, so
# nothing (timm's torchvision, say) swaps torch for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-triton,train,bench,track,test}

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "${TORCH_SPEC:-torch>=2.6}"
  else
    "$PY" -m pip install "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >"$constraints"
# build tools first: the package builds without isolation so it sees the installed torch
"$PY" -m pip install -q -c "$constraints" setuptools wheel pybind11 ninja
"$PY" -m pip install -q -c "$constraints" --no-build-isolation -e ".[$EXTRAS]"
"$PY" -c "import mmae_fast, torch; from mmae_fast.ops.tcr import cpu_native; print('mmae_fast', mmae_fast.__version__, 'on torch', torch.__version__, '| backends:', mmae_fast.available_backends(), '| cpu native stages:', cpu_native.REASON or 'built')"
