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

from . import cpu_native, stages
from ... import reference


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
    side, Z on the sample side) by ``symmetric_product``; the native op where usable
    (``cpu_native``)."""
    if cpu_native.usable():
        return torch.ops.mmae_fast.cpu_gram(h, feature, reference.EPS)
    rinv = stages._rinv(h)
    z = h.to(rinv.dtype) * rinv[:, None]
    a = z.mT if feature else z
    return symmetric_product(a, a.mT), rinv


def grad(coef: Tensor, h: Tensor, rinv: Tensor, q: Tensor, v: Tensor, feature: bool,
         scale: float) -> Tensor:
    """Stage 3: dh (m, d) in h's dtype; ``coef = [s, t]`` or ``[s]`` (t = 0); see the module
    docstring and ``stages.py``. With ``r = rinv·s``: ``dh_i = r_i·u_i - x_i·z_i``, ``x_i =
    r_i·<z_i, u_i>`` on projected rows, ``rinv_i·t`` on floor rows; the native op where
    usable (``cpu_native``)."""
    if cpu_native.usable():
        return torch.ops.mmae_fast.cpu_grad(coef, h, rinv, q, v, feature, scale, reference.EPS)
    acc = rinv.dtype
    coef = coef.to(acc).reshape(-1)
    if scale != 1.0:
        coef = coef * scale
    z = (h if h.dtype == acc else h.to(acc)) * rinv[:, None]
    q = q if q.dtype == acc else q.to(acc)
    u = torch.mm(z, q) if feature else torch.mm(q, z)
    if v.numel():
        u.sub_(v.to(acc)[None, :])
    r = rinv * coef[0]
    floor = rinv * coef[1] if coef.numel() == 2 else 0.0
    x = torch.where(rinv < stages._inv_floor(acc), r * torch.linalg.vecdot(z, u), floor)
    dh = u.mul_(r[:, None]).addcmul_(z, x[:, None], value=-1.0)
    return dh if dh.dtype == h.dtype else dh.to(h.dtype)


#: The spectrum bound ``kappa = 1 + mu·m/d`` up to which the exact gradient of float32 (and half)
#: input takes float32 products (``exact_derivative``): the contract's range, where the tests
#: measure it (tests/tolerances.py, CPU_BACKEND_EXACT_GRAD_VS_REFERENCE); above it, float64.
FLOAT32_INVERSE_KAPPA = 257.0
#: The size from which the float32 form is the faster one (two threads: below it LAPACK's
#: float64 potri costs no more than the float32 solve and product)
FLOAT32_INVERSE_MIN_N = 192


def lower_gram(m: Tensor) -> Tensor:
    """``mᵀ m`` (n, n) for a lower-triangular m, from n = ``BLOCKED_MIN`` on by 2×2 blocks
    (split at n/2) that skip the zero block::

        [[M11ᵀM11 + M21ᵀM21, M21ᵀM22], [M22ᵀM21, M22ᵀM22]]

    (half the multiply-adds of a full product; the lower off-diagonal block is the transposed
    upper one); below BLOCKED_MIN one product."""
    n = m.shape[0]
    if n < BLOCKED_MIN:
        return m.mT @ m
    h = n // 2
    m11, m21, m22 = m[:h, :h], m[h:, :h], m[h:, h:]
    out = m.new_empty((n, n))
    torch.addmm(torch.mm(m21.mT, m21), m11.mT, m11, out=out[:h, :h])
    torch.mm(m21.mT, m22, out=out[:h, h:])
    torch.mm(m22.mT, m22, out=out[h:, h:])
    out[h:, :h].copy_(out[:h, h:].mT)
    return out


def float32_complement(chol: Tensor) -> Tensor:
    """``W = I - A⁻¹`` (n, n) float32 from the float64 factor ``chol`` of ``A = I + Y = L Lᵀ``,
    in float32 products on matrices as small as Y, never ``I + (small)``: with ``L = I + N``::

        L⁻¹ = I - M,  M = N L⁻¹          ((I - M)(I + N) = I  <=>  M L = N)
        A⁻¹ = L⁻ᵀ L⁻¹ = I - W,  W = M + Mᵀ - MᵀM

    M̃ from one float32 triangular solve ``M̃ fl32(L) = fl32(N)`` (N = L - I in float64 first),
    MᵀM by ``lower_gram``. N, M and W are as small as Y to first order (``N ≈ M ≈`` Y's lower
    triangle with half its diagonal), so float32 keeps their relative digits: the solve's
    backward error in L and the rounding of N perturb M by ``O((γ_n + u32)·sqrt(kappa_A))·||M||``
    (kappa_A = 1 + ||Y|| <= the spectrum bound; sqrt(kappa_A) bounds the condition number of
    L), no more than the float32 Gram's own error puts into W. Forming ``I - inv32(A)`` instead
    leaves an absolute error ``kappa_A·u32`` against a W that can be far smaller than 1
    (bench/small_accuracy.py measures both)."""
    n_part = chol.clone()
    n_part.diagonal().sub_(1.0)  # N = L - I, in float64
    m = torch.linalg.solve_triangular(chol.to(torch.float32), n_part.to(torch.float32),
                                      upper=False, left=False)
    return (m + m.mT).sub_(lower_gram(m))


def takes_float64_inverse(n: int, float32_grade: bool) -> bool:
    """Whether ``exact_derivative`` takes LAPACK's float64 potri (a dense float64 result)."""
    return not float32_grade or n < FLOAT32_INVERSE_MIN_N


def exact_derivative(chol: Tensor, c: float, float32_grade: bool):
    """``-2c·A⁻¹`` (n, n), the exact estimator's ``2·dR/dG_c`` on the CPU, from the float64
    factor ``chol`` of ``A = I + c·G_c``.

    Without ``float32_grade`` (float64 input, kappa above ``FLOAT32_INVERSE_KAPPA``) or below
    n = ``FLOAT32_INVERSE_MIN_N``: LAPACK's potri in float64 (``cholesky_inverse``), a float64
    tensor. Otherwise ``-2c·A⁻¹ = 2c·W - 2c·I`` as ``small_side.Complement(W, 2c, -2c)`` with W
    from ``float32_complement`` (a float32 solve and half a product): the identity part is
    radial (``small_side`` removes it with the shift alpha), only W carries the tangential
    gradient, and no float32 number ever holds ``I + (small)``.
    """
    if takes_float64_inverse(chol.shape[0], float32_grade):
        return torch.cholesky_inverse(chol).mul_(-2.0 * c)
    from .small_side import Complement  # small_side imports this module
    return Complement(float32_complement(chol), 2.0 * c, -2.0 * c)
