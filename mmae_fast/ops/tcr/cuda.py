"""The "cuda" backend: stages 1 and 3 of the staged TCR regulariser as C++ ops of ``mmae_fast._C``.

``torch.ops.mmae_fast.cuda_gram(h, feature) -> (G, rinv)`` and
``torch.ops.mmae_fast.cuda_grad(coef, h, rinv, q, v, feature, scale) -> dh`` (csrc/bindings.cpp:
torch-free kernels of csrc/*.cu around cuBLAS GEMMs); what they compute, ``coef = [s, t]``
included: ``mmae_fast/ops/tcr/stages.py``. No autograd here: the staged layer calls ``gram`` in
its forward and ``grad`` in its backward. Specific here: acc = float64 for float64 h, else
float32; G, rinv, q and a non-empty v are acc, G contiguous and exactly symmetric, dh in h's
dtype and contiguous.

Precision. Gram: half h multiplies z rounded to float16 (bfloat16 h too) on tensor cores (fp32
accumulation); float32 / float64 h multiply z in acc (cuBLAS fp32 / fp64; fp32 follows
``torch.backends.cuda.matmul.allow_tf32``). Grad, half h: feature side ``h @ [qhi | qlo]`` (h is
exact in its dtype, z q = diag(rinv) h q; q = qhi + qlo, hi = round(q), lo = round(q − hi)),
sample side ``[qhi | qhi | qlo] @ [zhi; zlo; zhi]`` (the split3 product, z from h·rinv in fp32):
one tensor-core GEMM each. The projection uses z in acc recomputed from h and rinv. The caller
scales q so that max|q| ≈ 1 (no fp16 underflow of qlo) and passes the factor in ``coef``.
float32 / float64 h: one product in acc.

Chunking. The feature side's product runs in row chunks of at most 32 MiB of acc
(``MMAE_FAST_CUDA_GRAD_CHUNK_ROWS`` overrides the row count, for tests), not the (m, 2d) float32
of the whole batch.
"""
from __future__ import annotations

import importlib

import torch

from .input_check import input_reason

#: The reason reported when the extension cannot be imported.
NOT_BUILT = ("the CUDA extension mmae_fast._C was not built (install with a CUDA build of torch "
             "and nvcc: pip install --no-build-isolation .)")

#: Op schemas; csrc/bindings.cpp defines the same strings (a GPU test compares them).
GRAM_SCHEMA = "cuda_gram(Tensor h, bool feature) -> (Tensor, Tensor)"
GRAD_SCHEMA = ("cuda_grad(Tensor coef, Tensor h, Tensor rinv, Tensor q, Tensor v, bool feature, "
               "float scale) -> Tensor")

#: Input dtypes the kernels are compiled for.
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

try:  # importing the extension registers the torch.ops.mmae_fast.cuda_* ops
    _C = importlib.import_module("mmae_fast._C")
    _IMPORT_REASON = None
except ModuleNotFoundError as exc:
    _C = None
    _IMPORT_REASON = NOT_BUILT if exc.name == "mmae_fast._C" else (
        f"the CUDA extension mmae_fast._C could not be loaded ({exc}); rebuild it with "
        f"pip install --no-build-isolation .")
except ImportError as exc:  # built against another torch, missing libraries, ...
    _C = None
    _IMPORT_REASON = (f"the CUDA extension mmae_fast._C could not be loaded ({exc}); rebuild it "
                      f"against the installed torch with pip install --no-build-isolation .")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of an input dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def register_fakes() -> None:
    """Shape functions of the ops for torch.compile / FakeTensor (once the ops exist)."""
    @torch.library.register_fake("mmae_fast::cuda_gram")
    def _gram_fake(h, feature):
        m, d = h.shape
        acc = acc_dtype(h.dtype)
        n = d if feature else m
        return h.new_empty((n, n), dtype=acc), h.new_empty((m,), dtype=acc)

    @torch.library.register_fake("mmae_fast::cuda_grad")
    def _grad_fake(coef, h, rinv, q, v, feature, scale):
        return h.new_empty(h.shape)


if _C is not None:
    register_fakes()


# ----------------------------------------------------------------------------- backend contract
def availability() -> str | None:
    """None when the extension is built and a CUDA device is visible, else the reason."""
    if _IMPORT_REASON is not None:
        return _IMPORT_REASON
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return None


def supports(z: torch.Tensor) -> str | None:
    """CUDA tensors of shape (m, d) in float32/float64/float16/bfloat16."""
    return input_reason(z, "cuda", DTYPES)


def _check(h: torch.Tensor, fn: str) -> None:
    reason = availability() or supports(h)
    if reason is not None:
        raise ValueError(f"cuda_backend.{fn}: {reason}")


def gram(h: torch.Tensor, feature: bool):
    """Stage 1: ``(G, rinv)`` of h (m, d) in acc."""
    _check(h, "gram")
    return torch.ops.mmae_fast.cuda_gram(h, bool(feature))


def grad(coef: torch.Tensor, h: torch.Tensor, rinv: torch.Tensor, q: torch.Tensor,
         v: torch.Tensor, feature: bool, scale: float) -> torch.Tensor:
    """Stage 3: dh (m, d) in h.dtype, ``coef = [s, t]`` or ``[s]``."""
    _check(h, "grad")
    return torch.ops.mmae_fast.cuda_grad(coef, h, rinv, q, v, bool(feature), float(scale))

