"""The "cpu" backend: stages 1 and 3 of the staged TCR op for CPU tensors, written for few passes
over the (m, d) rows (the contract: ``mmae_fast/ops/tcr/stages.py``; acc = float64 for float64
h, else float32, half inputs upcast).

``backend="auto"`` picks it for CPU tensors: float32 products for the m×d side, the n×n side in
``small_side`` (float64 where the contract needs it; LAPACK's Cholesky, and for the exact
gradient ``exact_derivative``). Stage 1 is ``stages.gram`` with the Gram from three of its
blocks (``symmetric_product``). Stage 3 computes the same ``dh`` as ``stages.grad`` with
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


#: The size from which a product known to be symmetric is computed from three of its four
#: blocks (``symmetric_product``; smaller: one product)
BLOCKED_MIN = 512


def symmetric_product(left: Tensor, right: Tensor, alpha: float = 1.0) -> Tensor:
    """``alpha·left @ right`` (n, n) for a product known to be symmetric (a Gram ``A Aᵀ``, or
    ``X Y`` with ``X, Y`` symmetric and commuting), from three of its 2×2 blocks (split at
    n/2: rows of ``left``, columns of ``right``) from n = ``BLOCKED_MIN`` on::

        P_11 = L_1 R_1,  P_21 = L_2 R_1,  P_22 = L_2 R_2,  P_12 = P_21ᵀ

    (3/4 of the multiply-adds). ``P_12`` is the transposed ``P_21``; the result is within
    float32 rounding of the full product
    (tests/ops/test_cpu_backend.py::test_symmetric_product_from_three_blocks)."""
    n = left.shape[0]
    if n < BLOCKED_MIN:
        return torch.mm(left, right) if alpha == 1.0 else torch.mm(left, right).mul_(alpha)
    half = n // 2
    zero = left.new_zeros(())
    out = left.new_empty((n, n))
    for rows, cols in ((slice(0, half), slice(0, half)), (slice(half, n), slice(0, half)),
                       (slice(half, n), slice(half, n))):
        torch.addmm(zero, left[rows], right[:, cols], beta=0.0, alpha=alpha, out=out[rows, cols])
    out[:half, half:].copy_(out[half:, :half].mT)
    return out


def gram(h: Tensor, feature: bool) -> tuple[Tensor, Tensor]:
    """Stage 1, uncentred: ``(G, rinv)`` as ``stages.gram``, G = A Aᵀ (A = Zᵀ on the feature
    side, Z on the sample side) by ``symmetric_product``."""
    rinv = stages._rinv(h)
    z = h.to(rinv.dtype) * rinv[:, None]
    a = z.mT if feature else z
    return symmetric_product(a, a.mT), rinv


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


#: The spectrum bound ``kappa = 1 + mu·m/d`` up to which the exact gradient of float32 (and half)
#: input takes float32 products (``exact_derivative``): its error grows as ``u32·kappa``; up to
#: here it keeps the gradient contract as the float64 inverse does, at kappa 65 it does not (the
#: measurements: tests/tolerances.py, CPU_BACKEND_EXACT_GRAD_VS_REFERENCE).
FLOAT32_INVERSE_KAPPA = 16.0
#: The size from which the float32 inverse is the faster one (two threads: at n = 128 the float64
#: potri costs what the float32 potri and product cost; from 256 on the float32 pair is faster)
FLOAT32_INVERSE_MIN_N = 192


def exact_derivative(chol: Tensor, y: Tensor, c: float, float32_grade: bool) -> Tensor:
    """``-2c·A⁻¹`` (n, n) float64, the exact estimator's ``2·dR/dG_c`` on the CPU, from the
    float64 factor ``chol`` (``A = I + c·G_c = L Lᵀ``); ``y`` holds A (float64, overwritten).

    Without ``float32_grade`` (float64 input, kappa above ``FLOAT32_INVERSE_KAPPA``) or below
    n = ``FLOAT32_INVERSE_MIN_N``: LAPACK's potri in float64 (``cholesky_inverse``,
    about half the time of a solve and a product). Otherwise float32 products, through the
    part of the inverse the gradient keeps::

        -2c·A⁻¹ = 2c·W - 2c·I,   W = I - A⁻¹ = A⁻¹Y  (Y = A - I = c·G_c)
        W̃ = fl32(X̃ Ỹ),  X̃ = potri32(fl32(L)),  Ỹ = fl32(Y);  q = 2c·W̃ - 2c·I in float64

    (the product by ``symmetric_product``: A⁻¹ and Y commute).

    The identity part is radial (``small_side`` removes it with the shift alpha) and is added
    in float64, exactly; only W carries the tangential gradient, and W̃ is accurate relative
    to W. With ``X̃ A = I + F`` (the residual of the float32 inverse of the cast factor,
    ``||F|| <= c_n·u32·kappa_A``, kappa_A = 1 + ||Y|| the condition number of A, at most the
    spectrum bound 1 + mu·m/d), ``X̃ Y = X̃ A A⁻¹Y = (I + F) W``; with ``||X̃|| ≈ ||A⁻¹|| <= 1``
    and ``||Y|| = kappa_A·||W||`` the product's and Ỹ's roundings add ``(γ_n + u32)·kappa_A``::

        ||W̃ - W|| <= (c_n + γ_n + 1)·u32·kappa_A·||W||

    the order of the float32 Gram's own error in W (``δW = A⁻¹ δY A⁻¹``, ``||δY|| ~ γ_m·||Y||``).
    Forming ``I - X̃`` in float32 instead would leave an absolute error ``kappa_A·u32`` against
    a W that can be far smaller than 1. Costs a float32 potri and one float32 n×n product in
    place of the float64 potri (bench/NOTES.md has the timings).
    """
    if not float32_grade or chol.shape[0] < FLOAT32_INVERSE_MIN_N:
        return torch.cholesky_inverse(chol).mul_(-2.0 * c)
    y.diagonal().sub_(1.0)  # Y = A - I (float64: its rounding is far below float32's)
    inv = torch.cholesky_inverse(chol.to(torch.float32))
    w = symmetric_product(inv, y.to(torch.float32), 2.0 * c).to(torch.float64)
    w.diagonal().sub_(2.0 * c)
    return w
