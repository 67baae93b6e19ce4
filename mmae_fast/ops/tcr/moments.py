"""``logdet(I + Y)`` from Chebyshev moments ``<Y, T_k(M)>``: products only, accurate in float32-grade
arithmetic (tensor cores' split TF32), no factorisation.

Polynomial. ``mmae_fast.series`` gives the Chebyshev coefficients ``a_k`` of
``f(y) = log(1 + y)/y`` on ``[0, kappa - 1]`` (the spectrum of ``Y = c·G``); with
``M = beta·Y - I``, ``beta = 2/(kappa - 1)``::

    logdet(I + Y) ≈ tr(Y q(Y)) = Σ_{k<D} a_k <Y, T_k(M)>            (q = Σ_{k<D} a_k T_k)

the series estimator's polynomial ``P(y) = y·q(y)`` (``series.chebyshev_coefficients``), so the
a-priori relative bound ``series.relative_error_bound(kappa, D)`` holds for every input.

Why Y-weighted moments. The plain traces ``tr T_k(M)`` are of size n and cancel to ``logdet``
(``P(0) = 0``): stored in float32 they lose ``~u·n`` each, which at n = 1023 already misses a
1e-5 relative contract. ``<Y, T_k>`` is bounded by ``tr Y`` (``||T_k||_2 <= 1``), and an error
``δT`` of the stored basis enters as ``<Y, δT> <= tr(Y)·||δT||_2``: relative to
``logdet >= tr(Y)·log(kappa)/(kappa - 1)`` this does not grow with n
(tests/ops/test_moments.py measures it per format).

Baby steps / giant steps (products = ``Plan.products``). Baby basis ``T_0..T_s`` (s - 1 products,
``T_k = 2·beta·Y T_(k-1) - 2 T_(k-1) - T_(k-2)``: Y is the operand, never the rounded M); giants
``H_j = Y·T_(js)`` (j = 1..J; ``H_1 = Y T_s``, ``H_(j+1) = 2 T_s H_j - H_(j-1)``, ``H_0 = Y``),
J products. From ``T_(js+r) = 2 T_(js) T_r - T_(js-r)``::

    <Y, T_k>       = <Y, T_k>                              k <= s      (Frobenius, no product)
    <Y, T_(js)>    = tr H_j
    <Y, T_(js+r)>  = 2 <H_j, T_r> - <Y, T_(js-r)>          1 <= r <= s

Every moment is an O(n²) reduction of matrices already computed (on a GPU: the epilogue of the
product that writes them). ``s`` minimises ``s - 1 + J`` with ``(J + 1)·s >= D - 1``:
about ``2·sqrt(D)`` products where the float64 series builds ``D/2``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import torch
from torch import Tensor

from ... import series

#: a-priori relative truncation bound of the exact estimator's moment log-determinant: a tenth
#: of its 1e-5 contract, the rest left to rounding (measured below 3e-7, tests/ops/test_moments.py)
EXACT_TRUNCATION = 1e-6


@dataclasses.dataclass(frozen=True)
class Plan:
    """Degree D, baby steps s, giants J, and the ``products = s - 1 + J`` n×n products."""
    degree: int
    s: int
    giants: int

    @property
    def products(self) -> int:
        return self.s - 1 + self.giants


@functools.lru_cache(maxsize=512)
def plan(degree: int) -> Plan:
    """The cheapest (s, J) covering the moments ``k < degree`` (ties: the smaller s)."""
    degree = int(degree)
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    best = None
    for s in range(1, degree + 1):
        giants = max(0, math.ceil((degree - 1) / s) - 1)
        cand = Plan(degree, s, giants)
        if best is None or cand.products < best.products:
            best = cand
    return best


def exact_degree(kappa: float) -> int:
    """The exact estimator's degree: ``series.series_degree(kappa, EXACT_TRUNCATION)``."""
    return series.series_degree(float(kappa), EXACT_TRUNCATION)


def _frobenius(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b> = Σ a_ij b_ij`` accumulated in float64 (0-d)."""
    return torch.linalg.vecdot(a.reshape(-1).double(), b.reshape(-1).double())


def weights(kappa: float, degree: int) -> tuple[float, ...]:
    """``(a_0, ..., a_(D-1))``: the weights of the moments (``logdet ≈ Σ a_k <Y, T_k>``)."""
    return tuple(float(x) for x in series._f_chebyshev(float(kappa))[: int(degree)])


def moments(y: Tensor, kappa: float, degree: int,
            mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> Tensor:
    """``(<Y, T_k(M)>)_{k<D}`` (D,) float64 for symmetric Y (n, n) with spectrum in
    ``[0, kappa - 1]``: ``plan(degree).products`` calls of ``mm``; the basis stays in y's dtype
    (float32 for tensor-core products), the moments are accumulated in float64."""
    kappa = float(kappa)
    p = plan(degree)
    beta = 2.0 / (kappa - 1.0)
    s = p.s
    eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
    basis = [eye, (y * beta).sub_(eye)]  # T_0, T_1 = M
    for k in range(2, s + 1):  # T_k = 2·beta·Y T_(k-1) - 2 T_(k-1) - T_(k-2)
        basis.append(mm(y, basis[k - 1]).mul_(2.0 * beta).sub_(basis[k - 1], alpha=2.0)
                     .sub_(basis[k - 2]))
    out: list = [None] * p.degree
    for k in range(min(s, p.degree - 1) + 1):
        out[k] = _frobenius(y, basis[k])
    previous, giant = y, None
    for j in range(1, p.giants + 1):  # H_j = Y T_(js)
        nxt = mm(y, basis[s]) if j == 1 else mm(basis[s], giant).mul_(2.0).sub_(previous)
        previous, giant = (y if j == 1 else giant), nxt
        base = j * s
        if base < p.degree and out[base] is None:
            out[base] = giant.diagonal().double().sum()
        for r in range(1, s + 1):
            k = base + r
            if k < p.degree and out[k] is None:
                out[k] = 2.0 * _frobenius(giant, basis[r]) - out[base - r]
    return torch.stack(out)


def logdet(y: Tensor, kappa: float, degree: int,
           mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> Tensor:
    """``logdet(I + Y)`` (0-d float64) from ``moments`` and ``weights``."""
    w = torch.tensor(weights(kappa, degree), dtype=torch.float64, device=y.device)
    return torch.linalg.vecdot(w, moments(y, kappa, degree, mm))
