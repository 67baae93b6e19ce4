"""The Triton TCR kernels as torch.library custom ops, with fake (meta) kernels and autograd.

    mmae_fast::triton_tcr_forward(h, centering, mu, estimator, degree, need_grad)
        -> (value (), P (n, n) or (0, 0), r (m,), zbar (d,) or (0,))        all float32
    mmae_fast::triton_tcr_backward(grad, h, P, r, zbar, centering, mu, estimator, degree)
        -> dh (m, d) in h's dtype

Both ops compute their plan (``mmae_fast.ops.plan.make_plan``) from the real shapes inside,
so the only arguments are tensors and plain scalars; ``torch.compile(fullgraph=True)`` sees two
opaque ops (no graph break) and autograd is registered on the forward op. ``need_grad`` is decided by
the caller (``tcr``) from grad mode and ``requires_grad``: without it the forward skips the
derivative matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..triton import tcr as kernels
from ..triton.config import DTYPES, interpreting
from .common import input_reason
from .plan import make_plan


def _plan(h: Tensor, mu: float, estimator: str, degree: int):
    """The plan of ``h`` (m, d); ValueError naming the fix for an input the kernels cannot take."""
    reason = input_reason(h, "triton", DTYPES, cpu_ok=interpreting(),
                          cpu_hint=" (or a CPU tensor with TRITON_INTERPRET=1)")
    if reason is not None:
        raise ValueError(reason)
    m, d = h.shape
    return make_plan(int(m), int(d), mu=float(mu), estimator=estimator, degree=int(degree))


@torch.library.custom_op("mmae_fast::triton_tcr_forward", mutates_args=())
def tcr_forward(h: Tensor, centering: bool, mu: float, estimator: str, degree: int,
                need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """R and what its backward needs; see the module docstring."""
    return kernels.forward(h, centering, _plan(h, mu, estimator, degree), need_grad)


@tcr_forward.register_fake
def _tcr_forward_fake(h, centering, mu, estimator, degree, need_grad):
    if h.dim() != 2:
        raise ValueError(f"the triton backend needs an (m, d) matrix, got shape {tuple(h.shape)}")
    m, d = h.shape
    n = torch.sym_min(m, d)
    f32 = torch.float32
    return (h.new_empty((), dtype=f32), h.new_empty((n, n) if need_grad else (0, 0), dtype=f32),
            h.new_empty((m,), dtype=f32), h.new_empty((d,) if centering else (0,), dtype=f32))


@torch.library.custom_op("mmae_fast::triton_tcr_backward", mutates_args=())
def tcr_backward(grad: Tensor, h: Tensor, p: Tensor, r: Tensor, zbar: Tensor, centering: bool,
                 mu: float, estimator: str, degree: int) -> Tensor:
    """dR/dh times ``grad`` (0-d), in h's dtype."""
    if p.numel() == 0:
        raise RuntimeError("triton_tcr_forward ran with need_grad=False; call it with "
                           "need_grad=True to differentiate")
    scale = _plan(h, mu, estimator, degree).scale
    return kernels.backward_input(grad, h, p, r, zbar, centering, scale)


@tcr_backward.register_fake
def _tcr_backward_fake(grad, h, p, r, zbar, centering, mu, estimator, degree):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    h, centering, mu, estimator, degree, _ = inputs
    _, p, r, zbar = output
    ctx.save_for_backward(h, p, r, zbar)
    ctx.args = (centering, mu, estimator, degree)


def _backward(ctx, grad_value, grad_p, grad_r, grad_zbar):
    h, p, r, zbar = ctx.saved_tensors
    dh = None
    if ctx.needs_input_grad[0]:
        dh = torch.ops.mmae_fast.triton_tcr_backward(grad_value, h, p, r, zbar, *ctx.args)
    return dh, None, None, None, None, None


tcr_forward.register_autograd(_backward, setup_context=_setup_context)


def tcr(z: Tensor, *, mu: float, centering: bool, estimator: str, degree: int) -> Tensor:
    """Differentiable ``-logdet(I + mu/d·ZᵀZ)`` (0-d float32) through the custom ops."""
    need_grad = torch.is_grad_enabled() and z.requires_grad
    return torch.ops.mmae_fast.triton_tcr_forward(z, centering, float(mu), estimator,
                                                  int(degree or 0), need_grad)[0]
