"""Polynomial approximations of ``logdet(I + Y)`` for a symmetric PSD ``Y``: coefficients,
degrees and error bounds. Pure numbers (Python floats); the matrix evaluation lives in
``mmae_fast.reference`` and the kernels.

Taylor (MEC / Matrix-SSL style)::

    logdet(I + Y) ≈ Σ_{k=1..p} a_k tr(Y^k),   a_k = (-1)^(k+1) / k

converges only when the spectral radius of Y is below 1.

Convergence-safe series. For TCR, ``Y = c·G`` with ``c = mu/d`` and G the Gram of m rows of norm
at most 1, so the spectrum of Y lies in ``[0, kappa - 1]`` with ``kappa = 1 + mu·m/d`` before any
computation. We approximate ``f(y) = log(1 + y) / y`` on that interval by its truncated
Chebyshev series q (degree D - 1) and use ``P(y) = y·q(y)`` (degree D, ``P(0) = 0``)::

    logdet(I + Y) ≈ Σ_{k=0..D} p_k tr T_k(M),   M = 2Y/(kappa - 1) - I

with T_k the Chebyshev polynomials. Error bounds (eps_q = sup |f - q| on the interval, bounded by
the sum of the dropped Chebyshev coefficients of f)::

    |logdet - estimate| <= tr(Y) · eps_q                       (absolute, computable)
    |logdet - estimate| <= eps_q · (kappa - 1)/log(kappa) · logdet   (relative, a priori)

because log(1+y)/y is decreasing, so logdet >= tr(Y)·log(kappa)/(kappa - 1). The relative bound
holds for every input, collapsed or centred ones included, and shrinks geometrically with D at the
rate rho = (sqrt(kappa) - 1)/(sqrt(kappa) + 1) per degree.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

#: Largest polynomial degree ``series_degree`` will choose.
MAX_DEGREE = 512


def kappa(mu: float, m: int, d: int) -> float:
    """A-priori bound on the condition number of ``I + mu/d · G`` for m rows of norm <= 1."""
    return 1.0 + float(mu) * int(m) / int(d)


def taylor_coefficients(order: int) -> tuple[float, ...]:
    """``(a_1, ..., a_p)`` with ``log(1 + y) ≈ Σ a_k y^k``, ``a_k = (-1)^(k+1)/k``."""
    return tuple((-1.0) ** (k + 1) / k for k in range(1, int(order) + 1))


def taylor_converges(mu: float, m: int, d: int) -> bool:
    """True when the a-priori spectral radius ``mu·m/d`` of Y is below 1 (Taylor is safe)."""
    return kappa(mu, m, d) - 1.0 < 1.0


#: Scalars in, scalars out, numpy inside: under torch.compile these functions run while tracing
#: and their results enter the graph as constants (no graph break in a step calling tcr_loss).
_compile_constant = torch.compiler.assume_constant_result


@functools.lru_cache(maxsize=256)
def _f_chebyshev(kappa_: float) -> np.ndarray:
    """Chebyshev coefficients (to rounding) of f(y) = log(1+y)/y on y in [0, kappa-1]."""
    h = (kappa_ - 1.0) / 2.0
    n = 64
    while True:
        j = np.arange(n)
        t = np.cos(np.pi * (j + 0.5) / n)
        y = h * (t + 1.0)  # > 0 at every node
        f = np.log1p(y) / y
        phase = (np.arange(n)[:, None] * (2 * j + 1)) % (4 * n)  # exact argument reduction
        a = (2.0 / n) * (np.cos(np.pi * phase / (2 * n)) @ f)
        a[0] /= 2.0
        # converged once the last coefficients are at rounding level (they decay geometrically)
        if np.max(np.abs(a[-8:])) < 1e-14 * np.max(np.abs(a)) or n >= 1 << 12:
            return a
        n *= 2


def _check_interval(kappa_: float) -> None:
    """The series needs a non-empty interval [0, kappa - 1]."""
    if not kappa_ > 1.0:
        raise ValueError(
            f"mu·m/d = {kappa_ - 1.0:g} is below float64 resolution (kappa = 1): the series' "
            f"interval is empty; use a larger mu or estimator='taylor' / 'exact'")


def chebyshev_error(kappa_: float, degree: int) -> float:
    """eps_q: bound on sup |f - q| for the degree-``degree`` P (q has degree ``degree - 1``)."""
    a = _f_chebyshev(float(kappa_))
    return float(np.sum(np.abs(a[int(degree):]))) + 1e-16


def relative_error_bound(kappa_: float, degree: int) -> float:
    """A-priori bound on ``|logdet - estimate| / logdet`` for every input (see module doc)."""
    return chebyshev_error(kappa_, degree) * (kappa_ - 1.0) / math.log(kappa_)


@_compile_constant
def series_degree(kappa_: float, tol: float) -> int:
    """Smallest degree D >= 1 whose a-priori relative error bound is <= ``tol``."""
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    _check_interval(kappa_)
    for degree in range(1, MAX_DEGREE + 1):
        if relative_error_bound(kappa_, degree) <= tol:
            return degree
    raise ValueError(f"tol={tol:g} needs a series degree above {MAX_DEGREE} at kappa={kappa_:g}; "
                     f"use a larger tol or estimator='exact'")


@_compile_constant  # O(degree) on top of the cached _f_chebyshev
def chebyshev_coefficients(kappa_: float, degree: int) -> tuple[float, ...]:
    """``(p_0, ..., p_D)``: ``log(1+y) ≈ P(y) = Σ p_k T_k(t)``, ``t = 2y/(kappa-1) - 1``.

    ``P(y) = y·q(y)`` with q the degree D-1 truncated Chebyshev series of log(1+y)/y, so
    ``P(0) = 0``. Uses ``y = h·(1 + t)``, ``h = (kappa-1)/2`` and ``t·T_k = (T_{k+1} + T_|k-1|)/2``.
    """
    degree = int(degree)
    if degree < 1:
        raise ValueError(f"series degree must be >= 1, got {degree}")
    _check_interval(float(kappa_))
    a = _f_chebyshev(float(kappa_))[:degree]
    h = (float(kappa_) - 1.0) / 2.0
    p = np.zeros(degree + 1)
    for k, ak in enumerate(a):
        p[k] += h * ak
        p[k + 1] += h * ak / 2.0
        p[abs(k - 1)] += h * ak / 2.0
    return tuple(float(x) for x in p)


def chebyshev_derivative(coeffs) -> tuple[float, ...]:
    """Coefficients of ``d/dt Σ_k c_k T_k(t)`` in the Chebyshev basis (degree one lower).

    From ``T_k' = k·U_(k-1)`` and ``U_j = 2 Σ T_(j-2i) - [j even]``: the backward recurrence
    ``b_(k-1) = b_(k+1) + 2k·c_k``, with ``b_0`` halved. Plain Python (no numpy), so that it
    also runs where tracing would object.
    """
    c = [float(x) for x in coeffs]
    deg = len(c) - 1
    if deg < 1:
        return (0.0,)
    b = [0.0] * (deg + 1)  # b[deg] stays 0; b[deg - 1] = 2·deg·c[deg]
    for k in range(deg, 0, -1):
        b[k - 1] = (b[k + 1] if k + 1 <= deg else 0.0) + 2.0 * k * c[k]
    b[0] /= 2.0
    return tuple(b[:deg])
