"""Stage 2 of the staged TCR op: the n×n side, the only code that knows the estimators.

Input: the Gram ``G_c`` (n, n) of the normalised rows on one side ("feature": ``ZᵀZ``, n = d;
"sample": ``ZZᵀ``, n = m) — of the centred rows ``Z - 1z̄ᵀ`` when centring (stage 1 centres the
operand, ``stages.centred_gram``: centring the product afterwards cancels catastrophically
for rows close to one direction) —, the column sums ``s = 1ᵀZ`` (d,) when centring and the row
count. By default everything here runs in float64: stored as ``I + (small)``, float32 loses the
small part's digits (the series' plain traces cancel by ~10³ at large kappa; a float32 Cholesky
misses the exact estimator's 1e-5), and on Hopper float64 products cost about what float32 SIMT
ones do (bench/NOTES.md). ``MMAE_FAST_SMALL_PRODUCTS`` selects the products-only form
(``_products_side``), whose stored matrices are all as small as ``Y = c·G_c``, so that
float32-grade tensor-core products keep the contracts (docs/staged.md); on the CPU the exact
gradient of float32 input takes ``W = I - A⁻¹`` in float32 from the float64 factor by the same
rule (``cpu.float32_complement``). Such a derivative ``a·W + b·I`` is a ``Complement``: on the
CPU, Q and the shift come from W alone.

Output, for ``R = -logdet(I + c·G_c)``, ``c = mu/d`` and ``P = dR/dG_c`` (symmetric)::

    feature:  dR/dZ = 2 (Z - 1 z̄ᵀ) P = Z Q' - 1 vᵀ
    sample:   dR/dZ = 2 (J P J) Z      = Q' Z          (J = I - 11ᵀ/m, never dense)

with ``z̄ = s/m``, ``Q' = 2P + alpha·I`` (feature) or ``2 JPJ + alpha·I`` (sample) and
``v = 2 P z̄``. The shift ``alpha = -tr(2P)/n`` changes nothing after the normalisation Jacobian
(``alpha·z_i`` is radial) but removes the radial bulk of ``Z Q'`` that a half-precision product
would otherwise round (tests/ops/test_staged.py shows the error). ``Q = Q'/qscale``, ``v/qscale``
with ``qscale = max(|Q'|, |v|)`` (so fp16 operands neither underflow nor overflow). The op returns
``qinfo = [qscale, alpha]``; the backward multiplies it by its incoming gradient and hands the
pair to the grad stage, which scales by the first and removes ``alpha·z_i`` from the rows it does
not project (``||h_i|| <= EPS``: there the shift is not radial-and-removed).

Estimators (``mmae_fast.series`` holds the coefficients and bounds):

    exact:  L = chol(I + cG_c):  R = -2 Σ log diag L,  P = -c (I + cG_c)⁻¹ = -c L⁻ᵀ L⁻¹
            (with ``MMAE_FAST_EXACT_INVERSE=doubling``: the inverse by products only,
            ``mmae_fast.ops.tcr.doubling``, residual bound ``DOUBLING_TARGET`` a priori)
    series: M = s_k·G_c - I, s_k = 2c/(kappa - 1):  R = -Σ_k p_k tr T_k(M),
            P = -s_k Σ_j b_j T_j(M)  (b = the Chebyshev derivative of p)
    taylor: Y = cG_c:  R = -Σ_k a_k tr Y^k,  P = -c Σ_k k a_k Y^(k-1)

Traces of high terms come from ``tr(B_j B_l)`` Frobenius products of the basis kept up to
``q = ceil(D/2)``; the derivative polynomial needs one more product (``T_(q+r) = 2 T_q T_r -
T_(q-r)``, ``Y^(q+r) = Y^q Y^r``). The basis lives in one (q+1, n, n) buffer and every linear
combination (traces, log-determinant, derivative) is one fused product with host-computed
weights (``_Weights``), so that element-wise passes over n² numbers stay few. No host
synchronisation: a failed Cholesky or a non-finite input gives R = NaN, never an exception, so
the op can be captured in a CUDA graph (``graph_cache``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
import warnings

import torch
from torch import Tensor

from ... import series
from . import cpu, cpu_native, doubling, moments, rounding
from .graph_cache import GraphCache

F64 = torch.float64

#: the captured graphs and device constants of this stage (one object: ``graph_cache``)
CACHE = GraphCache()

#: Environment switch of the exact estimator's inverse: "cholesky" (default: from the factor) or
#: "doubling" (Newton–Schulz doubling, products only: ``mmae_fast.ops.tcr.doubling``).
INVERSE_ENV = "MMAE_FAST_EXACT_INVERSE"
INVERSES = ("cholesky", "doubling")
#: A-priori residual ``||I - A X||_2`` the doubling inverse is run to (float64 products: the
#: measured residual stops at a few kappa·u_64·sqrt(n), tests/ops/test_doubling.py).
DOUBLING_TARGET = 1e-12


#: Environment switch of stage 2's n×n arithmetic for float32 and half inputs: "float64"
#: (float64 products, LAPACK / cuSOLVER Cholesky) or the format of products-only forms
#: (``rounding.FORMATS``: "tf32x3" split TF32 tensor-core products, "float32", "bf16x3"): the
#: exact log-determinant from ``moments``, its gradient from ``doubling.complement``, the series
#: on the ``_s_polynomial`` basis, Taylor on the powers of Y — every stored matrix as small as
#: Y, so float32-grade products keep the contracts (tests/ops/test_small_products.py). Float64
#: input always runs the float64 side. Unset: ``products_choice``'s defaults.
PRODUCTS_ENV = "MMAE_FAST_SMALL_PRODUCTS"
PRODUCTS = ("float64", "float32", "tf32x3", "bf16x3")
#: a-priori relative bound of the exact gradient's complement (``doubling.complement_bound``)
COMPLEMENT_TARGET = 1e-7


class Complement(typing.NamedTuple):
    """A derivative ``q = a·w + b·I`` (n, n) kept as its small part w (float32: the products
    side's complement, the cpu backend's float32 form) and two numbers. The identity part
    never reaches Q (the radial shift removes it), so ``small_side`` takes Q and the shift from
    w alone, in w's dtype, where it does not centre, on the CPU (``_shift_and_scale``: fewer
    passes over n×n numbers; on a GPU, where its extra small launches cost more than those
    passes, bench/cost_model.py, and with centring, it is made dense in float64)."""
    w: Tensor
    a: float
    b: float

    def dense(self) -> Tensor:
        """``q = a·w + b·I`` in float64."""
        q = self.w.to(F64).mul_(self.a)
        q.diagonal().add_(self.b)
        return q


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The value of environment variable ``name`` (unset or empty: ``choices[0]``); a ValueError
    naming the variable and the choices otherwise."""
    value = os.environ.get(name, "").strip() or choices[0]
    if value not in choices:
        raise ValueError(f"environment variable {name}={value!r}: use one of {choices} "
                         f"or unset it")
    return value


#: The estimators whose products-only form is the CPU default: their n×n work is products
#: alone, which float32 GEMMs do faster than float64 ones, and it keeps their contracts
#: (tests/ops/test_small_products.py). The exact estimator keeps LAPACK's float64 Cholesky.
CPU_FLOAT32_ESTIMATORS = ("series", "taylor")


def products_choice(device_type: str = "cuda", estimator: str = "exact") -> str:
    """The stage-2 product format: the one ``MMAE_FAST_SMALL_PRODUCTS`` names; unset, "float32"
    for ``CPU_FLOAT32_ESTIMATORS`` on CPU tensors and "float64" otherwise."""
    if os.environ.get(PRODUCTS_ENV, "").strip():
        return _env_choice(PRODUCTS_ENV, PRODUCTS)
    return "float32" if device_type == "cpu" and estimator in CPU_FLOAT32_ESTIMATORS else "float64"


def inverse_choice() -> str:
    """The exact estimator's inverse named by ``MMAE_FAST_EXACT_INVERSE`` (default "cholesky")."""
    return _env_choice(INVERSE_ENV, INVERSES)


@dataclasses.dataclass(frozen=True)
class Constants:
    """Every Python number stage 2 computes with; ``small_side`` receives nothing else, so this
    is also what a captured CUDA graph of it depends on (``graph_cache.graph_key``).

    c = mu/d; kappa = 1 + mu·m/d, the spectrum bound (series only, else 0); max_rows: the row
    count kappa assumes, checked against the summed count (series with a group, else 0); rows:
    the exact row count that divides the column sums (centring on the feature side without a
    group, else 0); degree: the series degree / Taylor order (0 for exact); inverse: the exact
    estimator's inverse ("cholesky" or "doubling", whose step count needs kappa too); products:
    the n×n arithmetic (``PRODUCTS``; the exact estimator's products-only form needs kappa too);
    float32_inverse: the exact gradient may take float32 products on the CPU for non-float64
    input (kappa <= ``cpu.FLOAT32_INVERSE_KAPPA``: ``cpu.exact_derivative``)."""
    c: float
    estimator: str
    degree: int
    kappa: float
    max_rows: int
    rows: int
    feature: bool
    centering: bool
    need_grad: bool
    inverse: str = "cholesky"
    products: str = "float64"
    float32_inverse: bool = False

    @classmethod
    def of(cls, *, mu: float, m: int, d: int, feature: bool, centering: bool, estimator: str,
           degree: int, need_grad: bool, grouped: bool, inverse: str = "cholesky",
           products: str = "float64") -> "Constants":
        """The constants of one call: m enters only where the numbers use it, so graphs of the
        exact (with its Cholesky inverse) and Taylor estimators serve every batch size."""
        doubled = estimator == "exact" and inverse == "doubling" and bool(need_grad)
        tensor_side = products != "float64"
        uses_kappa = estimator == "series" or doubled or (tensor_side and estimator == "exact")
        return cls(c=float(mu) / d, estimator=estimator,
                   degree=int(degree) if estimator != "exact" else 0,
                   kappa=series.kappa(mu, m, d) if uses_kappa else 0.0,
                   max_rows=m if uses_kappa and grouped else 0,
                   rows=m if centering and feature and not grouped else 0,
                   feature=bool(feature), centering=bool(centering), need_grad=bool(need_grad),
                   # float64 input runs the float64 side, with its inverse, whatever products
                   inverse="doubling" if doubled else "cholesky",
                   products=str(products),
                   float32_inverse=(estimator == "exact" and not doubled and bool(need_grad)
                                    and series.kappa(mu, m, d) <= cpu.FLOAT32_INVERSE_KAPPA))


@functools.lru_cache(maxsize=512)
def _series_coefficients(kappa: float, degree: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(p, b)``: the series' Chebyshev coefficients and those of its derivative in t."""
    p = series.chebyshev_coefficients(kappa, degree)
    return p, series.chebyshev_derivative(p)


@dataclasses.dataclass(frozen=True)
class _Weights:
    """Host-side weights that turn the basis ``B_0..B_q`` (Chebyshev ``T_k(M)`` or powers
    ``Y^k``) into the log-determinant and its derivative with a few fused reductions::

        logdet = Σ_k w_diag[k] tr B_k + Σ_a w_self[a] <B_a, B_a> + Σ_a w_cross[a] <B_a, B_(a+1)>
        deriv  = Σ_k w_inner[k] B_k + B_q · Σ_k w_outer[k] B_k

    (traces of terms above q from ``tr T_(j+l) = 2<T_j, T_l> - tr T_|l-j|`` / ``<Y^j, Y^l>``;
    terms above q of the derivative from ``T_(q+r) = 2 T_q T_r - T_(q-r)`` / ``Y^q Y^r``).
    ``a`` runs over ``self_lo.. self_lo + len(w_self) - 1`` (and ``cross_lo..``).
    """
    q: int
    w_diag: tuple
    self_lo: int
    w_self: tuple
    cross_lo: int
    w_cross: tuple
    w_inner: tuple
    w_outer: tuple

    @property
    def has_outer(self) -> bool:
        return any(self.w_outer)


@functools.lru_cache(maxsize=512)
def _weights(estimator: str, kappa: float, degree: int, deriv_factor: float) -> _Weights:
    """The ``_Weights`` of "series" / "taylor" at (kappa, degree); the derivative weights are
    multiplied by ``deriv_factor`` (so that the caller gets 2·dR/dG directly)."""
    chebyshev = estimator == "series"
    q = max(1, math.ceil(degree / 2))
    if chebyshev:
        log_c, der_c = _series_coefficients(kappa, degree)  # in t = 2y/(kappa-1) - 1
        der_c = tuple(x * 2.0 / (kappa - 1.0) for x in der_c)  # d/dy = 2/(kappa-1) · d/dt
    else:
        log_c = (0.0,) + series.taylor_coefficients(degree)
        der_c = tuple(k * log_c[k] for k in range(1, degree + 1))  # Σ k a_k y^(k-1)
    w_diag = [0.0] * (q + 1)
    pairs: dict = {}
    for k, w in enumerate(log_c):
        if k <= q:
            w_diag[k] += w
            continue
        j, l = k // 2, k - k // 2
        pairs[(j, l)] = pairs.get((j, l), 0.0) + (2.0 * w if chebyshev else w)
        if chebyshev:
            w_diag[l - j] -= w
    selfs = sorted(j for j, l in pairs if j == l)
    crosses = sorted(j for j, l in pairs if j != l)
    inner, outer = [0.0] * (q + 1), [0.0] * (q + 1)
    for k, w in enumerate(der_c):
        w *= deriv_factor
        if k <= q:
            inner[k] += w
        elif chebyshev:
            outer[k - q] += 2.0 * w
            inner[2 * q - k] -= w
        else:
            outer[k - q] += w
    lo_s = selfs[0] if selfs else 0
    lo_c = crosses[0] if crosses else 0
    w_self = [0.0] * (selfs[-1] - lo_s + 1 if selfs else 0)
    w_cross = [0.0] * (crosses[-1] - lo_c + 1 if crosses else 0)
    for (j, l), w in pairs.items():
        if j == l:
            w_self[j - lo_s] += w
        else:
            w_cross[j - lo_c] += w
    return _Weights(q, tuple(w_diag), lo_s, tuple(w_self), lo_c, tuple(w_cross), tuple(inner),
                    tuple(outer))


def _combine(weights, mats: Tensor) -> Tensor:
    """``Σ_k weights[k] mats[k]`` for a (K, ...) tensor: one fused product when the weights are
    on the device, else a loop of in-place axpys."""
    w = CACHE.device_constant(weights, mats)
    if w is not None:
        return torch.tensordot(w, mats, dims=1)
    out = torch.zeros_like(mats[0])
    for k, wk in enumerate(weights):
        if wk != 0.0:
            out.add_(mats[k], alpha=wk)
    return out


def _polynomial(first: Tensor, w: _Weights, chebyshev: bool, need_grad: bool, mm=None):
    """``(logdet, deriv or None)`` of the basis built on ``first`` (M or Y), see ``_Weights``;
    ``mm``: the product of the powers of Y (Taylor on ``_products_side``), else torch's in
    first's dtype. Traces and Frobenius products are accumulated in float64."""
    n, q = first.shape[0], w.q
    buf = first.new_empty((q + 1, n, n))  # B_0 .. B_q
    buf[0].zero_()
    buf[0].diagonal().fill_(1.0)
    buf[1].copy_(first)
    for k in range(2, q + 1):
        if mm is not None:
            buf[k].copy_(mm(first, buf[k - 1]))
        elif chebyshev:  # T_k = 2 M T_(k-1) - T_(k-2)
            torch.addmm(buf[k - 2], first, buf[k - 1], beta=-1.0, alpha=2.0, out=buf[k])
        else:
            torch.mm(first, buf[k - 1], out=buf[k])
    parts, weights = [buf.diagonal(dim1=1, dim2=2).to(F64).sum(-1)], list(w.w_diag)
    if w.w_self:
        a = buf[w.self_lo: w.self_lo + len(w.w_self)].to(F64)
        parts.append(torch.linalg.vector_norm(a, dim=(1, 2)).square())
        weights += w.w_self
    if w.w_cross:
        a = buf[w.cross_lo: w.cross_lo + len(w.w_cross)].to(F64)
        b = buf[w.cross_lo + 1: w.cross_lo + 1 + len(w.w_cross)].to(F64)
        parts.append((a * b).sum(dim=(1, 2)))
        weights += w.w_cross
    logdet = _combine(weights, torch.cat(parts))
    if not need_grad:
        return logdet, None
    deriv = _combine(w.w_inner, buf)
    if w.has_outer:
        outer = _combine(w.w_outer, buf)
        deriv = deriv.add_(mm(buf[q], outer)) if mm is not None else torch.addmm(deriv, buf[q], outer)
    return logdet, deriv


def _logdet_and_derivative(gc: Tensor, c: float, kappa: float, estimator: str, degree: int,
                           need_grad: bool, inverse: str = "cholesky",
                           float32_grade: bool = False) -> tuple[Tensor, Tensor | None]:
    """``(logdet(I + y), -2c · d logdet / d y)`` for y = c·G_c, G_c symmetric PSD (float64;
    ``gc`` is overwritten); ``float32_grade``: the CPU's exact derivative may use float32
    products (``cpu.exact_derivative``, then a ``Complement``)."""
    if estimator == "exact":
        y = gc.mul_(c)
        y.diagonal().add_(1.0)
        chol, info = torch.linalg.cholesky_ex(y)
        logdet = torch.where(info == 0, chol.diagonal().log().sum(), math.nan).mul_(2.0)
        if not need_grad:
            return logdet, None
        if inverse == "doubling":  # spectrum of y = I + cG_c in [1, kappa]
            steps = doubling.steps_for(kappa, DOUBLING_TARGET)
            return logdet, doubling.inverse(y, kappa, steps).mul_(-2.0 * c)
        if not y.is_cuda:  # LAPACK's potri, or W = I - A⁻¹ in float32 for float32 input: cpu.py
            return logdet, cpu.exact_derivative(chol, c, float32_grade)
        # (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹ from one triangular solve and one product (on CUDA cheaper than
        # cholesky_inverse: bench/primitives.py)
        eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
        inv_l = torch.linalg.solve_triangular(chol, eye, upper=False)
        return logdet, (inv_l.mT @ inv_l).mul_(-2.0 * c)
    if estimator == "series":
        # the weights first: they refuse an empty interval (kappa = 1) with a clear error
        weights = _weights("series", float(kappa), int(degree), -2.0 * c)
        y = gc.mul_(c * 2.0 / (kappa - 1.0))  # M = 2y/(kappa-1) - I
        y.diagonal().sub_(1.0)
        return _polynomial(y, weights, True, need_grad)
    if estimator == "taylor":
        return _polynomial(gc.mul_(c), _weights("taylor", 0.0, int(degree), -2.0 * c), False,
                           need_grad)
    raise ValueError(f"estimator must be 'exact', 'series' or 'taylor', got {estimator!r}")


# ----------------------------------------------------------------------------- products only
@dataclasses.dataclass(frozen=True)
class _SWeights:
    """Host-side weights of the series on the Y-sized basis ``S_k = T_k(M) - (-1)^k I``
    (``S_0 = 0``, ``S_1 = beta·Y``; ``_s_polynomial``)::

        logdet = Σ_k w_diag[k] tr S_k + Σ_(j,l) w_pair[(j, l)] <S_j, S_l>
        deriv  = ident·I + Σ_k w_inner[k] S_k + S_q · Σ_r w_outer[r] S_r

    From ``T_(j+l) = 2 T_j T_l - T_(l-j)`` (``j <= l``) on the S basis::

        tr S_(j+l) = 2<S_j, S_l> + 2(-1)^l tr S_j + 2(-1)^j tr S_l - tr S_(l-j)
        S_(q+r)    = 2 S_q S_r + 2(-1)^r S_q + 2(-1)^q S_r - S_(q-r)

    and ``Σ_k p_k (-1)^k = P(0) = 0``: the log-determinant has no ``n``-sized term; ``ident =
    Σ_k b_k (-1)^k`` carries the derivative's identity part exactly."""
    q: int
    w_diag: tuple
    pairs: tuple  # ((j, l, weight), ...)
    ident: float
    w_inner: tuple
    w_outer: tuple


@functools.lru_cache(maxsize=512)
def _s_weights(kappa: float, degree: int, deriv_factor: float) -> _SWeights:
    """The ``_SWeights`` of the series at (kappa, degree), derivative times ``deriv_factor``."""
    q = max(1, math.ceil(degree / 2))
    log_c, der_c = _series_coefficients(kappa, degree)
    der_c = tuple(x * 2.0 / (kappa - 1.0) * deriv_factor for x in der_c)
    sign = lambda k: -1.0 if k % 2 else 1.0  # noqa: E731
    w_diag = [0.0] * (q + 1)
    pairs: dict = {}

    def trace(k: int, w: float) -> None:  # add w · tr S_k
        if k <= q:
            w_diag[k] += w
            return
        j, l = k // 2, k - k // 2
        pairs[(j, l)] = pairs.get((j, l), 0.0) + 2.0 * w
        trace(j, 2.0 * sign(l) * w)
        trace(l, 2.0 * sign(j) * w)
        trace(l - j, -w)

    for k, w in enumerate(log_c):
        trace(k, w)
    inner, outer = [0.0] * (q + 1), [0.0] * (q + 1)
    ident = 0.0
    for k, w in enumerate(der_c):
        ident += sign(k) * w
        if k <= q:
            inner[k] += w
            continue
        r = k - q
        outer[r] += 2.0 * w
        inner[q] += 2.0 * sign(r) * w
        inner[r] += 2.0 * sign(q) * w
        inner[q - r] -= w
    return _SWeights(q, tuple(w_diag), tuple((j, l, w) for (j, l), w in sorted(pairs.items())),
                     ident, tuple(inner), tuple(outer))


def _s_polynomial(y: Tensor, kappa: float, w: _SWeights, need_grad: bool, mm):
    """``(logdet, deriv or None)`` of the series on the S basis (``_SWeights``): ``q - 1``
    products for the basis, one more for the derivative; S_k kept in y's dtype, traces and
    Frobenius products in float64, deriv returned in float64."""
    beta = 2.0 / (kappa - 1.0)
    basis = [torch.zeros_like(y), y * beta]
    for k in range(2, w.q + 1):  # S_k = 2 beta Y S_(k-1) - 2 S_(k-1) - S_(k-2) ± 2 beta Y
        sk = mm(y, basis[k - 1]).mul_(2.0 * beta).sub_(basis[k - 1], alpha=2.0).sub_(basis[k - 2])
        basis.append(sk.add_(y, alpha=2.0 * beta * (-1.0 if k % 2 == 0 else 1.0)))
    stack = torch.stack(basis)
    parts = [stack.diagonal(dim1=1, dim2=2).double().sum(-1)]
    weights = list(w.w_diag)
    if w.pairs:
        left = torch.stack([basis[j] for j, _, _ in w.pairs]).double()
        right = torch.stack([basis[l] for _, l, _ in w.pairs]).double()
        parts.append((left * right).sum(dim=(1, 2)))
        weights += [x for _, _, x in w.pairs]
    logdet = _combine(weights, torch.cat(parts))
    if not need_grad:
        return logdet, None
    deriv = _combine(w.w_inner, stack)
    if any(w.w_outer):
        deriv = deriv.add_(mm(basis[w.q], _combine(w.w_outer, stack)))
    deriv = deriv.double()
    deriv.diagonal().add_(w.ident)
    return logdet, deriv


def product_function(fmt: str, device: torch.device):
    """``mm(a, b)`` of stage 2 in format ``fmt``: torch's float32 GEMM for "float32" (refused on
    CUDA while TF32 is allowed for float32 matmuls); for "tf32x3" on a GPU the Triton kernel's
    symmetric mode (every product here is of two polynomials in Y); else the emulation
    ``rounding.product`` (exact roundings of the format on any device: its operands are already
    rounded, so a TF32 setting does not change them)."""
    if fmt == "float32":
        if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            raise ValueError(f"{PRODUCTS_ENV}=float32 needs IEEE float32 products, but "
                             f"torch.backends.cuda.matmul.allow_tf32 is on (its products would be "
                             f"single TF32); use {PRODUCTS_ENV}=tf32x3 or turn TF32 off")
        return torch.mm
    if fmt == "tf32x3" and device.type == "cuda":
        try:
            from .triton import small_kernel
        except ImportError:
            small_kernel = None
        if small_kernel is not None:
            return small_kernel.symmetric_mm
    return functools.partial(rounding.product, fmt=fmt)


def product_count(estimator: str, kappa: float, degree: int, need_grad: bool) -> int:
    """The n×n products ``_products_side`` makes: exact ``moments.plan(exact_degree).products``
    (+ ``2(K - 1)`` for the gradient, ``K = doubling.complement_steps_for(kappa,
    COMPLEMENT_TARGET)``); series ``q - 1`` basis products of ``_s_weights`` (+ 1 for the
    derivative's ``S_q·Σ w_outer S_r``); Taylor ``q - 1`` of ``_weights`` (+ 1 where its
    ``w_outer`` is nonzero)."""
    if estimator == "exact":
        count = moments.plan(moments.exact_degree(kappa)).products
        if need_grad:
            count += 2 * (doubling.complement_steps_for(kappa, COMPLEMENT_TARGET) - 1)
        return count
    if estimator == "series":
        w = _s_weights(float(kappa), int(degree), 1.0)
        outer = any(w.w_outer)
    elif estimator == "taylor":
        w = _weights("taylor", 0.0, int(degree), 1.0)
        outer = w.has_outer
    else:
        raise ValueError(f"estimator must be 'exact', 'series' or 'taylor', got {estimator!r}")
    return w.q - 1 + int(bool(need_grad) and outer)


def _products_side(g: Tensor, k: Constants) -> tuple[Tensor, Tensor | None]:
    """``(logdet(I + y), -2c · d logdet / d y or None)`` for y = c·G_c, with every n×n product
    in format ``k.products`` (``PRODUCTS_ENV``); g (n, n) float32. The log-determinant is
    float64; the derivative float64, or for "exact" a ``Complement`` of the float32 U."""
    mm = product_function(k.products, g.device)
    y = g.float() * k.c
    if k.estimator == "exact":
        degree = moments.exact_degree(k.kappa)
        logdet = _combine(moments.weights(k.kappa, degree), moments.raw(y, k.kappa, degree, mm))
        if not k.need_grad:
            return logdet, None
        steps = doubling.complement_steps_for(k.kappa, COMPLEMENT_TARGET)
        u, beta = doubling.complement(y, k.kappa, steps, mm)
        return logdet, Complement(u, 2.0 * k.c, -2.0 * k.c * beta)  # -2c·X = 2c·U - 2c·beta·I
    if k.estimator == "series":
        w = _s_weights(float(k.kappa), int(k.degree), -2.0 * k.c)
        return _s_polynomial(y, float(k.kappa), w, k.need_grad, mm)
    if k.estimator == "taylor":
        logdet, deriv = _polynomial(y, _weights("taylor", 0.0, int(k.degree), -2.0 * k.c), False,
                                    k.need_grad, mm)
        return logdet, deriv.double() if deriv is not None else None
    raise ValueError(f"estimator must be 'exact', 'series' or 'taylor', got {k.estimator!r}")


def small_side(g: Tensor, colsum: Tensor, count: Tensor | None,
               k: Constants) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(R, Q, v, qinfo)`` from the Gram stage's outputs; see the module docstring.

    g: (n, n) Gram of the (centred, with ``centering``) rows; colsum: (d,) column sums of the
    uncentred rows, or (0,); count: 0-d row count summed over the ranks (a tensor, so that the
    distributed path needs no host sync), or None: exactly ``k.rows`` rows. R is a 0-d tensor in
    g's dtype; Q (n, n) and v (d,) or (0,) also in g's dtype (float32 for half and float32
    inputs: the operands of the backward GEMM); qinfo (2,) in g's dtype: ``[qscale, alpha]``.
    Without ``need_grad`` Q, v are empty and qinfo is ``[1, 0]``.
    """
    if k.estimator == UNIFORMITY:
        return uniformity_side(g, count, k)
    out_dtype = g.dtype
    if _native_exact(g, count, k):  # the same numbers in one native call (cpu_native.py)
        value, q, qinfo = torch.ops.mmae_fast.cpu_exact_side(g, k.c, k.need_grad)
        return value, q, g.new_empty((0,)), qinfo
    if k.products != "float64" and g.dtype != F64:
        logdet, q = _products_side(g, k)
    else:
        gc = g.to(F64, copy=True)  # overwritten in place below
        logdet, q = _logdet_and_derivative(gc, k.c, k.kappa, k.estimator, k.degree, k.need_grad,
                                           k.inverse,
                                           float32_grade=k.float32_inverse and g.dtype != F64)
    value = (-logdet).to(out_dtype)
    ok = None
    if k.max_rows:  # the series or the doubling inverse with a group: kappa-dependent
        # more rows than the kappa bound assumed (a distributed run with unequal shards) would put
        # the spectrum outside the series' interval: NaN value and gradient, never a silently
        # wrong one
        ok = count.to(F64) <= k.max_rows
        value = torch.where(ok, value, math.nan)
    if not k.need_grad:
        qinfo = g.new_zeros(2)
        qinfo[:1].fill_(1.0)  # a fill kernel (qinfo[0] = 1.0 copies from the host and syncs)
        return value, g.new_empty((0, 0)), g.new_empty((0,)), qinfo
    if isinstance(q, Complement):
        if not k.centering and not q.w.is_cuda:
            q, _, qinfo = _shift_and_scale(q, None, ok)
            return value, q.to(out_dtype).contiguous(), g.new_empty((0,)), qinfo.to(out_dtype)
        q = q.dense()
    # q = 2·dR/dG_c (symmetric), row-major as the op's fake kernel and the backward kernels
    # promise (a column-major result, e.g. from cholesky_inverse, broke inductor's stride check)
    if not q.is_contiguous() and q.mT.is_contiguous():
        q = q.mT
    if k.centering and not k.feature:
        row = q.mean(dim=1, keepdim=True)
        q = q - row - row.mT + row.mean()  # J (2P) J
    if k.centering and k.feature:  # v = 2P z̄
        v = q @ (colsum.to(F64) / (count.to(F64) if count is not None else float(k.rows)))
    else:
        v = None
    q, v, qinfo = _shift_and_scale(Complement(q, 1.0, 0.0), v, ok)
    v = v.to(out_dtype) if v is not None else g.new_empty((0,))
    return value, q.to(out_dtype).contiguous(), v, qinfo.to(out_dtype)


def _native_exact(g: Tensor, count: Tensor | None, k: Constants) -> bool:
    """Whether stage 2 is the exact estimator on LAPACK's float64 inverse without centring or a
    group, on the CPU with the native ops usable: ``cpu_native``'s ``cpu_exact_side``."""
    return (k.estimator == "exact" and not k.centering and count is None
            and k.inverse == "cholesky" and (k.products == "float64" or g.dtype == F64)
            and g.device.type == "cpu" and g.dtype in (torch.float32, F64)
            and cpu.takes_float64_inverse(g.shape[0], k.float32_inverse and g.dtype != F64)
            and cpu_native.usable())


def _shift_and_scale(c: Complement, v: Tensor | None,
                     ok: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(Q, v/qscale, qinfo = [qscale, alpha])`` of ``q = a·w + b·I`` without forming q
    (w and v are overwritten; a dense q is ``Complement(q, 1, 0)``)::

        alpha = -tr(q)/n = -(a·w̄ + b),  w̄ = tr(w)/n (summed in float64)
        Q' = q + alpha·I = a·(w - w̄I),  qscale = max(|a|·max|w - w̄I|, max|v|),  Q = Q'/qscale

    the radial shift and the scale of the module docstring; no number of the size of the
    identity part meets w's rounding. ``ok`` False: qscale NaN."""
    d = c.w
    neg_wbar = d.diagonal().sum(dtype=F64).div_(-d.shape[0])
    d.diagonal().add_(neg_wbar)
    qscale = d.abs().amax().to(F64)  # amax: a cheaper reduction than vector_norm(ord=inf)
    if c.a != 1.0:
        qscale = qscale.mul_(abs(c.a))
    if v is not None:  # v shares the scale: it must not overflow either
        qscale = torch.maximum(qscale, v.abs().amax())
    qscale = qscale.clamp_min_(torch.finfo(torch.float32).tiny)
    if ok is not None:
        qscale = torch.where(ok, qscale, math.nan)
    alpha = neg_wbar if (c.a, c.b) == (1.0, 0.0) else neg_wbar.mul_(c.a).sub_(c.b)
    q = d.div_(qscale if c.a == 1.0 else qscale / c.a)
    return q, v.div_(qscale) if v is not None else None, torch.stack([qscale, alpha])


def warn_if_taylor_diverges(estimator: str, mu: float, m: int, d: int, stacklevel: int = 4) -> None:
    """Warn (at run time, not while tracing) when the Taylor series may diverge (mu·m/d >= 1)."""
    if estimator == "taylor" and not series.taylor_converges(mu, m, d):
        warnings.warn(
            f"estimator='taylor' may diverge: the spectral radius of mu/d·ZᵀZ can reach "
            f"mu·m/d = {mu * m / d:.3g} >= 1; use estimator='series' (converges for every input) "
            f"or a smaller mu", RuntimeWarning, stacklevel=stacklevel)


# ----------------------------------------------------------------------------- uniformity
#: The ``estimator`` name of U-MAE's uniformity on this stage (``uniformity_side``).
UNIFORMITY = "uniformity"


def uniformity_constants(*, m: int, feature: bool, need_grad: bool, grouped: bool) -> Constants:
    """The ``Constants`` of ``uniformity_side``: only ``rows`` (m without a group; with one the
    summed count divides) and the side; no centring, no estimator numbers."""
    return Constants(c=0.0, estimator=UNIFORMITY, degree=0, kappa=0.0, max_rows=0,
                     rows=0 if grouped else int(m), feature=bool(feature), centering=False,
                     need_grad=bool(need_grad))


def uniformity_side(g: Tensor, count: Tensor | None,
                    k: Constants) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``small_side``'s outputs for U-MAE's uniformity of the M rows behind the Gram G (n, n)::

        R = ||G||_F² / M²,   P = dR/dG = 2G / M²,   Q' = 2P + alpha·I,  alpha = -tr(2P)/n

    (``mean((ZZᵀ)²)``: the same on either side, and on the all-reduced ``Σ_r Z_rᵀZ_r``; M is
    ``count`` with a group, else ``k.rows``). One Gram, no other n×n product; float64 as the
    rest of this stage; Q, qinfo scaled as in the module docstring (v is empty: no centring).
    """
    out_dtype = g.dtype
    n = g.shape[0]
    inv_m2 = (1.0 / count.to(F64).square() if count is not None
              else torch.full((), 1.0 / float(k.rows) ** 2, dtype=F64, device=g.device))
    g64 = g.to(F64)
    value = (torch.linalg.vector_norm(g64).square() * inv_m2).to(out_dtype)
    if not k.need_grad:
        qinfo = g.new_zeros(2)
        qinfo[:1].fill_(1.0)
        return value, g.new_empty((0, 0)), g.new_empty((0,)), qinfo
    q = g64 * (4.0 * inv_m2)  # 2P
    alpha = q.diagonal().sum() / -n
    q.diagonal().add_(alpha)
    qscale = torch.linalg.vector_norm(q, ord=math.inf).clamp_min(torch.finfo(torch.float32).tiny)
    q = q.div_(qscale).to(out_dtype).contiguous()
    return value, q, g.new_empty((0,)), torch.stack([qscale, alpha]).to(out_dtype)
