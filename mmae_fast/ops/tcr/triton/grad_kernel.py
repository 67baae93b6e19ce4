"""Stage 3 of the staged TCR on Triton: the input gradient through the Gram and the normalisation.

The contract (``coef = [s, t]``, gx, dh and the floor rows): ``mmae_fast/ops/tcr/stages.py``.
Specific here: float32 arithmetic, z = rinv_i·h_i recomputed in float32 from h and rinv (no m×d
copy kept between the stages), dh stored once in h's dtype.

For half inputs the product is "split3": Z = Zhi + Zlo, Q = Qhi + Qlo (hi = round(x), lo =
round(x − hi) in h's dtype, split in registers, never stored) and Z·Q ≈ Zlo·Qhi + Zhi·Qlo +
Zhi·Qhi, three tensor-core products with float32 accumulation; float32 inputs take one IEEE
float32 product. The projection uses z in float32, never the rounded halves.

Two launches of one kernel on the same (row block, column block) grid: the first computes its
gx tile and stores the partial radial sums ⟨z_i, gx_i⟩ over its columns (m × column blocks,
float32); the second recomputes the gx tile, adds up the partials and writes dh once, in h's
dtype. The recomputation doubles the GEMM's arithmetic but needs no m × d scratch (peak extra
memory O(m·d/BLOCK_N)).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .config import StageConfig
from .tiles import rne_bf16, split3_dot, x_tile


@triton.jit
def _grad_kernel(h_ptr, r_ptr, q_ptr, v_ptr, coef_ptr, part_ptr, dh_ptr, m, d, stride_h, scale,
                 inv_eps, nbd, FEATURE: tl.constexpr, HAS_V: tl.constexpr, HAS_SHIFT: tl.constexpr,
                 SPLIT: tl.constexpr,
                 HALF_DOT: tl.constexpr, EMU_BF16: tl.constexpr, PREC: tl.constexpr,
                 PROJECT: tl.constexpr,
                 NBD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < m
    cmask = cols < d
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if FEATURE:  # Σ_k z[rows, k] q[k, cols],  q (d, d)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            z = x_tile(h_ptr, r_ptr, rows, ks, m, d, stride_h, True)
            q = tl.load(q_ptr + ks[:, None] * d + cols[None, :],
                        mask=(ks[:, None] < d) & cmask[None, :], other=0.0)
            acc = split3_dot(z, q, acc, h_ptr, SPLIT, HALF_DOT, EMU_BF16, PREC)
    else:  # Σ_k q[rows, k] z[k, cols],  q (m, m)
        for k0 in range(0, m, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            q = tl.load(q_ptr + rows[:, None] * m + ks[None, :],
                        mask=rmask[:, None] & (ks[None, :] < m), other=0.0)
            z = x_tile(h_ptr, r_ptr, ks, cols, m, d, stride_h, True)
            acc = split3_dot(q, z, acc, h_ptr, SPLIT, HALF_DOT, EMU_BF16, PREC)
    if HAS_V:
        acc -= tl.load(v_ptr + cols, mask=cmask, other=0.0)[None, :]
    gx = acc * (tl.load(coef_ptr).to(tl.float32) * scale)
    z = x_tile(h_ptr, r_ptr, rows, cols, m, d, stride_h, True)
    if PROJECT:
        js = tl.arange(0, NBD)
        part = tl.load(part_ptr + rows[:, None] * nbd + js[None, :],
                       mask=rmask[:, None] & (js[None, :] < nbd), other=0.0)
        radial = tl.sum(part, axis=1)
        r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
        keep = r < inv_eps  # ||h_i|| > eps: project; else (r = 1/eps) remove Q's shift only
        if HAS_SHIFT:
            kept = gx - z * (tl.load(coef_ptr + 1).to(tl.float32) * scale)
        else:
            kept = gx
        dh = r[:, None] * tl.where(keep[:, None], gx - z * radial[:, None], kept)
        if EMU_BF16:
            dh = rne_bf16(dh)
        tl.store(dh_ptr + rows[:, None].to(tl.int64) * d + cols[None, :],
                 dh.to(dh_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
    else:
        tl.store(part_ptr + rows * nbd + pid_n, tl.sum(z * gx, axis=1), mask=rmask)


def grad(coef: torch.Tensor, h: torch.Tensor, rinv: torch.Tensor, q: torch.Tensor,
         v: torch.Tensor, feature: bool, scale: float, eps: float,
         cfg: StageConfig) -> torch.Tensor:
    """dh (m, d), contiguous, in h's dtype (h with unit column stride); ``coef`` = [s] or
    [s, t], (1,) or (2,) float32; see the module docstring."""
    m, d = h.shape
    # 1/eps as float32 rounds it (exactly what rinv holds for a row at the floor; a division in
    # the kernel would be approximate)
    inv_eps = float(np.float32(1.0) / np.float32(eps))
    dh = torch.empty((m, d), device=h.device, dtype=h.dtype)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(d, cfg.block_n))
    part = torch.empty((m, grid[1]), device=h.device, dtype=torch.float32)
    split = h.dtype in (torch.float16, torch.bfloat16)
    for project in (False, True):
        _grad_kernel[grid](
            h, rinv, q, v, coef, part, dh, m, d, h.stride(0), scale, inv_eps, grid[1],
            FEATURE=feature, HAS_V=v.numel() > 0, HAS_SHIFT=coef.numel() == 2,
            SPLIT=split, HALF_DOT=cfg.half_dot,
            EMU_BF16=cfg.emulate_bf16, PREC=cfg.precision, PROJECT=project,
            NBD=triton.next_power_of_2(grid[1]),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dh
