"""The "cpu" backend: stages 1 and 3 of the staged TCR op for CPU tensors, written for few passes
over the (m, d) rows (the contract: ``mmae_fast/ops/tcr/stages.py``; acc = float64 for float64
h, else float32, half inputs upcast).

``backend="auto"`` picks it for CPU tensors: float32 products for the m×d side, the n×n side in
``small_side`` (float64 where the contract needs it; LAPACK's Cholesky and ``cholesky_inverse``
on the CPU). Stage 1 is ``stages.gram``. Stage 3 computes the same ``dh`` as ``stages.grad`` with
the scale folded into one row vector::

    u = Z q - 1vᵀ  (feature)  or  q Z - 1vᵀ  (sample)          one GEMM (+ one pass with v)
    w_i = s·<z_i, u_i>  (||h_i|| > EPS)  or  t  (floor rows)    one pass + row sums
    dh_i = rinv_i·(s·u_i - w_i·z_i)                             two passes

(``gx = s·u``, so ``s·u_i - w_i z_i`` is ``gx_i - z_i<z_i, gx_i>`` on projected rows and
``gx_i - t·z_i`` on floor rows, as the contract states) — five passes over m×d numbers where the
generic stage makes about twelve.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import stages


def availability() -> str | None:
    """The "cpu" backend always runs."""
    return None


def supports(z: Tensor) -> str | None:
    """CPU tensors only (on a GPU the kernel backends or "reference" run)."""
    if z.device.type != "cpu":
        return (f"the cpu backend runs CPU tensors, got device {z.device.type!r}; use "
                f"backend='auto', 'cuda', 'triton' or 'reference'")
    return None


gram = stages.gram


def grad(coef: Tensor, h: Tensor, rinv: Tensor, q: Tensor, v: Tensor, feature: bool,
         scale: float) -> Tensor:
    """Stage 3: dh (m, d) in h's dtype; ``coef = [s, t]`` or ``[s]`` (t = 0); see the module
    docstring and ``stages.py``."""
    acc = rinv.dtype
    coef = coef.to(acc).reshape(-1) * scale
    s = coef[0]
    t = coef[1] if coef.numel() == 2 else torch.zeros_like(s)
    z = h.to(acc) * rinv[:, None]
    q = q.to(acc)
    u = z @ q if feature else q @ z
    if v.numel():
        u.sub_(v.to(acc)[None, :])
    radial = torch.linalg.vecdot(z, u)
    project = rinv < stages._inv_floor(acc)
    w = torch.where(project, s * radial, t)
    dh = u.mul_((rinv * s)[:, None]).addcmul_(z, (rinv * w)[:, None], value=-1.0)
    return dh.to(h.dtype)
