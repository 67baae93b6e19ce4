"""The inverse of ``A = I + c·G`` without a factorisation: Chebyshev-accelerated Newton–Schulz
doubling, products only (tensor-core friendly), with an a-priori residual bound.

Spectrum. G is the Gram of rows of norm <= 1, so the spectrum of A lies in ``[1, kappa]``,
``kappa = 1 + mu·m/d`` (``mmae_fast.series.kappa``), before any computation.

Derivation. Map ``[1, kappa]`` onto ``[-1, 1]`` by ``t(λ) = (kappa + 1 - 2λ)/(kappa - 1)``; λ = 0
goes to ``sigma = (kappa + 1)/(kappa - 1) > 1``. Among polynomials e of degree N with ``e(0) = 1``
the scaled Chebyshev polynomial ``e_N(λ) = T_N(t(λ)) / T_N(sigma)`` has the smallest maximum on
``[1, kappa]``: ``1/T_N(sigma)``. Write ``tau_N = T_N(sigma)``. From ``T_2N = 2 T_N² - 1``::

    e_2N = (2 tau_N² e_N² - 1) / (2 tau_N² - 1),      tau_2N = 2 tau_N² - 1

Take ``X`` with residual ``E = I - A X = e_N(A)``. Then ``I - A X' = e_2N(A)`` for
``A X' = I - e_2N(A) = w (I - E²) = w·A X (I + E)``, ``w = 2 tau_N²/(2 tau_N² - 1)``, so::

    X_0 = 2/(kappa + 1) · I                     (E_0 = e_1(A) = I - 2A/(kappa + 1), tau_1 = sigma)
    X_(k+1) = w_k · X_k (2I - A X_k),  w_k = 2 tau_k² / (2 tau_k² - 1),  tau_(k+1) = 2 tau_k² - 1

Newton–Schulz with Chebyshev weights (w_k > 1, → 1 as the residual shrinks): 2 products per
step, except the first, whose X_1 = w_0·X_0(2I - X_0 A) is ``a·I + b·A`` (no product). The
residual after K steps is exactly ``e_(2^K)(A)`` in exact arithmetic, so::

    ||I - A X_K||_2 <= 1/T_(2^K)(sigma) = 2 rho^N / (1 + rho^(2N)) <= 2 rho^N,  N = 2^K,
    rho = (sqrt(kappa) - 1)/(sqrt(kappa) + 1)        (T_N(sigma) = (rho^-N + rho^N)/2)

e.g. kappa 4: rho = 1/3, 4 steps give 4.6e-8; kappa 257: 7 steps give 2.3e-7. Cost: ``2(K - 1)``
products of n³ multiply-adds (``steps_for``: the K of a target). In floating point the step is
self-correcting (a perturbation δ of E enters the next residual as ``4 tau² E δ/(2 tau² - 1)``),
so the residual stops at a floor of a few ``u·kappa`` of the products' format
(``mmae_fast.ops.tcr.rounding``; tests/ops/test_doubling.py measures it per format).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

#: Most doublings ``steps_for`` chooses (2^40 is far beyond any kappa of a float64 spectrum).
MAX_STEPS = 40


def rho(kappa: float) -> float:
    """``(sqrt(kappa) - 1)/(sqrt(kappa) + 1)``: the Chebyshev convergence rate per degree."""
    if not kappa >= 1.0:
        raise ValueError(f"kappa must be >= 1, got {kappa}")
    s = math.sqrt(kappa)
    return (s - 1.0) / (s + 1.0)


def residual_bound(kappa: float, steps: int) -> float:
    """A-priori ``||I - A X_K||_2`` after ``steps`` = K doublings: ``1/T_(2^K)(sigma)``."""
    r = rho(kappa)
    if r == 0.0:
        return 0.0
    n = 2.0 ** int(steps)
    log_r = math.log(r)
    if n * -log_r > 700.0:  # below float64's range
        return 0.0
    return 2.0 * math.exp(n * log_r) / (1.0 + math.exp(2.0 * n * log_r))


def _smallest_steps(bound: Callable[[float, int], float], kappa: float, target: float) -> int:
    """Smallest K >= 1 with ``bound(kappa, K) <= target``."""
    if not target > 0.0:
        raise ValueError(f"target must be > 0, got {target}")
    for k in range(1, MAX_STEPS + 1):
        if bound(kappa, k) <= target:
            return k
    raise ValueError(f"target {target:g} needs more than {MAX_STEPS} doublings at kappa {kappa:g}")


def steps_for(kappa: float, target: float) -> int:
    """Smallest K >= 1 with ``residual_bound(kappa, K) <= target``."""
    return _smallest_steps(residual_bound, kappa, target)


def weights(kappa: float, steps: int) -> tuple[float, ...]:
    """``(w_0, ..., w_(K-1))``: the weight of each doubling (see the module docstring)."""
    if kappa == 1.0:
        return (1.0,) * int(steps)
    tau = (kappa + 1.0) / (kappa - 1.0)
    out = []
    for _ in range(int(steps)):
        out.append(1.0 if tau > 1e150 else 2.0 * tau * tau / (2.0 * tau * tau - 1.0))
        tau = min(2.0 * tau * tau - 1.0, 1e300)
    return tuple(out)


def inverse(a: Tensor, kappa: float, steps: int,
            mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> Tensor:
    """``X_K ≈ A⁻¹`` (n, n) for symmetric A (n, n) with spectrum in ``[1, kappa]``: K doublings,
    ``2(K - 1)`` calls of ``mm`` (``rounding.product`` with a format emulates tensor cores).
    Elementwise work runs in the dtype ``mm`` returns."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    w = weights(kappa, steps)
    alpha = 2.0 / (kappa + 1.0)
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    # X_1 = w_0 alpha (2I - alpha A): the first doubling needs no product
    x = (a * (-w[0] * alpha * alpha)).add_(eye, alpha=2.0 * w[0] * alpha)
    for wk in w[1:]:
        ax = mm(a, x)
        two_minus = torch.eye(a.shape[0], dtype=ax.dtype, device=ax.device).mul_(2.0).sub_(ax)
        x = mm(x, two_minus).mul_(wk)
    return x


# ----------------------------------------------------------------------------- complement form
def complement_bound(kappa: float, steps: int) -> float:
    """A-priori bound on the relative error of ``U_K`` (``complement``) per eigenvalue:
    ``|U_K(λ) - W(λ)| <= complement_bound · |W(λ)|``, ``W = 1 - 1/λ``.

    ``U_K - W = e_N(λ)/λ - e_N(1)`` (``U_K(1) = 0`` fixes ``beta_K = 1 - e_N(1)``), so the ratio is
    ``(e_N(λ) - e_N(1))/(λ - 1) - e_N(1)``; by the mean value theorem and Markov's inequality
    ``|T_N'| <= N²`` on [-1, 1]: ``<= (2N²/(kappa - 1) + 1)/T_N(sigma)``, N = 2^K."""
    if kappa == 1.0:
        return 0.0
    n = 2.0 ** int(steps)
    return (2.0 * n * n / (kappa - 1.0) + 1.0) * residual_bound(kappa, steps)


def complement_steps_for(kappa: float, target: float) -> int:
    """Smallest K >= 1 with ``complement_bound(kappa, K) <= target``."""
    return _smallest_steps(complement_bound, kappa, target)


def complement(y: Tensor, kappa: float, steps: int,
               mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> tuple[Tensor, float]:
    """``(U_K, beta_K)`` with ``X_K = beta_K·I - U_K`` the K-step doubling inverse of
    ``A = I + Y`` (Y (n, n) symmetric, spectrum in ``[0, kappa - 1]``): ``U_K ≈ W = I - A⁻¹ =
    A⁻¹Y``, ``2(K - 1)`` calls of ``mm``; beta_K a Python float.

    The same iteration as ``inverse``, written for the Y-sized part: in float32 ``A⁻¹`` is
    ``I`` plus a part as small as Y, whose digits a stored ``X`` loses (an absolute ``u·kappa``
    against ``||W||``); ``U`` keeps them (relative error ``complement_bound`` plus rounding).
    With ``S_k = beta_k Y - U_k - Y U_k`` (so that ``A X_k = beta_k I + S_k``)::

        U_1 = w_0 alpha² Y,                     beta_1 = w_0 alpha (2 - alpha)
        U_(k+1) = w_k (beta_k S_k + (2 - beta_k) U_k - U_k S_k),   beta_(k+1) = w_k beta_k (2 - beta_k)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    w = weights(kappa, steps)
    alpha = 2.0 / (kappa + 1.0)
    beta = w[0] * alpha * (2.0 - alpha)
    u = y * (w[0] * alpha * alpha)
    for wk in w[1:]:
        s = (y * beta).sub_(u).sub_(mm(y, u))
        u = (s * (wk * beta)).add_(u, alpha=wk * (2.0 - beta)).sub_(mm(u, s), alpha=wk)
        beta = wk * beta * (2.0 - beta)
    return u, beta
