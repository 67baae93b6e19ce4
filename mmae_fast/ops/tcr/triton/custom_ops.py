"""The Triton kernels as torch.library custom ops with fake (meta) kernels, no autograd.

Staged ops (issue 13; the lead's autograd Function calls ``gram`` in its forward and ``grad`` in
its backward; semantics in ``mmae_fast.ops.tcr.triton.gram_kernel`` / ``stage_grad``, n = d if feature
else m)::

    mmae_fast::triton_gram(h, feature, centering) -> G (n, n), rinv (m,), colsum (d,) or (0,)
        float32, contiguous
    mmae_fast::triton_grad(grad, h, rinv, q, v, feature, scale) -> dh (m, d) in h's dtype,
        contiguous; grad [s] or [s, t] (0-d, (1,) or (2,)), q (n, n) float32, v (d,) float32
        or (0,) meaning v = 0

Every input is checked on the host from shapes, dtypes and devices only (no sync), so both ops
capture in CUDA graphs and trace with ``torch.compile(fullgraph=True)`` as opaque calls.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .... import reference
from ..input_check import input_reason
from . import grad_kernel as stage_grad, gram_kernel as stage_gram
from .config import DTYPES, choose_grad, choose_stage, interpreting


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
    if (grad.dim() > 1 or grad.numel() not in (1, 2) or not grad.is_floating_point()
            or grad.device != h.device):
        raise ValueError(f"triton_grad: grad must be a floating tensor of one or two numbers "
                         f"([scale] or [scale, shift]) on {h.device}, got shape "
                         f"{tuple(grad.shape)} {grad.dtype} on {grad.device}")
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
    """``dh_i = rinv_i (gx_i − z_i⟨z_i, gx_i⟩)`` with ``gx = scale·s·(ZQ − 1vᵀ)`` (feature)
    or ``scale·s·(QZ − 1vᵀ)``, ``grad = [s]`` or ``[s, t]``; unprojected rows (``||h_i|| <=
    EPS``) lose ``scale·t·z_i``; (m, d) in h's dtype."""
    _check_grad_args(grad, h, rinv, q, v, feature)
    return stage_grad.grad(grad.to(torch.float32).reshape(-1), _rows(h), rinv, q.contiguous(), v,
                           feature,
                           float(scale), reference.EPS, choose_grad(h.dtype, *h.shape))


@triton_grad.register_fake
def _triton_grad_fake(grad, h, rinv, q, v, feature, scale):
    return torch.empty_like(h, memory_format=torch.contiguous_format)
