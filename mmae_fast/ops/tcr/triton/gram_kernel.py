"""Stage 1 of the staged TCR on Triton: row norms and the uncentred Gram on one side.

The contract (``(G, rinv)``, shapes, formulas): ``mmae_fast/ops/tcr/stages.py``. Specific here:
float32 outputs, both triangles of G written; centring is not done here (the staged op centres
the operand with ``stages.centred_gram``).

Row norms never overflow: ``_row_norms_kernel`` scales each row by the power of two of its
largest |entry| before squaring (features of any finite size, ``h·1e30`` in float32 or bfloat16
included). The Gram's dot operands are half tensors for half inputs (tensor cores, float32
accumulation): on the feature side z rounded to float16 (bfloat16 inputs too:
``tiles.gram_operand``), on the sample side h itself scaled by a power of two per row (exact,
|x| <= 1, so h hᵀ cannot overflow) with the rest of the row scaling ``G = D (h hᵀ) D``
(D = diag(rinv)) as the epilogue. Only tiles on and above the diagonal run; each is stored with
its mirror (a diagonal tile: its upper triangle both ways, so G is exactly symmetric).

Launches: ``_row_norms_kernel``, then ``_gram_feature_kernel`` (with many rows and few tiles
the rows are split over several programs per tile and one torch sum adds the partial Grams,
``_row_splits``) or ``_gram_sample_kernel``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import StageConfig
from .tiles import (dot_operand, gram_operand, inv_norm, pow2, pow2_exponent, pow2_floor,
                    sym_store_upper, triangle_pid, x_tile)


@triton.jit
def _row_norms_kernel(h_ptr, r_ptr, m, d, stride_h, eps,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """r[rows] = 1/max(||h_row||, eps) in float32, without overflow: a first pass finds the
    row's largest |entry| s, the second sums the squares of h·2^-k (2^k the power of two of s,
    exact) and ||h|| = 2^k·sqrt(Σ)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    smax = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, d, BLOCK_D):
        cols = k0 + tl.arange(0, BLOCK_D)
        x = x_tile(h_ptr, r_ptr, rows, cols, m, d, stride_h, False).to(tl.float32)
        smax = tl.maximum(smax, tl.max(tl.abs(x), axis=1))
    e = pow2_exponent(smax)
    down = pow2(254 - e)
    ss = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, d, BLOCK_D):
        cols = k0 + tl.arange(0, BLOCK_D)
        x = x_tile(h_ptr, r_ptr, rows, cols, m, d, stride_h, False).to(tl.float32) * down[:, None]
        ss += tl.sum(x * x, axis=1)
    tl.store(r_ptr + rows, inv_norm(tl.sqrt(ss) * pow2(e), eps), mask=rows < m)


@triton.jit
def _gram_feature_kernel(h_ptr, r_ptr, g_ptr, m, d, stride_h, rows_per_split,
                         HALF_DOT: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """Split s = program_id(1) of the rows (``rows_per_split``, a multiple of BLOCK_K):
    g[s, a, b] = Σ_(i in split) z[i, a] z[i, b] (d x d)."""
    pa, pb = triangle_pid(tl.program_id(0), d, BLOCK_N)
    if pa > pb:  # below the diagonal: the mirror of tile (pb, pa)
        return
    split = tl.program_id(1)
    offs_a = pa * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = pb * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_N), tl.float32)
    row0 = split * rows_per_split
    row_end = tl.minimum(row0 + rows_per_split, m)
    for k0 in range(row0, row_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        za = x_tile(h_ptr, r_ptr, ks, offs_a, row_end, d, stride_h, True)
        zb = x_tile(h_ptr, r_ptr, ks, offs_b, row_end, d, stride_h, True)
        acc = tl.dot(tl.trans(gram_operand(za, h_ptr, HALF_DOT)), gram_operand(zb, h_ptr, HALF_DOT),
                     acc, input_precision=PREC)
    sym_store_upper(g_ptr + split.to(tl.int64) * d * d, acc, offs_a, offs_b, d, pa, pb)


@triton.jit
def _gram_sample_kernel(h_ptr, r_ptr, g_ptr, m, d, stride_h,
                        HALF_DOT: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """G[i, j] = w_i w_j Σ_k (h[i, k] p_i)(h[j, k] p_j) (m x m), p_i = ``pow2_floor(rinv_i)``
    and w_i = rinv_i / p_i in [1, 2): the operands h_i·p_i are h scaled exactly (|x| <= 1, no
    overflow of the product), and G = D (h hᵀ) D bit for bit where h hᵀ itself is finite."""
    pa, pb = triangle_pid(tl.program_id(0), m, BLOCK_N)
    if pa > pb:
        return
    offs_a = pa * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = pb * BLOCK_N + tl.arange(0, BLOCK_N)
    ra = tl.load(r_ptr + offs_a, mask=offs_a < m, other=0.0)
    rb = tl.load(r_ptr + offs_b, mask=offs_b < m, other=0.0)
    p_a = pow2_floor(ra)
    p_b = pow2_floor(rb)
    acc = tl.zeros((BLOCK_N, BLOCK_N), tl.float32)
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        xa = x_tile(h_ptr, r_ptr, offs_a, ks, m, d, stride_h, False).to(tl.float32) * p_a[:, None]
        xb = x_tile(h_ptr, r_ptr, offs_b, ks, m, d, stride_h, False).to(tl.float32) * p_b[:, None]
        acc = tl.dot(dot_operand(xa, h_ptr, HALF_DOT), tl.trans(dot_operand(xb, h_ptr, HALF_DOT)),
                     acc, input_precision=PREC)
    wa = tl.math.div_rn(ra, p_a)
    wb = tl.math.div_rn(rb, p_b)
    sym_store_upper(g_ptr, acc * wa[:, None] * wb[None, :], offs_a, offs_b, m, pa, pb)


#: Programs to aim for on the feature side (about two per SM of an H100), by splitting the rows.
TARGET_PROGRAMS = 264
#: Fewest row blocks (of block_k rows) per split.
MIN_SPLIT_BLOCKS = 8


def _row_splits(m: int, d: int, block_n: int, block_k: int) -> tuple[int, int]:
    """(splits, rows per split) of the feature-side Gram's rows (split-K): enough programs for
    the GPU when d is small and m large, each split at least MIN_SPLIT_BLOCKS·block_k rows, a
    multiple of block_k. The partial Grams (splits, d, d) are summed by one torch launch."""
    nt = -(-d // block_n)
    tiles = nt * (nt + 1) // 2
    splits = max(1, min(-(-TARGET_PROGRAMS // tiles), m // (MIN_SPLIT_BLOCKS * block_k)))
    rows = -(-(-(-m // splits)) // block_k) * block_k
    return -(-m // rows), rows


def gram(h: torch.Tensor, feature: bool, eps: float, cfg: StageConfig):
    """``(G, rinv)`` (float32) of a contiguous-row h (m, d): see the module docstring."""
    m, d = h.shape
    f32 = dict(device=h.device, dtype=torch.float32)
    rinv = torch.empty(m, **f32)
    bn = cfg.block_n
    common = dict(HALF_DOT=cfg.half_dot, PREC=cfg.precision, BLOCK_N=bn, BLOCK_K=cfg.block_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if feature:
        ntiles = triton.cdiv(d, bn) ** 2
        splits, rows = _row_splits(m, d, bn, cfg.block_k)
        g = torch.empty((splits, d, d), **f32)
        _row_norms_kernel[(triton.cdiv(m, cfg.block_m),)](
            h, rinv, m, d, h.stride(0), eps, BLOCK_M=cfg.block_m, BLOCK_D=bn, num_warps=4)
        _gram_feature_kernel[(ntiles, splits)](h, rinv, g, m, d, h.stride(0), rows, **common)
        return (g[0] if splits == 1 else g.sum(0)), rinv
    g = torch.empty((m, m), **f32)
    _row_norms_kernel[(triton.cdiv(m, cfg.block_m),)](
        h, rinv, m, d, h.stride(0), eps, BLOCK_M=cfg.block_m, BLOCK_D=bn, num_warps=4)
    _gram_sample_kernel[(triton.cdiv(m, bn) ** 2,)](h, rinv, g, m, d, h.stride(0), **common)
    return g, rinv
