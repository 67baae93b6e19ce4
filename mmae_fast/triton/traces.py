"""Polynomial basis by a three-term recurrence, with trace identities fused into GEMM epilogues.

With ``B_0 = I`` and ``B_1`` from ``mmae_fast.triton.gram``, each launch makes one basis matrix

    B_k = gamma·B_1·B_(k-1) - delta·B_(k-2)        (n, n) float32, k = 2..q

(power basis ``(gamma, delta) = (1, 0)``; Chebyshev ``(2, 1)``) and, in its epilogue, the
Frobenius products that the trace identities need (``mmae_fast.ops.plan.make_plan``
writes R as Σ w·<B_j, B_l>_F with j in {0, l-1, l}):

    partial = w_prev·<B_k, B_(k-1)>_F + w_self·<B_k, B_k>_F + w_tr·tr B_k

and updates the derivative accumulators ``W += outer_k·B_k``, ``V += inner_k·B_k`` so that
the derivative matrix ``P = B_q·W + V`` is one more launch of the same kernel. Every matrix is a
polynomial in one symmetric matrix, so only tiles on and above the diagonal are computed and
each is stored with its mirror. Only B_1, B_(k-1), B_(k-2) are kept (a ring of three).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .config import Config
from .tiles import square_tile, sym_store, tile_sum, triangle_pid


@triton.jit
def _sym_gemm_kernel(x_ptr, y_ptr, e_ptr, c_ptr, prev_ptr, w_ptr, v_ptr, part_ptr, n,
                     gamma, beta_eye, e_coef, w_prev, w_self, w_tr, w_coef, v_coef,
                     HAS_E: tl.constexpr, DOTS: tl.constexpr, UPDATE_WV: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = gamma·X·Y + beta_eye·I [+ e_coef·E] for commuting symmetric X, Y (n, n)."""
    pid = tl.program_id(0)
    pa, pb = triangle_pid(pid, n, BLOCK_N)
    if pa > pb:
        if DOTS:
            tl.store(part_ptr + pid, 0.0)
        return
    offs_a = pa * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = pb * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_N), tl.float32)
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        acc = tl.dot(square_tile(x_ptr, offs_a, ks, n), square_tile(y_ptr, ks, offs_b, n), acc,
                     input_precision=PREC)
    inside = (offs_a[:, None] < n) & (offs_b[None, :] < n)
    eye = tl.where(inside & (offs_a[:, None] == offs_b[None, :]), 1.0, 0.0)
    c = gamma * acc + beta_eye * eye
    if HAS_E:
        c += e_coef * square_tile(e_ptr, offs_a, offs_b, n)
    mirror = pa != pb
    sym_store(c_ptr, c, offs_a, offs_b, n, mirror)
    if DOTS:
        twice = tl.where(mirror, 2.0, 1.0)
        prev = square_tile(prev_ptr, offs_a, offs_b, n)
        tl.store(part_ptr + pid, twice * tile_sum(c * (w_self * c + w_prev * prev))
                 + w_tr * tile_sum(c * eye))
    if UPDATE_WV:
        w = square_tile(w_ptr, offs_a, offs_b, n) + w_coef * c
        sym_store(w_ptr, w, offs_a, offs_b, n, mirror)
        v = square_tile(v_ptr, offs_a, offs_b, n) + v_coef * c
        sym_store(v_ptr, v, offs_a, offs_b, n, mirror)


def sym_gemm(x, y, out, *, gamma: float = 1.0, beta_eye: float = 0.0, e=None, e_coef=0.0,
             dots=None, prev=None, w_prev=0.0, w_self=0.0, w_tr=0.0, wv=None, w_coef=0.0,
             v_coef=0.0, cfg: Config):
    """Launch one step into ``out`` (n, n); ``dots`` (nt² float32) receives the partials."""
    n = x.shape[0]
    grid = (triton.cdiv(n, cfg.block_n) ** 2,)
    w, v = wv if wv is not None else (out, out)
    _sym_gemm_kernel[grid](
        x, y, e if e is not None else out, out, prev if prev is not None else out, w, v,
        dots if dots is not None else out, n, gamma, beta_eye, e_coef, w_prev, w_self, w_tr,
        w_coef, v_coef, HAS_E=e is not None, DOTS=dots is not None, UPDATE_WV=wv is not None,
        PREC=cfg.precision, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


@dataclasses.dataclass(frozen=True)
class TraceWeights:
    """A plan's ``R = Σ_t w_t <B_j, B_l>_F`` regrouped by the launch that makes B_l:
    ``R = const + Σ_l (w_prev[l]·<B_l, B_(l-1)> + w_self[l]·<B_l, B_l> + w_tr[l]·tr B_l)``."""
    const: float
    w_prev: tuple[float, ...]
    w_self: tuple[float, ...]
    w_tr: tuple[float, ...]


def trace_weights(pair_j, pair_l, pair_w, nbasis: int, n: int) -> TraceWeights:
    """Regroup plan pairs (j <= l) by l; ``<B_0, B_0> = n``. Raises if a pair is not of the
    form (0, l), (l-1, l) or (l, l)."""
    const = 0.0
    wp, ws, wt = ([0.0] * (nbasis + 1) for _ in range(3))
    for j, l, w in zip(pair_j, pair_l, pair_w):
        if l == 0:
            const += w * n
        elif j == 0:
            wt[l] += w
        elif j == l:
            ws[l] += w
        elif j == l - 1:
            wp[l] += w
        else:
            raise ValueError(f"trace pair <B_{j}, B_{l}> is not made by the recurrence epilogues")
    return TraceWeights(const, tuple(wp), tuple(ws), tuple(wt))
