"""Input gradient of R through the Gram, the centring and the normalisation, in two launches.

With ``x = [J] z`` (z = r·h the normalised rows, r = 1/max(||h_i||, eps)), P the derivative
matrix (n, n) and ``g`` the incoming gradient (0-d)::

    gx = g·scale·x·P (feature side, n = d)   or   g·scale·P·x (sample side, n = m)    (m, d)
    dh_i = r_i·(gx_i - z_i·<z_i, gx_i>)   if ||h_i|| > eps,   else  r_i·gx_i

(the normalisation Jacobian ``(I - z_i z_iᵀ)/max(||h_i||, eps)``). The centring Jacobian J
drops out: P commutes with the Gram, whose null space holds the all-ones vector on the sample
side (and 1ᵀx = 0 on the feature side), so ``J·gx = gx``. Launch 1 (a GEMM, x rebuilt from h on
the fly) writes gx in float32 and per-column-block partials of ``<z_i, gx_i>``; launch 2 sums
them and applies the projection, writing dh in the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import Config
from .tiles import x_tile


@triton.jit
def _dz_gemm_kernel(h_ptr, r_ptr, zbar_ptr, p_ptr, g_ptr, gx_ptr, part_ptr, m, d, stride_h,
                    scale, nbd, FEATURE: tl.constexpr, CENTER: tl.constexpr, PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if FEATURE:  # gx[rows, cols] = Σ_k x[rows, k] P[k, cols],  P (d, d)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x = x_tile(h_ptr, r_ptr, zbar_ptr, rows, ks, m, d, stride_h, True, CENTER)
            pmask = (ks[:, None] < d) & (cols[None, :] < d)
            p = tl.load(p_ptr + ks[:, None] * d + cols[None, :], mask=pmask, other=0.0)
            acc = tl.dot(x, p, acc, input_precision=PREC)
    else:  # gx[rows, cols] = Σ_k P[rows, k] x[k, cols],  P (m, m)
        for k0 in range(0, m, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            pmask = (rows[:, None] < m) & (ks[None, :] < m)
            p = tl.load(p_ptr + rows[:, None] * m + ks[None, :], mask=pmask, other=0.0)
            x = x_tile(h_ptr, r_ptr, zbar_ptr, ks, cols, m, d, stride_h, True, CENTER)
            acc = tl.dot(p, x, acc, input_precision=PREC)
    gx = acc * (tl.load(g_ptr).to(tl.float32) * scale)
    msk = (rows[:, None] < m) & (cols[None, :] < d)
    tl.store(gx_ptr + rows[:, None].to(tl.int64) * d + cols[None, :], gx, mask=msk)
    z = x_tile(h_ptr, r_ptr, zbar_ptr, rows, cols, m, d, stride_h, True, False)
    tl.store(part_ptr + rows * nbd + pid_n, tl.sum(z * gx, axis=1), mask=rows < m)


@triton.jit
def _dz_project_kernel(h_ptr, r_ptr, gx_ptr, part_ptr, dh_ptr, m, d, stride_h, eps, nbd,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NBD: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < m
    js = tl.arange(0, NBD)
    part = tl.load(part_ptr + rows[:, None] * nbd + js[None, :],
                   mask=rmask[:, None] & (js[None, :] < nbd), other=0.0)
    radial = tl.sum(part, axis=1)  # <z_i, gx_i>
    r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
    z = x_tile(h_ptr, r_ptr, r_ptr, rows, cols, m, d, stride_h, True, False)
    msk = rmask[:, None] & (cols[None, :] < d)
    gx = tl.load(gx_ptr + rows[:, None].to(tl.int64) * d + cols[None, :], mask=msk, other=0.0)
    # rows with ||h|| <= eps (r = 1/eps) are scaled, not projected (F.normalize's clamp)
    project = r < 1.0 / eps
    dh = r[:, None] * tl.where(project[:, None], gx - z * radial[:, None], gx)
    tl.store(dh_ptr + rows[:, None].to(tl.int64) * stride_h + cols[None, :],
             dh.to(dh_ptr.dtype.element_ty), mask=msk)


def input_grad(grad, h, p, r, zbar, *, centering: bool, scale: float, eps: float,
               cfg: Config) -> torch.Tensor:
    """dR/dh (m, d) in h's dtype, for ``grad`` (0-d) times the derivative described above."""
    m, d = h.shape
    feature = d <= m
    dh = torch.empty_like(h)
    gx = dh if h.dtype == torch.float32 else torch.empty(
        (m, d), device=h.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(d, cfg.block_n))
    part = torch.empty((m, grid[1]), device=h.device, dtype=torch.float32)
    g = grad.detach().to(device=h.device, dtype=torch.float32).reshape(1)
    _dz_gemm_kernel[grid](h, r, zbar if centering else r, p, g, gx, part, m, d, h.stride(0), scale,
                          grid[1], FEATURE=feature, CENTER=centering, PREC=cfg.precision,
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _dz_project_kernel[grid](h, r, gx, part, dh, m, d, h.stride(0), eps, grid[1],
                             BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                             NBD=triton.next_power_of_2(grid[1]), num_warps=4)
    return dh
