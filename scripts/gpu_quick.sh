#!/usr/bin/env bash
# A short GPU window (a few minutes): build, the focused regulariser sweep, the per-stage table,
# the staged-op GPU tests — each step bounded, results under $OUT (or bench/results).
# Use `make gpu-check` when a full window (~8 min) is available.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
R=$OUT/results; mkdir -p "$R"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
arch=$($PY -c "import torch;print('%d.%d'%torch.cuda.get_device_capability())")
t0=$(date +%s)
TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=16 timeout 110 $PY -m pip install -q --no-build-isolation \
  --no-deps -e . > "$OUT/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t0 )) s"
$PY -c "import mmae_fast; print('backends', mmae_fast.available_backends())"
timeout ${BENCH_S:-70} $PY bench/entropy.py --device cuda --dtype bf16 --mode fwd+bwd \
  --estimator exact series --providers official cholesky cuda triton \
  --shapes 1024x1024@3 4096x768@3 16384x768@1 65536x1024@1 --timing eager,graph \
  --reps 15 --warmup 3 --time-limit $(( ${BENCH_S:-70} - 15 )) --out "$R" --no-progress \
  > "$OUT/entropy.log" 2>&1; echo "entropy rc=$?"; tail -n 25 "$OUT/entropy.log"
timeout ${STAGES_S:-40} $PY -m bench.stages --reps 10 --out "$R" 2>&1 | tee "$OUT/stages.log"
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")  # Triton JIT compiles: use the cores
timeout ${TESTS_S:-60} $PY -m pytest -q -p no:cacheprovider --maxfail=10 $XDIST \
  tests/ops/test_staged_backends.py tests/ops/test_staged.py -k "cuda or graph_replay or reduce" \
  > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -n 30 "$OUT/tests.log"
