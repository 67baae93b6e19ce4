"""Stage 2 of the staged TCR op: the n×n side, the only code that knows the estimators.

Input: the uncentred Gram ``G`` (n, n) of the normalised rows on one side ("feature": ``ZᵀZ``,
n = d; "sample": ``ZZᵀ``, n = m), the column sums ``s = 1ᵀZ`` (d,) when centring and the row count.
Everything here runs in float64 (on an H100 the float64 tensor-core rate is about the float32
SIMT rate, and float64 keeps every estimator's accuracy contract: the series' terms cancel by
~10³ at large kappa, which float32 cannot afford; cuSOLVER's float32 Cholesky is 8e-5 off).

Output, for ``R = -logdet(I + c·G_c)``, ``c = mu/d`` and ``P = dR/dG_c`` (symmetric)::

    feature:  G_c = G - s sᵀ/m                 dR/dZ = 2 (Z - 1 z̄ᵀ) P = Z Q' - 1 vᵀ
    sample:   G_c = J G J  (J = I - 11ᵀ/m)      dR/dZ = 2 (J P J) Z      = Q' Z

with ``z̄ = s/m``, ``Q' = 2P + alpha·I`` (feature) or ``2 JPJ + alpha·I`` (sample) and
``v = 2 P z̄``. The shift ``alpha = -tr(2P)/n`` changes nothing after the normalisation Jacobian
(``alpha·z_i`` is radial) but removes the radial bulk of ``Z Q'`` that a half-precision product
would otherwise round (tests/test_staged.py shows the error). ``Q = Q'/qscale`` with
``qscale = max|Q'|`` (so fp16 operands neither underflow nor overflow); the backward multiplies
its incoming gradient by ``qscale``.

Estimators (``mmae_fast.series`` holds the coefficients and bounds):

    exact:  L = chol(I + cG_c):  R = -2 Σ log diag L,  P = -c (I + cG_c)⁻¹
    series: M = s_k·G_c - I, s_k = 2c/(kappa - 1):  R = -Σ_k p_k tr T_k(M),
            P = -s_k Σ_j b_j T_j(M)  (b = the Chebyshev derivative of p)
    taylor: Y = cG_c:  R = -Σ_k a_k tr Y^k,  P = -c Σ_k k a_k Y^(k-1)

Traces of high terms come from ``tr(B_j B_l)`` Frobenius products of the basis kept up to
``q = ceil(D/2)``; the derivative polynomial needs one more product (``T_(q+r) = 2 T_q T_r -
T_(q-r)``, ``Y^(q+r) = Y^q Y^r``). No host synchronisation: a failed Cholesky or a non-finite
input gives R = NaN, never an exception, so the op can be captured in a CUDA graph.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings

import torch
from torch import Tensor

from .. import series

F64 = torch.float64


@functools.lru_cache(maxsize=512)
def _series_coefficients(kappa: float, degree: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(p, b)``: the series' Chebyshev coefficients and those of its derivative in t."""
    p = series.chebyshev_coefficients(kappa, degree)
    return p, series.chebyshev_derivative(p)


def _basis(first: Tensor, q: int, chebyshev: bool) -> list[Tensor]:
    """``[B_0 = I, B_1, ..., B_q]``: Chebyshev ``T_k(M)`` (first = M) or powers ``Y^k``."""
    eye = torch.eye(first.shape[0], dtype=first.dtype, device=first.device)
    basis = [eye, first]
    for _ in range(2, q + 1):
        if chebyshev:  # T_k = 2 M T_(k-1) - T_(k-2)
            basis.append(torch.addmm(basis[-2], first, basis[-1], beta=-1.0, alpha=2.0))
        else:
            basis.append(first @ basis[-1])
    return basis


def _traces(basis: list[Tensor], degree: int, chebyshev: bool) -> list[Tensor]:
    """``[tr B_0, ..., tr B_D]`` from the basis up to q = ceil(D/2) (symmetric B_k)."""
    q = len(basis) - 1
    tr = [b.diagonal().sum() for b in basis]
    for k in range(q + 1, degree + 1):
        j, l = k // 2, k - k // 2
        frob = (basis[j] * basis[l]).sum()
        tr.append(2.0 * frob - tr[l - j] if chebyshev else frob)  # T_(j+l) = 2 T_j T_l - T_|l-j|
    return tr[: degree + 1]


def _poly(basis: list[Tensor], coeffs, chebyshev: bool) -> Tensor:
    """``Σ_k coeffs[k] B_k`` for k up to 2q with one matrix product beyond the basis."""
    q = len(basis) - 1
    inner = torch.zeros_like(basis[0])
    outer = torch.zeros_like(basis[0])
    has_outer = False
    for k, w in enumerate(coeffs):
        if w == 0.0:
            continue
        if k <= q:
            inner = inner + w * basis[k]
        elif chebyshev:  # T_(q+r) = 2 T_q T_r - T_(q-r)
            r = k - q
            outer = outer + (2.0 * w) * basis[r]
            inner = inner - w * basis[q - r]
            has_outer = True
        else:            # Y^(q+r) = Y^q Y^r
            outer = outer + w * basis[k - q]
            has_outer = True
    return torch.addmm(inner, basis[q], outer) if has_outer else inner


def _logdet_and_derivative(y: Tensor, c: float, kappa: float, estimator: str, degree: int,
                           need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``(logdet(I + y), d logdet / d y)`` for symmetric PSD y = c·G_c (float64)."""
    n = y.shape[0]
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    if estimator == "exact":
        chol, info = torch.linalg.cholesky_ex(eye + y)
        logdet = 2.0 * chol.diagonal().log().sum()
        logdet = torch.where(info == 0, logdet, torch.full_like(logdet, math.nan))
        return logdet, (torch.cholesky_inverse(chol) if need_grad else None)
    q = max(1, math.ceil(degree / 2))
    if estimator == "series":
        scale = 2.0 / (kappa - 1.0)
        basis = _basis(y * scale - eye, q, chebyshev=True)
        p, b = _series_coefficients(float(kappa), int(degree))
        logdet = sum(pk * t for pk, t in zip(p, _traces(basis, degree, True)))
        return logdet, (scale * _poly(basis, b, True) if need_grad else None)
    if estimator == "taylor":
        a = (0.0,) + series.taylor_coefficients(degree)  # log(1+y) ≈ Σ a_k y^k
        basis = _basis(y, q, chebyshev=False)
        logdet = sum(ak * t for ak, t in zip(a, _traces(basis, degree, False)))
        deriv = [k * a[k] for k in range(1, degree + 1)]  # Σ k a_k y^(k-1)
        return logdet, (_poly(basis, deriv, False) if need_grad else None)
    raise ValueError(f"estimator must be 'exact', 'series' or 'taylor', got {estimator!r}")


def small_side(g: Tensor, colsum: Tensor, count: Tensor, *, mu: float, m: int, d: int,
               feature: bool, centering: bool, estimator: str, degree: int,
               need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(R, Q, v, qscale)`` from the Gram stage's outputs; see the module docstring.

    g: (n, n) uncentred Gram; colsum: (d,) or (0,); count: 0-d row count (a tensor, so that
    the distributed path needs no host sync); m: the row count used for kappa (an int upper
    bound: the series degree and Chebyshev interval come from it); d: feature width.
    R is a 0-d tensor in g's dtype; Q (n, n) and v (d,) or (0,) also in g's dtype (float32 for
    half and float32 inputs: the operands of the backward GEMM); qscale 0-d in g's dtype.
    Without ``need_grad`` Q, v are empty and qscale is 1.
    """
    out_dtype = g.dtype
    n = g.shape[0]
    c = float(mu) / d
    gc = g.to(F64)
    zbar = None
    if centering:
        cnt = count.to(F64)
        zbar = colsum.to(F64) / cnt
        if feature:  # G - s sᵀ/m = G - m z̄ z̄ᵀ
            gc = gc - torch.outer(zbar, zbar) * cnt
        else:        # J G J without a dense J
            row = gc.mean(dim=1, keepdim=True)
            gc = gc - row - row.mT + row.mean()
    kappa = series.kappa(mu, m, d)
    logdet, deriv = _logdet_and_derivative(c * gc, c, kappa, estimator, int(degree), need_grad)
    value = (-logdet).to(out_dtype)
    if estimator == "series":  # the only estimator whose polynomial depends on kappa
        # more rows than the kappa bound assumed (a distributed run with unequal shards) would put
        # the spectrum outside the series' interval: NaN, never a silently wrong value
        value = torch.where(count.to(F64) <= m, value, torch.full_like(value, math.nan))
    if not need_grad:
        empty = g.new_empty((0, 0))
        return value, empty, g.new_empty((0,)), g.new_ones(())
    p = -c * deriv  # dR/dG_c (symmetric)
    if centering and not feature:
        row = p.mean(dim=1, keepdim=True)
        p = p - row - row.mT + row.mean()  # J P J
    q = 2.0 * p
    q = q - (q.diagonal().sum() / n) * torch.eye(n, dtype=F64, device=g.device)
    v = 2.0 * (p @ zbar) if (centering and feature) else None
    qscale = q.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    # contiguous: cholesky_inverse returns a column-major matrix, and the op's fake kernel (and
    # the backward kernels) promise row-major
    q = (q / qscale).to(out_dtype).contiguous()
    v = (v / qscale).to(out_dtype) if v is not None else g.new_empty((0,))
    return value, q, v, qscale.to(out_dtype)


# ----------------------------------------------------------------------------- CUDA graphs
#: Environment switch: MMAE_FAST_SMALL_SIDE_GRAPH=0 runs the small side eagerly on CUDA too.
GRAPH_ENV = "MMAE_FAST_SMALL_SIDE_GRAPH"


@dataclasses.dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    static_in: tuple
    static_out: tuple


#: key -> the captured small side, or None where capturing failed (then it runs eagerly)
_GRAPHS: dict = {}


def _capture(fn, inputs):
    static_in = tuple(x.clone() for x in inputs)
    side = torch.cuda.Stream(device=inputs[0].device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (cuSOLVER / cuBLAS handles and workspaces)
        for _ in range(2):
            fn(*static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*static_in)
    return _Captured(graph, static_in, tuple(static_out))


def run_graphed(fn, inputs: tuple, key) -> tuple:
    """``fn(*inputs)`` replayed from a CUDA graph captured once per ``key`` (CUDA tensors only).

    The small side is 20 to 60 small kernels (n×n products, traces, a Cholesky): as one graph
    its CPU cost is one replay plus the copies in and out. Eager where the graph cannot help or
    cannot be made: CPU tensors, while an outer CUDA graph is being captured (the kernels join
    that graph), on a stream other than the default one (torch.compile's cudagraph trees warm up
    on a side stream into their own pool), with MMAE_FAST_SMALL_SIDE_GRAPH=0, or after a failed
    capture (warned once).
    Outputs are fresh tensors (cloned from the graph's static outputs).
    """
    if (not inputs[0].is_cuda or os.environ.get(GRAPH_ENV, "1") == "0"
            or torch.cuda.is_current_stream_capturing()
            or torch.cuda.current_stream(inputs[0].device)
            != torch.cuda.default_stream(inputs[0].device)):
        # a side stream: e.g. torch.compile's cudagraph trees warming up into their own memory
        # pool, which must not end up holding our graph's static buffers (seen on an H100)
        return fn(*inputs)
    if key not in _GRAPHS:
        try:
            _GRAPHS[key] = _capture(fn, inputs)
        except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly from now on
            _GRAPHS[key] = None
            warnings.warn(f"mmae_fast: the small side could not be captured as a CUDA graph "
                          f"({type(exc).__name__}: {exc}); it runs eagerly", RuntimeWarning)
    entry = _GRAPHS[key]
    if entry is None:
        return fn(*inputs)
    for static, x in zip(entry.static_in, inputs):
        static.copy_(x)
    entry.graph.replay()
    return tuple(out.clone() for out in entry.static_out)


def warn_if_taylor_diverges(estimator: str, mu: float, m: int, d: int) -> None:
    """Warn (at run time, not while tracing) when the Taylor series may diverge."""
    if estimator == "taylor" and not series.taylor_converges(mu, m, d):
        warnings.warn(
            f"estimator='taylor' may diverge: the spectral radius of mu/d·ZᵀZ can reach "
            f"mu·m/d = {mu * m / d:.3g} >= 1; use estimator='series' (converges for every input) "
            f"or a smaller mu", RuntimeWarning, stacklevel=4)
