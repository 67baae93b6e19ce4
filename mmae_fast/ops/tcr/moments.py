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
product that writes them); the recurrence is linear, so the log-determinant is one dot product of
host weights (``weights``) with the ``(J + 1)·(s + 1)`` raw reductions (``raw``). ``s`` minimises ``s - 1 + J`` with ``(J + 1)·s >= D - 1``:
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


def _frobenius(a64: Tensor, b64: Tensor) -> Tensor:
    """``<a, b_i>`` for every matrix b_i of b (K, n, n), both float64 already: one GEMV (K,)."""
    return b64.reshape(b64.shape[0], -1) @ a64.reshape(-1)


@functools.lru_cache(maxsize=512)
def _raw_map(degree: int) -> tuple[tuple[float, ...], ...]:
    """Row k: the moment ``<Y, T_k>`` as a combination of the raw reductions ``raw`` returns
    (layout ``(J + 1)·(s + 1)``: ``<Y, T_r>`` for j = 0, then ``tr H_j, <H_j, T_1..T_s>``),
    by the recurrence of the module docstring — host-side, so a call makes J + 1 batched
    reductions and one dot instead of one small op per moment."""
    p = plan(degree)
    s, width = p.s, (p.giants + 1) * (p.s + 1)
    rows: list = [None] * p.degree

    def unit(j: int, r: int) -> list:
        v = [0.0] * width
        v[j * (s + 1) + r] = 1.0
        return v

    for k in range(min(s, p.degree - 1) + 1):
        rows[k] = unit(0, k)
    for j in range(1, p.giants + 1):
        base = j * s
        if base < p.degree and rows[base] is None:
            rows[base] = unit(j, 0)
        for r in range(1, s + 1):
            k = base + r
            if k < p.degree and rows[k] is None:
                rows[k] = [2.0 * a - b for a, b in zip(unit(j, r), rows[base - r])]
    return tuple(tuple(r) for r in rows)


def raw(y: Tensor, kappa: float, degree: int,
        mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> Tensor:
    """The raw reductions ((J + 1)·(s + 1),) float64 of ``_raw_map`` for symmetric Y (n, n),
    spectrum in ``[0, kappa - 1]``: ``plan(degree).products`` calls of ``mm``; the basis stays in
    y's dtype (float32 for tensor-core products)."""
    kappa = float(kappa)
    p = plan(degree)
    beta = 2.0 / (kappa - 1.0)
    s = p.s
    eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
    basis = [eye, (y * beta).sub_(eye)]  # T_0, T_1 = M
    for k in range(2, s + 1):  # T_k = 2·beta·Y T_(k-1) - 2 T_(k-1) - T_(k-2)
        basis.append(mm(y, basis[k - 1]).mul_(2.0 * beta).sub_(basis[k - 1], alpha=2.0)
                     .sub_(basis[k - 2]))
    stack64 = torch.stack(basis).double()  # once: every giant's moments read it
    parts = [_frobenius(y.double(), stack64)]
    previous, giant = y, None
    for j in range(1, p.giants + 1):  # H_j = Y T_(js)
        nxt = mm(y, basis[s]) if j == 1 else mm(basis[s], giant).mul_(2.0).sub_(previous)
        previous, giant = (y if j == 1 else giant), nxt
        giant64 = giant.double()
        parts.append(giant64.diagonal().sum().reshape(1))
        parts.append(_frobenius(giant64, stack64[1:]))
    return torch.cat(parts)


def weights(kappa: float, degree: int) -> tuple[float, ...]:
    """The weights of ``raw`` whose dot product is ``Σ_k a_k <Y, T_k>`` (the log-determinant)."""
    a = series._f_chebyshev(float(kappa))[: int(degree)]
    rows = _raw_map(int(degree))
    return tuple(float(sum(float(ak) * row[i] for ak, row in zip(a, rows)))
                 for i in range(len(rows[0])))


def moments(y: Tensor, kappa: float, degree: int,
            mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> Tensor:
    """``(<Y, T_k(M)>)_{k<D}`` (D,) float64 (``_raw_map`` applied to ``raw``)."""
    rows = torch.tensor(_raw_map(int(degree)), dtype=torch.float64, device=y.device)
    return rows @ raw(y, kappa, degree, mm)


def logdet(y: Tensor, kappa: float, degree: int,
           mm: Callable[[Tensor, Tensor], Tensor] = torch.mm) -> Tensor:
    """``logdet(I + Y)`` (0-d float64): ``weights · raw``."""
    w = torch.tensor(weights(kappa, degree), dtype=torch.float64, device=y.device)
    return torch.linalg.vecdot(w, raw(y, kappa, degree, mm))
