"""Features at the numerical extremes, shared by the tests of every path (reference, staged
stages, Triton, CUDA): rows whose plain sum of squares overflows, rows just above the 1e-12 norm
floor, and the row-scaled comparison of gradients ~ 1/||h_i|| (tests/independent.py gives the
expected values)."""
from __future__ import annotations

import torch

import independent as ind
from tolerances import rel_err

#: The row-norm floor of every normalisation (F.normalize's eps).
EPS = 1e-12
#: Scales of the features per dtype: beyond sqrt(float32 max) ~ 1.8e19 the plain sum of squares
#: overflows in float32 / bfloat16 (and bfloat16 holds 1e30); float64's beyond 1.3e154. float16
#: cannot hold such numbers (max 65504): its rows are scaled to entries at the top of its range
#: ("top") instead, and it has no rows of norm 1e-12.
SCALES = {
    torch.float64: [1e20, 1e30, 1e200],
    torch.float32: [1e20, 1e30],
    torch.bfloat16: [1e20, 1e30],
    torch.float16: ["top"],
}
#: (dtype, scale, floor_rows) for every dtype and scale, with and without rows at the floor.
CASES = [(dtype, scale, floor) for dtype, scales in SCALES.items() for scale in scales
         for floor in ([False] if scale == "top" else [False, True])]


def case_id(case) -> str:
    dtype, scale, floor = case
    return f"{str(dtype).split('.')[-1]}-{scale}" + ("-floor" if floor else "")


def views(m: int = 24, d: int = 10, seed: int = 0):
    """Two correlated float64 views (m, d) with a power-law spectrum."""
    g = torch.Generator().manual_seed(seed)
    h1 = torch.randn(m, d, generator=g, dtype=torch.float64) * torch.arange(1, d + 1) ** -0.7
    h2 = h1 + 0.8 * torch.randn(m, d, generator=g, dtype=torch.float64)
    return h1, h2


def at_scale(h: torch.Tensor, dtype: torch.dtype, scale, floor_rows: bool = False):
    """float64 h's rows with largest |entry| ``scale`` ("top": 6e4), in dtype; ``floor_rows``:
    every third row instead of norm 1.5·EPS (just above the floor) and every third of norm 1,
    so the batch mixes all three sizes."""
    unit = h / h.norm(dim=1, keepdim=True)
    h = h / h.abs().amax(dim=1, keepdim=True) * (6e4 if scale == "top" else scale)
    if floor_rows:
        h[1::3] = 1.5 * EPS * unit[1::3]
        h[2::3] = unit[2::3]
    return h.to(dtype)


def tcr_grad_error(grad: torch.Tensor, h: torch.Tensor, mu: float, centering: bool = False):
    """``(error, floor)`` of a TCR gradient against ``independent.tcr_exact_grad``, both rows
    scaled by ||h_i|| (the gradient is ~1/||h_i||: rows of 1e30 and of 1e-12 weigh alike);
    floor: the error of the expected gradient rounded to grad's dtype (float16 gradients of
    rows at 6e4 are subnormal)."""
    ref = torch.from_numpy(ind.tcr_exact_grad(h.detach(), mu, centering))
    norms = torch.from_numpy(ind.row_norms(h.detach().double().cpu().numpy()))
    err = rel_err(grad.detach().double().cpu() * norms, ref * norms)
    floor = rel_err(ref.to(grad.dtype).double() * norms, ref * norms)
    return err, floor


__all__ = ["EPS", "SCALES", "CASES", "case_id", "views", "at_scale", "tcr_grad_error"]
