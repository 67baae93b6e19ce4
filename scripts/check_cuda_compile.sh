#!/usr/bin/env bash
# Compile check of the torch-free CUDA kernels (no GPU, no torch needed):
#   1. nvcc -c every csrc/*.cu for sm_80 and sm_90a, warnings as errors;
#   2. link the sm_80 objects with a stub that takes the address of every launcher declared in
#      csrc/mmae_kernels.h, so a declaration that no .cu file defines fails here.
#   3. with --bindings: a syntax-only g++ check of csrc/bindings.cpp against the installed torch's
#      headers (a CPU wheel ships the c10/cuda headers but not the generated
#      c10/cuda/impl/cuda_cmake_macros.h, which a temporary stub replaces). Slow: ~45 s, ~1 GB.
# One line per step; exits non-zero on any failure. NVCC=/path/to/nvcc picks the compiler.
set -u
bindings=0
[ "${1:-}" = "--bindings" ] && bindings=1
cd "$(dirname "$0")/.."
NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_compile: FAIL: nvcc not found (set NVCC=/path/to/nvcc)"
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ms() { echo $(( $(date +%s%N) / 1000000 )); }
status=0
for src in csrc/*.cu; do
  for arch in sm_80 sm_90a; do
    obj="$tmp/$(basename "$src" .cu).$arch.o"
    start=$(ms)
    if "$NVCC" -c "$src" -o "$obj" -std=c++17 -O3 -Icsrc -arch="$arch" \
        -Xcompiler -Wall,-fPIC -Werror all-warnings >"$tmp/log" 2>&1; then
      printf 'check_cuda_compile: ok   %-22s %-7s %5d ms\n' "$src" "$arch" $(( $(ms) - start ))
    else
      echo "check_cuda_compile: FAIL $src $arch"
      sed 's/^/    /' "$tmp/log"
      status=1
    fi
  done
done
[ $status -eq 0 ] || exit $status

# Link check: every launcher in the header must be defined with the declared signature.
cat >"$tmp/stub.cpp" <<'CPP'
#include "mmae_kernels.h"
namespace k = mmae_fast::kernels;
int main() {
  const void* fns[] = {
      reinterpret_cast<const void*>(&k::row_normalize),
      reinterpret_cast<const void*>(&k::symmetrize),
      reinterpret_cast<const void*>(&k::split_hi_lo),
      reinterpret_cast<const void*>(&k::grad_epilogue),
  };
  int n = 0;
  for (const void* f : fns) n += f != nullptr;
  return n == sizeof(fns) / sizeof(fns[0]) ? 0 : 1;
}
CPP
start=$(ms)
if "$NVCC" -std=c++17 -Icsrc "$tmp/stub.cpp" "$tmp"/*.sm_80.o -o "$tmp/stub" >"$tmp/log" 2>&1; then
  printf 'check_cuda_compile: ok   %-30s %5d ms\n' "link (launchers declared = defined)" $(( $(ms) - start ))
else
  echo "check_cuda_compile: FAIL link of the launchers declared in csrc/mmae_kernels.h"
  sed 's/^/    /' "$tmp/log"
  exit 1
fi

[ $bindings -eq 1 ] || exit 0
# Syntax check of the binding file (no CUDA torch needed; nothing is linked).
mkdir -p "$tmp/shim/c10/cuda/impl"
echo '#pragma once' >"$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
if ! torch_inc=$("${PYTHON:-python3}" -c "from torch.utils.cpp_extension import include_paths; print(' '.join(include_paths()))" 2>"$tmp/log"); then
  echo "check_cuda_compile: FAIL bindings: torch is not importable by ${PYTHON:-python3} (run make install first)"; sed 's/^/    /' "$tmp/log"; exit 1
fi
py_inc=$("${PYTHON:-python3}" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
cuda_inc=""
for dir in "${CUDA_HOME:-/nonexistent}/include" \
    "$(dirname "$(dirname "$(readlink -f "$(command -v "$NVCC")")")")/include" \
    /usr/local/cuda/include /usr/local/cuda-*/include; do
  if [ -f "$dir/cuda_runtime_api.h" ]; then cuda_inc="$dir"; break; fi
done
if [ -z "$cuda_inc" ]; then
  echo "check_cuda_compile: FAIL bindings: no cuda_runtime_api.h found (set CUDA_HOME)"; exit 1
fi
isys=""
for dir in $torch_inc "$py_inc" "$cuda_inc"; do isys="$isys -isystem $dir"; done
start=$(ms)
# shellcheck disable=SC2086
if g++ -fsyntax-only -std=c++20 -Wall -Wextra -Werror -DTORCH_EXTENSION_NAME=_C \
    -DTORCH_API_INCLUDE_EXTENSION_H -isystem "$tmp/shim" $isys -Icsrc csrc/bindings.cpp \
    >"$tmp/log" 2>&1; then
  printf 'check_cuda_compile: ok   %-30s %5d ms\n' "csrc/bindings.cpp (syntax only)" $(( $(ms) - start ))
else
  echo "check_cuda_compile: FAIL csrc/bindings.cpp (syntax only)"
  grep -v '^In file included' "$tmp/log" | head -40 | sed 's/^/    /'
  exit 1
fi
