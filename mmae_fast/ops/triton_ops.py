"""The Triton kernels as torch.library custom ops with fake (meta) kernels, no autograd.

Staged ops (issue 13; the lead's autograd Function calls ``gram`` in its forward and ``grad`` in
its backward; semantics in ``mmae_fast.triton.stage_gram`` / ``stage_grad``, n = d if feature
else m)::

    mmae_fast::triton_gram(h, feature, centering) -> G (n, n), rinv (m,), colsum (d,) or (0,)
        float32, contiguous
    mmae_fast::triton_grad(grad, h, rinv, q, v, feature, scale) -> dh (m, d) in h's dtype,
        contiguous; grad 0-d, q (n, n) float32, v (d,) float32 or (0,) meaning v = 0

Every input is checked on the host from shapes, dtypes and devices only (no sync), so both ops
capture in CUDA graphs and trace with ``torch.compile(fullgraph=True)`` as opaque calls.

Below them, the monolithic ops of the old path (``triton_tcr_forward`` / ``_backward``), kept
working until the staged layer replaces them:

    mmae_fast::triton_tcr_forward(h, centering, mu, estimator, degree, need_grad)
        -> (value (), P (n, n) or (0, 0), r (m,), zbar (d,) or (0,))        all float32
    mmae_fast::triton_tcr_backward(grad, h, P, r, zbar, centering, mu, estimator, degree)
        -> dh (m, d) in h's dtype

Both old ops compute their plan (``mmae_fast.ops.plan.make_plan``) from the real shapes inside,
so the only arguments are tensors and plain scalars; autograd is registered on the forward op.
``need_grad`` is decided by the caller (``tcr``) from grad mode and ``requires_grad``: without it
the forward skips the derivative matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..triton import stage_grad, stage_gram
from ..triton import tcr as kernels
from ..triton.config import DTYPES, choose_grad, choose_stage, interpreting
from .common import input_reason
from .plan import make_plan


def _check_h(h: Tensor) -> None:
    """ValueError naming the fix for an ``h`` the kernels cannot take."""
    reason = input_reason(h, "triton", DTYPES, cpu_ok=interpreting(),
                          cpu_hint=" (or a CPU tensor with TRITON_INTERPRET=1)")
    if reason is not None:
        raise ValueError(reason)


def _rows(h: Tensor) -> Tensor:
    """h with unit column stride (the kernels index rows by ``stride(0)``)."""
    return h if h.stride(1) == 1 else h.contiguous()


def _check_float32(name: str, t: Tensor, shape: tuple, h: Tensor, hint: str) -> None:
    if t.dtype != torch.float32 or t.device != h.device or tuple(t.shape) not in shape:
        want = " or ".join(str(s) for s in shape)
        raise ValueError(f"triton_grad: {name} must be a float32 tensor of shape {want} on "
                         f"{h.device}, got {t.dtype} {tuple(t.shape)} on {t.device}{hint}")


def _check_grad_args(grad, h, rinv, q, v, feature) -> None:
    _check_h(h)
    m, d = h.shape
    n = d if feature else m
    if grad.dim() != 0 or not grad.is_floating_point() or grad.device != h.device:
        raise ValueError(f"triton_grad: grad must be a 0-d floating tensor on {h.device}, got "
                         f"shape {tuple(grad.shape)} {grad.dtype} on {grad.device}")
    _check_float32("rinv", rinv, [(m,)], h, " (gram's rinv)")
    _check_float32("q", q, [(n, n)], h, f" (n = {'d' if feature else 'm'} for feature={feature})")
    _check_float32("v", v, [(d,), (0,)], h, " ((0,) means v = 0)")


@torch.library.custom_op("mmae_fast::triton_gram", mutates_args=())
def triton_gram(h: Tensor, feature: bool, centering: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, rinv, colsum)`` of h (m, d): ``G = ZᵀZ`` (d, d) if feature else ``ZZᵀ`` (m, m),
    uncentred; ``rinv_i = 1/max(||h_i||, EPS)``; ``colsum = Σ_i z_i`` if centering else (0,)."""
    _check_h(h)
    n = h.shape[1] if feature else h.shape[0]
    return stage_gram.gram(_rows(h), feature, centering, reference.EPS,
                           choose_stage(h.dtype, n))


@triton_gram.register_fake
def _triton_gram_fake(h, feature, centering):
    if h.dim() != 2:
        raise ValueError(f"the triton backend needs an (m, d) matrix, got shape {tuple(h.shape)}")
    m, d = h.shape
    n = d if feature else m
    f32 = torch.float32
    return (h.new_empty((n, n), dtype=f32), h.new_empty((m,), dtype=f32),
            h.new_empty((d,) if centering else (0,), dtype=f32))


@torch.library.custom_op("mmae_fast::triton_grad", mutates_args=())
def triton_grad(grad: Tensor, h: Tensor, rinv: Tensor, q: Tensor, v: Tensor, feature: bool,
                scale: float) -> Tensor:
    """``dh_i = rinv_i (gx_i − z_i⟨z_i, gx_i⟩)`` with ``gx = scale·grad·(ZQ − 1vᵀ)`` (feature)
    or ``scale·grad·(QZ − 1vᵀ)``; (m, d) in h's dtype."""
    _check_grad_args(grad, h, rinv, q, v, feature)
    return stage_grad.grad(grad.to(torch.float32), _rows(h), rinv, q.contiguous(), v, feature,
                           float(scale), reference.EPS, choose_grad(h.dtype, *h.shape))


@triton_grad.register_fake
def _triton_grad_fake(grad, h, rinv, q, v, feature, scale):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------- the old monolithic path
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
