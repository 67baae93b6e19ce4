"""Stages 1 and 3 of the staged TCR op in plain PyTorch (any device, any float dtype).

The contract of stages 1 and 3, written once: every backend's ``gram`` / ``grad`` (the
"triton" and "cuda" ops included) implements what this docstring states, and is tested against
these functions run in float64. Also the "reference" backend's stages on the distributed path.
m rows, d features, n = d if ``feature`` else m, EPS = ``mmae_fast.reference.EPS``; acc = float64 for float64 input,
else float32 (computed here without half rounding: this path is for the CPU)::

    gram(h, feature) -> (G, rinv)
        rinv_i = 1/max(||h_i||, EPS), z_i = h_i·rinv_i                     (m,)    acc
        ||h_i|| without overflow: scaled by the power of two of max_j |h_ij| first
        (``reference.row_norms``); exact for every row whose norm is finite in acc
        G = ZᵀZ (d, d) if feature else ZZᵀ (m, m), uncentred               (n, n)  acc, symmetric
    centred_gram(h, feature) -> (G_c, rinv, colsum)
        G_c the Gram of the centred rows Z - 1z̄ᵀ, colsum = 1ᵀZ (d,): stage 1 of every backend
        when centring (the kernels' Gram is uncentred only)
    grad(coef, h, rinv, q, v, feature, scale) -> dh                         (m, d)  h.dtype
        coef = [s, t] (or [s]: t = 0), s: the scale of Q, t: its radial shift
        q (n, n) acc, symmetric; v (d,) acc, or (0,) meaning v = 0
        gx = scale·s·(Z q - 1vᵀ)  (feature)  or  scale·s·(q Z - 1vᵀ)
        dh_i = rinv_i (gx_i - z_i <z_i, gx_i>)  if ||h_i|| > EPS,
               rinv_i (gx_i - scale·t·z_i)      else (the floor rows: not projected, so they
                                                 lose the radial shift here, which the
                                                 projection removes from every other row)
    A row is at the floor when rinv_i = 1/EPS rounded to acc (``rinv < _inv_floor(acc)``: the
    test is made on rinv, in its own dtype).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import Tensor

from ... import reference


def availability() -> str | None:
    """The "reference" backend always runs."""
    return None


def supports(z: Tensor) -> str | None:
    """Every floating tensor on every device."""
    return None


def _acc(dtype: torch.dtype) -> torch.dtype:
    return reference.compute_dtype(dtype)


@functools.lru_cache(maxsize=None)
def _inv_floor(dtype: torch.dtype) -> float:
    """``1/EPS`` rounded as ``_rinv`` rounds it in ``dtype`` (float32 or float64), exactly."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return float(np_dtype(1.0) / np_dtype(reference.EPS))


def _rinv(h: Tensor) -> Tensor:
    return torch.reciprocal(reference.row_norms(h.to(_acc(h.dtype))).clamp_min(reference.EPS))


def gram(h: Tensor, feature: bool) -> tuple[Tensor, Tensor]:
    """Stage 1, uncentred: ``(G, rinv)``; see the module docstring."""
    rinv = _rinv(h)
    z = h.to(rinv.dtype) * rinv[:, None]
    return (z.mT @ z if feature else z @ z.mT), rinv


def centred_gram(h: Tensor, feature: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(G_c, rinv, colsum)`` with G_c the Gram of the centred rows ``Z - 1 z̄ᵀ`` (n, n): the
    staged op's stage 1 whenever it centres, on every backend.

    Centring the operand, not the product: ``G - s sᵀ/m`` from a float32 G loses everything
    when the rows are close to one direction (a relative error of 4e-4 at a spread of 1e-2,
    5e-2 at 1e-3, against 1e-8 here; tests/ops/test_staged.py). For half inputs on CUDA the centred
    rows (|x| <= 2) are rounded to float16 — for bfloat16 inputs too: 8x finer there at the same
    tensor-core rate — and multiplied with float32 output.
    Costs two float32 (m, d) copies of h (Z and Z - 1z̄ᵀ; centred runs only).
    """
    rinv = _rinv(h)
    z = h.to(rinv.dtype) * rinv[:, None]
    colsum = z.sum(dim=0)
    zc = z - colsum / z.shape[0]
    if h.is_cuda and h.dtype in (torch.float16, torch.bfloat16) and _HALF_MM_OUT_FLOAT32[0]:
        op = zc.to(torch.float16)
        try:
            g = (torch.mm(op.mT, op, out_dtype=torch.float32) if feature
                 else torch.mm(op, op.mT, out_dtype=torch.float32))
            return g, rinv, colsum
        except (TypeError, RuntimeError) as exc:  # a torch without mm(..., out_dtype)
            if isinstance(exc, RuntimeError) and "out_dtype" not in str(exc):
                raise  # an out-of-memory error or a real failure: not ours to hide
            _HALF_MM_OUT_FLOAT32[0] = False
            warnings.warn(f"mmae_fast: torch.mm(..., out_dtype=torch.float32) is not available "
                          f"({exc}); the centred Gram of half inputs runs as a float32 product "
                          f"(no tensor cores) from now on", RuntimeWarning, stacklevel=2)
    return (zc.mT @ zc if feature else zc @ zc.mT), rinv, colsum


#: Whether ``torch.mm(half, half, out_dtype=torch.float32)`` works here (found on first use).
_HALF_MM_OUT_FLOAT32 = [True]


def grad(coef: Tensor, h: Tensor, rinv: Tensor, q: Tensor, v: Tensor, feature: bool,
         scale: float) -> Tensor:
    """Stage 3: dh; ``coef = [s, t]`` or ``[s]``; see the module docstring."""
    acc = rinv.dtype
    coef = coef.to(acc).reshape(-1) * scale
    z = h.to(acc) * rinv[:, None]
    gx = z @ q.to(acc) if feature else q.to(acc) @ z
    if v.numel():
        gx = gx - v.to(acc)[None, :]
    gx = gx * coef[0]
    radial = (z * gx).sum(dim=1, keepdim=True)
    # ||h_i|| > EPS, decided in rinv's own dtype: a clamped row has rinv = 1/EPS rounded to it
    # exactly (in float32, 1/EPS·EPS computed in float64 is not >= 1: such rows were projected)
    project = (rinv < _inv_floor(acc))[:, None]
    kept = gx - z * coef[1] if coef.numel() == 2 else gx
    dh = rinv[:, None] * torch.where(project, gx - z * radial, kept)
    return dh.to(h.dtype)
