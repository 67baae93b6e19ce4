"""The TCR regulariser from the Triton kernels: forward (value and derivative matrix) and backward.

Plan (``mmae_fast.ops.plan.make_plan``, shared with the CUDA backend; n = min(m, d)):
``B_1 = alpha·Y + beta·I``, ``B_k = gamma·B_1·B_(k-1) - delta·B_(k-2)``, ``R = Σ w·<B_j, B_l>_F``,
derivative ``P = B_q·Σ outer_k B_k + Σ inner_k B_k`` (exact: ``R = -logdet B_1``, ``P = B_1⁻¹``)
and ``dR/dx = scale·x·P`` (or ``P·x``).

Launches, forward: [row stats] + Gram + (q - 1) recurrence steps + [P] + one sum (exact: Gram +
Cholesky, log-diagonal sum, Cholesky inverse through torch); backward: two.
"""
from __future__ import annotations

import torch

from .. import reference
from . import backward, config, gram, traces


def forward(h: torch.Tensor, centering: bool, plan, need_grad: bool):
    """``(value, P, r, zbar)``: R (0-d float32), the derivative matrix (n, n) float32 (empty
    (0, 0) unless ``need_grad``), inverse row norms (m,) and the centring mean (d,) or (0,)."""
    h = h.contiguous()
    m, d = h.shape
    n = min(m, d)
    feature = d <= m
    eps = reference.EPS
    cfg = config.choose(h.dtype, n)
    f32 = dict(device=h.device, dtype=torch.float32)
    inline = not feature and not centering
    if inline:
        r, zbar = torch.empty(m, **f32), torch.empty(0, **f32)
    else:
        r, zbar = gram.row_stats(h, centering, eps, cfg)
    alpha, beta, gamma, delta = plan.recurrence
    q = plan.nbasis
    if q == 0:  # exact: R = -logdet(B_1), P = B_1^-1 on the smaller side, cuSOLVER via torch
        b1 = gram.gram_basis(h, r, zbar, centering=centering, inline_norms=inline, eps=eps,
                             alpha=alpha, beta=beta, dots=None, cfg=cfg)
        chol = torch.linalg.cholesky_ex(b1)[0]
        value = -2.0 * chol.diagonal().log().sum()
        p = torch.cholesky_inverse(chol) if need_grad else torch.empty((0, 0), **f32)
        return value, p, r, zbar
    tw = traces.trace_weights(plan.pair_j, plan.pair_l, plan.pair_w, q, n)
    ntiles = (-(-n // cfg.block_n)) ** 2
    dots = torch.empty((q, ntiles), **f32)
    wv = (torch.empty((n, n), **f32), torch.empty((n, n), **f32)) if need_grad else None
    inner, outer = plan.inner, plan.outer
    b1 = gram.gram_basis(h, r, zbar, centering=centering, inline_norms=inline, eps=eps,
                         alpha=alpha, beta=beta, dots=dots[0], w_self=tw.w_self[1],
                         w_tr=tw.w_tr[1], wv=wv,
                         wv_coef=(outer[0], outer[1], inner[0], inner[1]), cfg=cfg)
    basis = {1: b1}  # the last three basis matrices; buffers of B_(k-3) are reused for B_k
    for k in range(2, q + 1):
        out = basis.pop(k - 3) if k - 3 in basis and k - 3 != 1 else torch.empty((n, n), **f32)
        traces.sym_gemm(b1, basis[k - 1], out, gamma=gamma, beta_eye=-delta if k == 2 else 0.0,
                        e=basis.get(k - 2), e_coef=-delta, dots=dots[k - 1], prev=basis[k - 1],
                        w_prev=tw.w_prev[k], w_self=tw.w_self[k], w_tr=tw.w_tr[k], wv=wv,
                        w_coef=outer[k], v_coef=inner[k], cfg=cfg)
        basis[k] = out
    value = dots.sum() + tw.const
    if not need_grad:
        return value, torch.empty((0, 0), **f32), r, zbar
    w, v = wv
    bq = basis[q]
    if not any(outer):
        return value, v, r, zbar
    p = traces.sym_gemm(bq, w, torch.empty((n, n), **f32), e=v, e_coef=1.0, cfg=cfg)
    return value, p, r, zbar


def backward_input(grad: torch.Tensor, h: torch.Tensor, p: torch.Tensor, r: torch.Tensor,
                   zbar: torch.Tensor, centering: bool, scale: float) -> torch.Tensor:
    """dR/dh (m, d) in h's dtype from the tensors ``forward`` returned."""
    h = h.contiguous()
    cfg = config.choose(h.dtype, min(h.shape))
    return backward.input_grad(grad, h, p, r, zbar, centering=centering, scale=scale,
                               eps=reference.EPS, cfg=cfg)
