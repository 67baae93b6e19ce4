"""The "cuda" backend: the TCR regulariser as two C++ ops of the extension ``mmae_fast._C``.

``torch.ops.mmae_fast.cuda_tcr_forward`` runs the whole forward and
``torch.ops.mmae_fast.cuda_tcr_backward`` the whole backward, each one call from Python
(csrc/bindings.cpp: torch-free kernels of csrc/*.cu between cuBLAS GEMMs and a cuSOLVER
Cholesky through ATen). This module hands the ops their *plan* and owns autograd.

The plan (``mmae_fast.ops.plan``) is shared with the triton backend; the C++ code executes it
and holds no formula of its own.
"""
from __future__ import annotations

import importlib

import torch

from .. import reference
from .common import input_reason
from .plan import make_plan

#: The reason reported when the extension cannot be imported.
NOT_BUILT = ("the CUDA extension mmae_fast._C was not built (install with a CUDA build of torch "
             "and nvcc: pip install --no-build-isolation .)")

#: Op schemas; csrc/bindings.cpp defines the same strings (a GPU test compares them).
FORWARD_SCHEMA = ("cuda_tcr_forward(Tensor h, bool centering, float eps, float[] recurrence, "
                  "int nbasis, int[] pair_j, int[] pair_l, float[] pair_w) "
                  "-> (Tensor, Tensor, Tensor, Tensor)")
BACKWARD_SCHEMA = ("cuda_tcr_backward(Tensor grad, Tensor h, Tensor x, Tensor norm, "
                   "Tensor saved, bool centering, float eps, float scale, float[] inner, "
                   "float[] outer) -> Tensor")

#: Input dtypes the kernels are compiled for.
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

try:  # importing the extension registers the torch.ops.mmae_fast.cuda_tcr_* ops
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


# ----------------------------------------------------------------------------- autograd
class _TCR(torch.autograd.Function):
    """Differentiable wrapper of the two ops (value only; no double backward)."""

    @staticmethod
    def forward(ctx, h, centering, plan):
        value, x, norm, saved = torch.ops.mmae_fast.cuda_tcr_forward(
            h, centering, reference.EPS, list(plan.recurrence), plan.nbasis, list(plan.pair_j),
            list(plan.pair_l), list(plan.pair_w))
        ctx.save_for_backward(h, x, norm, saved)
        ctx.centering, ctx.plan = centering, plan
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h, x, norm, saved = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        plan = ctx.plan
        dh = torch.ops.mmae_fast.cuda_tcr_backward(
            grad, h, x, norm, saved, ctx.centering, reference.EPS, plan.scale, list(plan.inner),
            list(plan.outer))
        return dh, None, None


def _acc(dtype: torch.dtype) -> torch.dtype:
    return reference.compute_dtype(dtype)


def register_fakes() -> None:
    """Shape functions of the ops for torch.compile / FakeTensor (once the ops exist)."""
    @torch.library.register_fake("mmae_fast::cuda_tcr_forward")
    def _forward_fake(h, centering, eps, recurrence, nbasis, pair_j, pair_l, pair_w):
        m, d = h.shape
        n = torch.sym_min(m, d)
        acc = _acc(h.dtype)
        if nbasis == 0:  # the Cholesky factor, with the strides linalg_cholesky_ex gives it
            saved = torch.linalg.cholesky_ex(h.new_empty((n, n), dtype=acc))[0]
        else:
            saved = h.new_empty((nbasis, n, n), dtype=acc)
        return (h.new_empty((), dtype=acc), h.new_empty((m, d), dtype=acc),
                h.new_empty((m,), dtype=acc), saved)

    @torch.library.register_fake("mmae_fast::cuda_tcr_backward")
    def _backward_fake(grad, h, x, norm, saved, centering, eps, scale, inner, outer):
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


def tcr(z: torch.Tensor, *, mu: float, centering: bool, estimator: str, degree: int) -> torch.Tensor:
    """``-logdet(I + mu/d·ZᵀZ)`` of the normalised (optionally centred) rows; 0-d float32
    (float64 for float64 input), differentiable. Matches ``mmae_fast.reference.tcr``."""
    m, d = z.shape
    plan = make_plan(int(m), int(d), mu=float(mu), estimator=estimator, degree=int(degree or 0))
    return _TCR.apply(z, bool(centering), plan)
