"""Row norms, column means and the normalised Gram on the smaller side, first basis matrix out.

For raw features h (m, d), ``r_i = 1/max(||h_i||, eps)``, ``z_i = r_i h_i``, ``zbar = mean_i z_i``
and ``x = z`` or ``x = z - zbar`` (centring), with n = min(m, d):

    Y = xᵀx (n = d <= m, "feature" side)   or   Y = x xᵀ (n = m < d, "sample" side)
    B_1 = alpha·Y + beta·I                                               (n, n) float32

plus, in the same epilogue, the trace-identity partials ``w_self·<B_1, B_1>_F + w_tr·tr B_1``
and the initial derivative accumulators ``W = w0·I + w1·B_1``, ``V = v0·I + v1·B_1``
(see ``mmae_fast.triton.traces``). Only tiles on and above the diagonal are computed; each is
stored with its mirror. On the sample side without centring the row norms come from the same
pass (the tiles already stream every row), otherwise one ``row_stats`` launch precedes it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import Config
from .tiles import dot_operand, sym_store, tile_sum, triangle_pid, x_tile


@triton.jit
def _row_stats_kernel(h_ptr, r_ptr, part_ptr, m, d, stride_h, eps, inv_m,
                      CENTER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """r[rows] = 1/max(||h_row||, eps); CENTER: part[pid, :] = Σ_rows r·h_row / m."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < m
    ss = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, d, BLOCK_D):
        cols = k0 + tl.arange(0, BLOCK_D)
        x = x_tile(h_ptr, r_ptr, r_ptr, rows, cols, m, d, stride_h, False, False).to(tl.float32)
        ss += tl.sum(x * x, axis=1)
    r = 1.0 / tl.maximum(tl.sqrt(ss), eps)
    tl.store(r_ptr + rows, r, mask=rmask)
    if CENTER:
        wrow = tl.where(rmask, r * inv_m, 0.0)
        for k0 in range(0, d, BLOCK_D):
            cols = k0 + tl.arange(0, BLOCK_D)
            x = x_tile(h_ptr, r_ptr, r_ptr, rows, cols, m, d, stride_h, False, False)
            colsum = tl.sum(x.to(tl.float32) * wrow[:, None], axis=0)
            tl.store(part_ptr + pid * d + cols, colsum, mask=cols < d)


@triton.jit
def _gram_kernel(h_ptr, r_ptr, zbar_ptr, b1_ptr, w_ptr, v_ptr, part_ptr,
                 m, d, n, stride_h, eps, alpha, beta, w_self, w_tr, w0, w1, v0, v1,
                 FEATURE: tl.constexpr, INLINE_NORMS: tl.constexpr, CENTER: tl.constexpr,
                 DOTS: tl.constexpr, INIT_WV: tl.constexpr, HALF_DOT: tl.constexpr,
                 PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    pa, pb = triangle_pid(pid, n, BLOCK_N)
    if pa > pb:  # below the diagonal: the mirror of tile (pb, pa)
        if DOTS:
            tl.store(part_ptr + pid, 0.0)
        return
    offs_a = pa * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = pb * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_N), tl.float32)
    if FEATURE:  # Y[a, b] = Σ_i x[i, a] x[i, b]
        for k0 in range(0, m, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xa = x_tile(h_ptr, r_ptr, zbar_ptr, ks, offs_a, m, d, stride_h, True, CENTER)
            xb = x_tile(h_ptr, r_ptr, zbar_ptr, ks, offs_b, m, d, stride_h, True, CENTER)
            acc = tl.dot(tl.trans(dot_operand(xa, h_ptr, HALF_DOT)),
                         dot_operand(xb, h_ptr, HALF_DOT), acc, input_precision=PREC)
    else:  # Y[i, j] = Σ_k x[i, k] x[j, k]
        ss_a = tl.zeros((BLOCK_N,), tl.float32)
        ss_b = tl.zeros((BLOCK_N,), tl.float32)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xa = x_tile(h_ptr, r_ptr, zbar_ptr, offs_a, ks, m, d, stride_h,
                        not INLINE_NORMS, CENTER)
            xb = x_tile(h_ptr, r_ptr, zbar_ptr, offs_b, ks, m, d, stride_h,
                        not INLINE_NORMS, CENTER)
            if INLINE_NORMS:
                fa = xa.to(tl.float32)
                fb = xb.to(tl.float32)
                ss_a += tl.sum(fa * fa, axis=1)
                ss_b += tl.sum(fb * fb, axis=1)
            acc = tl.dot(dot_operand(xa, h_ptr, HALF_DOT),
                         tl.trans(dot_operand(xb, h_ptr, HALF_DOT)), acc, input_precision=PREC)
        if INLINE_NORMS:  # normalisation as an epilogue: Y = D (h hᵀ) D, D = diag(r)
            ra = 1.0 / tl.maximum(tl.sqrt(ss_a), eps)
            rb = 1.0 / tl.maximum(tl.sqrt(ss_b), eps)
            acc = acc * ra[:, None] * rb[None, :]
            if pa == pb:
                tl.store(r_ptr + offs_a, ra, mask=offs_a < m)
    inside = (offs_a[:, None] < n) & (offs_b[None, :] < n)
    eye = tl.where(inside & (offs_a[:, None] == offs_b[None, :]), 1.0, 0.0)
    b1 = alpha * acc + beta * eye
    mirror = pa != pb
    sym_store(b1_ptr, b1, offs_a, offs_b, n, mirror)
    if DOTS:  # off-diagonal tiles stand for themselves and their mirror
        twice = tl.where(mirror, 2.0, 1.0)
        tl.store(part_ptr + pid, twice * w_self * tile_sum(b1 * b1) + w_tr * tile_sum(b1 * eye))
    if INIT_WV:
        sym_store(w_ptr, w0 * eye + w1 * b1, offs_a, offs_b, n, mirror)
        sym_store(v_ptr, v0 * eye + v1 * b1, offs_a, offs_b, n, mirror)


def row_stats(h: torch.Tensor, centering: bool, eps: float, cfg: Config):
    """``(r, zbar)``: inverse row norms (m,) and, if ``centering``, the mean normalised row (d,)
    (else an empty tensor); float32."""
    m, d = h.shape
    r = torch.empty(m, device=h.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.block_m),)
    part = torch.empty((grid[0], d) if centering else (0,), device=h.device, dtype=torch.float32)
    _row_stats_kernel[grid](h, r, part, m, d, h.stride(0), eps, 1.0 / m, CENTER=centering,
                            BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_n, num_warps=4)
    zbar = part.sum(0) if centering else part
    return r, zbar


def gram_basis(h, r, zbar, *, centering: bool, inline_norms: bool, eps: float, alpha: float,
               beta: float, dots: torch.Tensor | None, w_self: float = 0.0, w_tr: float = 0.0,
               wv: tuple | None = None, wv_coef=(0.0, 0.0, 0.0, 0.0), cfg: Config):
    """Launch the Gram kernel; returns ``B_1`` (n, n) float32.

    ``inline_norms`` (sample side, no centring): ``r`` is written, not read. ``dots``: a float32
    vector of nt² partials to fill (None: no trace terms). ``wv``: the (W, V) buffers to
    initialise with ``wv_coef = (w0, w1, v0, v1)``.
    """
    m, d = h.shape
    n = min(m, d)
    b1 = torch.empty((n, n), device=h.device, dtype=torch.float32)
    grid = (triton.cdiv(n, cfg.block_n) ** 2,)
    w, v = wv if wv is not None else (b1, b1)
    _gram_kernel[grid](
        h, r, zbar, b1, w, v, dots if dots is not None else b1, m, d, n, h.stride(0), eps,
        alpha, beta, w_self, w_tr, *wv_coef,
        FEATURE=d <= m, INLINE_NORMS=inline_norms, CENTER=centering, DOTS=dots is not None,
        INIT_WV=wv is not None, HALF_DOT=cfg.half_dot, PREC=cfg.precision,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return b1
