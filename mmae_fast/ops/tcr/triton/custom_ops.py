"""The Triton kernels as torch.library custom ops with fake (meta) kernels, no autograd.

    mmae_fast::triton_gram(h, feature) -> (G, rinv)
    mmae_fast::triton_grad(coef, h, rinv, q, v, feature, scale) -> dh

Stages 1 and 3 of the staged op (``mmae_fast/ops/tcr/op.py`` calls ``gram`` in its forward and
``grad`` in its backward); what they compute: ``mmae_fast/ops/tcr/stages.py``. Specific here:
outputs float32 (dh in h's dtype), contiguous; h float32 / float16 / bfloat16 with any row
stride (a non-unit column stride is copied); ``coef`` any floating dtype (used in float32),
``rinv``, ``q`` and a non-empty ``v`` float32. Every input is checked on the host from shapes,
dtypes and devices only (no sync), so both ops capture in CUDA graphs and trace with
``torch.compile(fullgraph=True)`` as opaque calls.
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


def _check_grad_args(coef, h, rinv, q, v, feature) -> None:
    _check_h(h)
    m, d = h.shape
    n = d if feature else m
    if (coef.dim() > 1 or coef.numel() not in (1, 2) or not coef.is_floating_point()
            or coef.device != h.device):
        raise ValueError(f"triton_grad: coef must be a floating tensor of one or two numbers "
                         f"([s] or [s, t]: Q's scale and radial shift) on {h.device}, got shape "
                         f"{tuple(coef.shape)} {coef.dtype} on {coef.device}")
    _check_float32("rinv", rinv, [(m,)], h, " (gram's rinv)")
    _check_float32("q", q, [(n, n)], h, f" (n = {'d' if feature else 'm'} for feature={feature})")
    _check_float32("v", v, [(d,), (0,)], h, " ((0,) means v = 0)")


@torch.library.custom_op("mmae_fast::triton_gram", mutates_args=())
def triton_gram(h: Tensor, feature: bool) -> tuple[Tensor, Tensor]:
    """Stage 1: ``(G, rinv)`` of h (m, d), float32 (``gram_kernel``)."""
    _check_h(h)
    n = h.shape[1] if feature else h.shape[0]
    return stage_gram.gram(_rows(h), feature, reference.EPS, choose_stage(h.dtype, n))


@triton_gram.register_fake
def _triton_gram_fake(h, feature):
    if h.dim() != 2:
        raise ValueError(f"the triton backend needs an (m, d) matrix, got shape {tuple(h.shape)}")
    m, d = h.shape
    n = d if feature else m
    f32 = torch.float32
    return h.new_empty((n, n), dtype=f32), h.new_empty((m,), dtype=f32)


@torch.library.custom_op("mmae_fast::triton_grad", mutates_args=())
def triton_grad(coef: Tensor, h: Tensor, rinv: Tensor, q: Tensor, v: Tensor, feature: bool,
                scale: float) -> Tensor:
    """Stage 3: dh (m, d) in h's dtype (``grad_kernel``)."""
    _check_grad_args(coef, h, rinv, q, v, feature)
    return stage_grad.grad(coef.to(torch.float32).reshape(-1), _rows(h), rinv, q.contiguous(), v,
                           feature, float(scale), reference.EPS,
                           choose_grad(h.dtype, *h.shape))


@triton_grad.register_fake
def _triton_grad_fake(coef, h, rinv, q, v, feature, scale):
    return torch.empty_like(h, memory_format=torch.contiguous_format)
