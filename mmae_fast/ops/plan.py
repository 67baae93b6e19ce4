"""The plan both kernel backends (cuda, triton) execute: the TCR as a recurrence of basis
matrices, Frobenius-product weights and the derivative polynomial, from ``mmae_fast.series``.

Plan (h: (m, d), c = mu/d, n = min(m, d); see ``mmae_fast.reference.tcr``)::

    x   = [J] normalize(h)                         (centring J optional; fp32, fp64 for fp64)
    Y0  = xᵀx (d <= m) or x xᵀ (m < d)             (n, n); for half h from x rounded to h's
                                                   dtype (tensor cores), fp32 accumulation
    B_0 = I,  B_1 = alpha·Y0 + beta·I,  B_k = gamma·B_1·B_(k-1) - delta·B_(k-2),  k = 2..q

    exact:  (alpha, beta) = (c, 1), q = 0:   R = -2 Σ log diag chol(B_1)
    taylor: (c, 0, 1, 0), B_k = (c·Y0)^k:    R = -Σ_k a_k <B_⌊k/2⌋, B_⌈k/2⌉>_F
    series: (s, -1, 2, 1), s = 2c/(kappa-1), B_k = T_k(M), M = s·Y0 - I:
            R = -Σ_k p_k tr T_k,  tr T_k = 2 <T_⌊k/2⌋, T_⌈k/2⌉>_F - tr T_(k mod 2)

so R is a weighted sum of Frobenius products ``<B_j, B_l>_F`` (B_0 = I). Backward:
``dR/dY0 = (scale/2)·P`` with P the derivative polynomial (exact: ``B_1⁻¹``), evaluated from the
saved basis with ONE matrix product, ``P = Σ_k inner_k B_k + B_q · Σ_k outer_k B_k``
(power basis: ``B_(q+r) = B_q B_r``; Chebyshev: ``T_(q+r) = 2 T_q T_r - T_(q-r)``); then
``dR/dx = scale·x·P`` (feature side) or ``scale·P·x`` (sample side), the centring projection
``J`` and the normalisation Jacobian ``(I - z_i z_iᵀ)/max(||h_i||, eps)``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .. import reference, series


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the ops compute for one (m, d, mu, estimator, degree); see the module docstring."""
    recurrence: tuple[float, float, float, float]  # alpha, beta, gamma, delta
    nbasis: int                                    # q; 0 for exact
    pair_j: tuple[int, ...]
    pair_l: tuple[int, ...]
    pair_w: tuple[float, ...]                      # R = Σ_t pair_w[t] <B_j[t], B_l[t]>_F
    scale: float                                   # dR/dx = scale · x P  (or P x)
    inner: tuple[float, ...]                       # P = Σ inner_k B_k + B_q Σ outer_k B_k
    outer: tuple[float, ...]


def _pairs(terms: list[tuple[int, int, float]]):
    """Merge (j, l, w) terms with equal (j, l) (j <= l), drop zero weights."""
    merged: dict[tuple[int, int], float] = {}
    for j, l, w in terms:
        key = (min(j, l), max(j, l))
        merged[key] = merged.get(key, 0.0) + w
    items = [(k, w) for k, w in merged.items() if w != 0.0]
    return (tuple(k[0] for k, _ in items), tuple(k[1] for k, _ in items),
            tuple(float(w) for _, w in items))


def _split(deriv, q: int, chebyshev: bool):
    """Weights (inner, outer) with Σ_k deriv_k B_k = Σ inner_k B_k + B_q Σ outer_k B_k.

    Needs len(deriv) <= 2q: every k > q is rewritten through B_q and B_(k-q)."""
    inner, outer = [0.0] * (q + 1), [0.0] * (q + 1)
    for k, b in enumerate(deriv):
        if k <= q:
            inner[k] += b
        elif chebyshev:  # T_k = 2 T_q T_r - T_(q-r)
            r = k - q
            outer[r] += 2.0 * b
            inner[q - r] -= b
        else:            # Y^k = Y^q Y^r
            outer[k - q] += b
    return tuple(inner), tuple(outer)


@functools.lru_cache(maxsize=256)
def make_plan(m: int, d: int, *, mu: float, estimator: str, degree: int) -> Plan:
    """The plan for an (m, d) input; ``degree`` as in ``mmae_fast.backends`` (0 for exact)."""
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be a finite number > 0, got {mu}")
    if m < 1 or d < 1:
        raise ValueError(f"the input must be a non-empty (m, d) matrix, got ({m}, {d})")
    c = float(mu) / d
    if estimator == "exact":
        return Plan((c, 1.0, 0.0, 0.0), 0, (), (), (), -2.0 * c, (), ())
    degree = int(degree) or reference.default_degree(estimator, series.kappa(mu, m, d))
    if degree < 1:
        raise ValueError(f"degree must be >= 1 for estimator={estimator!r}, got {degree}")
    q = math.ceil(degree / 2)
    if estimator == "taylor":
        a = (0.0,) + series.taylor_coefficients(degree)  # a[k] weighs tr(Y^k)
        terms = [(k // 2, (k + 1) // 2, -a[k]) for k in range(1, degree + 1)]
        deriv = [k * a[k] for k in range(1, degree + 1)]  # d/dy Σ a_k y^k, power basis
        inner, outer = _split(deriv, q, chebyshev=False)
        return Plan((c, 0.0, 1.0, 0.0), q, *_pairs(terms), -2.0 * c, inner, outer)
    if estimator == "series":
        kap = series.kappa(mu, m, d)
        p = series.chebyshev_coefficients(kap, degree)  # log(1+y) ≈ Σ p_k T_k(t)
        s = 2.0 * c / (kap - 1.0)                       # t = s·y0 - 1
        terms = [(0, 0, -p[0]), (0, 1, -p[1])]
        for k in range(2, degree + 1):
            terms += [(k // 2, (k + 1) // 2, -2.0 * p[k]), (0, k % 2, p[k])]
        deriv = np.polynomial.chebyshev.chebder(np.asarray(p, dtype=np.float64)).tolist()
        inner, outer = _split(deriv, q, chebyshev=True)
        return Plan((s, -1.0, 2.0, 1.0), q, *_pairs(terms), -2.0 * s, inner, outer)
    raise ValueError(f"estimator must be 'exact', 'series' or 'taylor', got {estimator!r}")
