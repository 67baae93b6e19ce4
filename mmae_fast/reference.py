"""Pure-PyTorch reference of every formula in mmae_fast: the single source of truth.

All functions take raw features ``h`` of shape (m, d) (m samples, d feature dims), L2-normalise
the rows like ``torch.nn.functional.normalize`` (``z_i = h_i / max(||h_i||, eps)``) and compute
with autocast disabled in float64 for float64 input, else in float32 (half inputs are upcast).
They are differentiable by autograd and carry no input checks (``mmae_fast.functional`` checks).
Notation: ``S = ZᵀZ`` (d, d), ``K = ZZᵀ`` (m, m), ``c = mu/d``.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch

from . import series

#: Row-norm floor of the L2 normalisation (as torch.nn.functional.normalize).
EPS = 1e-12
#: Default Taylor order (MEC / Matrix-SSL use 4).
TAYLOR_ORDER = 4
#: Default relative tolerance of the convergence-safe series.
SERIES_TOL = 1e-4


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exact_math(fn):
    """Run ``fn`` with autocast disabled (a loss inside a bf16 autocast region stays fp32)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        ctx = (torch.autocast(device, enabled=False) if device in ("cpu", "cuda")
               else contextlib.nullcontext())
        with ctx:
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------- building blocks
def row_norms(x: torch.Tensor) -> torch.Tensor:
    """(m, d) -> (m,): ``||x_i|| = 2^k_i · ||x_i · 2^-k_i||``, 2^k_i the power of two of the row's
    largest |entry| (``frexp``; k_i clamped so that 2^±k_i are normal numbers).

    No square overflows (features of any finite size: ``x · 1e30`` in float32 keeps its norm)
    and, scaling by powers of two being exact, the result is bit for bit the plain
    ``sqrt(Σ x_ij²)`` wherever that does not overflow. The scale carries no gradient (the norm
    is homogeneous: the gradient is exactly ``x_i / ||x_i||``). NaN / Inf rows give NaN / Inf.
    """
    lim = math.frexp(torch.finfo(x.dtype).max)[1] - 3  # 125 in float32, 1021 in float64
    _, k = torch.frexp(x.detach().abs().amax(dim=1))
    # 2^-k as a float factor of no gradient (autograd through ldexp itself rounds 2^-k to an
    # integer); dividing by it multiplies by 2^k exactly
    scale = torch.ldexp(x.new_ones(x.shape[0]), k.clamp_(-lim, lim).neg_())
    return torch.linalg.vector_norm(x * scale[:, None], dim=1) / scale


def l2_normalize(h: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(m, d) -> (m, d): ``z_i = h_i / max(||h_i||, eps)`` (``F.normalize``'s floor; zero rows
    stay zero), ``||h_i||`` by ``row_norms`` (no overflow)."""
    return h / row_norms(h).clamp_min(eps)[:, None]


def center(z: torch.Tensor) -> torch.Tensor:
    """(m, d) -> (m, d): ``J Z = Z - 1 z̄ᵀ`` without a dense ``J = I - 11ᵀ/m``."""
    return z - z.mean(dim=0, keepdim=True)


def smaller_side(m: int, d: int) -> str:
    """The Gram side with the smaller matrix: "feature" (d x d) if d <= m, else "sample"."""
    return "feature" if d <= m else "sample"


def gram(z: torch.Tensor, side: str = "smaller") -> torch.Tensor:
    """"feature": ``ZᵀZ`` (d, d); "sample": ``ZZᵀ`` (m, m); "smaller": the smaller of the two.

    Both have the same non-zero eigenvalues (Sylvester), so traces of powers and
    ``logdet(I + c·G)`` agree on either side.
    """
    if side == "smaller":
        side = smaller_side(*z.shape)
    if side == "feature":
        return z.mT @ z
    if side == "sample":
        return z @ z.mT
    raise ValueError(f"side must be 'feature', 'sample' or 'smaller', got {side!r}")


def normalized_features(h: torch.Tensor, centering: bool = False) -> torch.Tensor:
    """(m, d) -> (m, d): the rows every regulariser is computed on: ``[J] normalize(h)``."""
    z = l2_normalize(h.to(compute_dtype(h.dtype)))
    return center(z) if centering else z


def power_traces(x: torch.Tensor, max_power: int) -> list[torch.Tensor]:
    """``[tr(X^1), ..., tr(X^p)]`` for a square X from ``ceil(p/2) - 1`` matrix products.

    ``tr(X^(j+l)) = <(X^j)ᵀ, X^l>_F``; for symmetric X this is ``||X^j||_F²`` (2j) and
    ``<X^j, X^(j+1)>_F`` (2j + 1).
    """
    half = (max_power + 1) // 2
    pows = [None, x]
    for _ in range(2, half + 1):
        pows.append(pows[-1] @ x)
    traces = [pows[k].diagonal().sum() for k in range(1, half + 1)]
    for k in range(half + 1, max_power + 1):
        traces.append((pows[half] * pows[k - half].mT).sum())
    return traces


def chebyshev_traces(m_: torch.Tensor, degree: int) -> list[torch.Tensor]:
    """``[tr T_0(M), ..., tr T_D(M)]`` for symmetric M from ``ceil(D/2) - 1`` matrix products.

    ``T_(k+1) = 2 M T_k - T_(k-1)``; ``tr T_(j+l) = 2 <T_j, T_l>_F - tr T_|j-l|``.
    """
    half = (degree + 1) // 2
    eye = torch.eye(m_.shape[0], dtype=m_.dtype, device=m_.device)
    mats = [eye, m_]
    for _ in range(2, half + 1):
        mats.append(2.0 * (m_ @ mats[-1]) - mats[-2])
    traces = [t.diagonal().sum() for t in mats]
    for k in range(half + 1, degree + 1):
        traces.append(2.0 * (mats[half] * mats[k - half]).sum() - traces[2 * half - k])
    return traces[: degree + 1]


# ----------------------------------------------------------------------------- log-determinants
def logdet_cholesky(a: torch.Tensor) -> torch.Tensor:
    """``logdet(A) = 2 Σ log diag(L)`` for SPD A = LLᵀ (N, N); NaN (not an exception) when A is
    not positive definite, e.g. for NaN/Inf input."""
    chol, info = torch.linalg.cholesky_ex(a)
    value = 2.0 * chol.diagonal().log().sum()
    return torch.where(info == 0, value, torch.full_like(value, float("nan")))


def logdet_taylor(y: torch.Tensor, order: int = TAYLOR_ORDER) -> torch.Tensor:
    """``logdet(I + Y) ≈ Σ_{k=1..p} (-1)^(k+1) tr(Y^k)/k`` (converges if spectral radius < 1)."""
    coeffs = series.taylor_coefficients(order)
    return sum(a * t for a, t in zip(coeffs, power_traces(y, order)))


def logdet_chebyshev(y: torch.Tensor, kappa: float, degree: int) -> torch.Tensor:
    """``logdet(I + Y) ≈ Σ_k p_k tr T_k(2Y/(kappa-1) - I)`` for Y with spectrum in [0, kappa-1].

    Coefficients and error bounds: ``mmae_fast.series``.
    """
    coeffs = series.chebyshev_coefficients(float(kappa), int(degree))
    eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
    m_ = y * (2.0 / (kappa - 1.0)) - eye
    return sum(p * t for p, t in zip(coeffs, chebyshev_traces(m_, degree)))


def default_degree(estimator: str, kappa: float, tol: float = SERIES_TOL) -> int:
    """Default polynomial degree: Taylor order 4; series degree from ``tol`` and ``kappa``."""
    if estimator == "taylor":
        return TAYLOR_ORDER
    if estimator == "series":
        return series.series_degree(kappa, tol)
    return 0


def logdet_identity_plus(y: torch.Tensor, *, estimator: str = "exact", degree: int | None = None,
                         kappa: float | None = None) -> torch.Tensor:
    """``logdet(I + Y)`` for symmetric PSD Y (N, N) by "exact" (Cholesky), "taylor" or "series".

    ``kappa`` (series only) bounds the spectrum of ``I + Y`` from above.
    """
    if estimator == "exact":
        eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
        return logdet_cholesky(eye + y)
    if estimator == "taylor":
        return logdet_taylor(y, degree or TAYLOR_ORDER)
    if estimator == "series":
        if kappa is None:
            raise ValueError("the series estimator needs kappa, the bound on the spectrum of I + Y")
        return logdet_chebyshev(y, kappa, degree or series.series_degree(kappa, SERIES_TOL))
    raise ValueError(f"estimator must be 'exact', 'series' or 'taylor', got {estimator!r}")


# ----------------------------------------------------------------------------- TCR (M-MAE)
def tcr_from_gram(g: torch.Tensor, *, mu: float, m: int, d: int, estimator: str = "exact",
                  degree: int | None = None) -> torch.Tensor:
    """``R = -logdet(I + mu/d · G)`` from a Gram G (N, N) of m rows of width d, norm <= 1
    (either side); ``series.kappa(mu, m, d)`` bounds the spectrum of ``I + mu/d · G``.

    The log-determinant runs in float64 whatever G's dtype (the result is cast back): the
    series' terms cancel by up to ~10³ at large kappa, which float32 cannot afford."""
    y = (mu / d) * g.to(torch.float64)
    value = -logdet_identity_plus(y, estimator=estimator, degree=degree,
                                  kappa=series.kappa(mu, m, d))
    return value.to(g.dtype)


@_exact_math
def tcr(h: torch.Tensor, mu: float = 1.0, *, centering: bool = False, estimator: str = "exact",
        degree: int | None = None) -> torch.Tensor:
    """Total coding rate regulariser of M-MAE (the official ``loss_reg``), a 0-d tensor::

        R = -logdet(I_d + mu/d · ZᵀZ) = -logdet(I_m + mu/d · ZZᵀ),  Z = [J] normalize(h)

    computed on the smaller side. ``degree``: Taylor order (default 4) or series degree (default:
    relative error <= 1e-4, see ``mmae_fast.series``); unused for "exact".
    """
    z = normalized_features(h, centering)
    m, d = z.shape
    return tcr_from_gram(gram(z), mu=mu, m=m, d=d, estimator=estimator, degree=degree)


@_exact_math
def tcr_series(h: torch.Tensor, mu: float = 1.0, *, centering: bool = False,
               degree: int | None = None, tol: float = SERIES_TOL):
    """``(R_series, bound)``: the convergence-safe series and a bound on ``|R_series - R|``.

    ``bound = tr(Y)·eps_q`` with ``Y = mu/d · G`` (see ``mmae_fast.series``); the degree is the
    smallest whose a-priori relative error is <= ``tol`` unless ``degree`` is given.
    """
    z = normalized_features(h, centering)
    m, d = z.shape
    kappa = series.kappa(mu, m, d)
    degree = degree or series.series_degree(kappa, tol)
    g = gram(z)
    value = tcr_from_gram(g, mu=mu, m=m, d=d, estimator="series", degree=degree)
    bound = (mu / d) * g.diagonal().sum().detach() * series.chebyshev_error(kappa, degree)
    return value, bound.to(value.dtype)


# ----------------------------------------------------------------------------- U-MAE
@_exact_math
@_exact_math
def uniformity(h: torch.Tensor) -> torch.Tensor:
    """U-MAE uniformity ``mean((ZZᵀ)²) = ||ZZᵀ||_F² / m² = ||ZᵀZ||_F² / m²`` (0-d)."""
    z = normalized_features(h)
    return gram(z).square().sum() / z.shape[0] ** 2


# ----------------------------------------------------------------------------- matrix entropies
#: Largest integer order whose ``tr(K̂^alpha)`` comes from power traces (GEMMs): with
#: ``λ_max >= 1/N``, ``tr(K̂^alpha) >= N^(1-alpha)`` is a normal float32 for N <= 2^16 up to
#: alpha = 8; larger orders go through the eigenvalues in log space.
MAX_POWER_TRACE_ALPHA = 8


def renyi_entropy_psd(k: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Matrix Rényi entropy of a PSD matrix K (N, N) normalised to unit trace, ``K̂ = K / tr K``::

        H_alpha = log tr(K̂^alpha) / (1 - alpha),   H_1 = -tr(K̂ log K̂) = -Σ λ log λ

    Integer 2 <= alpha <= ``MAX_POWER_TRACE_ALPHA`` uses power traces (GEMMs); other orders use
    the eigenvalues λ of K̂, those at or below ``N·eps·λ_max`` counted as zeros, and
    ``log tr(K̂^alpha) = logsumexp(alpha·log λ)`` over the positive ones (finite for any alpha).

    Non-finite K gives NaN. K = 0 (no positive eigenvalue: every row of the features at zero)
    gives H = 0, the entropy of a single point, as for a rank-one K.
    """
    tr = k.diagonal().sum()
    finite = torch.isfinite(k).all()
    ok = finite & (tr > 0)
    n = k.shape[0]
    # a finite stand-in (I/N) where K̂ is undefined keeps eigvalsh and the gradient finite
    kh = torch.where(ok, k / torch.where(ok, tr, torch.ones_like(tr)),
                     torch.eye(n, dtype=k.dtype, device=k.device) / n)
    if float(alpha).is_integer() and 2 <= alpha <= MAX_POWER_TRACE_ALPHA:
        value = power_traces(kh, int(alpha))[-1].log() / (1.0 - alpha)
    else:
        ev = torch.linalg.eigvalsh(kh)
        floor = n * torch.finfo(kh.dtype).eps * ev.detach().max()
        pos = ev > floor
        log_ev = torch.where(pos, ev, torch.ones_like(ev)).log()
        if alpha == 1:
            value = -(torch.where(pos, ev, torch.zeros_like(ev)) * log_ev).sum()
        else:
            terms = torch.where(pos, alpha * log_ev, torch.full_like(ev, -math.inf))
            value = torch.logsumexp(terms, 0) / (1.0 - alpha)
    return torch.where(ok, value, torch.where(finite, torch.zeros_like(value),
                                              torch.full_like(value, math.nan)))


@_exact_math
def renyi_entropy(h: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Matrix entropy ``H_alpha`` of ``K = ZZᵀ / tr(ZZᵀ)`` (computed on the smaller Gram side)."""
    return renyi_entropy_psd(gram(normalized_features(h)), alpha)


@_exact_math
def effective_rank(h: torch.Tensor) -> torch.Tensor:
    """Effective rank ``exp(H_1)`` of the normalised features, in [1, min(m, d)]."""
    return renyi_entropy(h, 1.0).exp()


def pair_dtype(h1: torch.Tensor, h2: torch.Tensor) -> torch.dtype:
    """The compute dtype of two views: ``compute_dtype`` of their promoted dtype (float64 if
    either is float64, else float32); every two-view function casts both views to it."""
    return compute_dtype(torch.promote_types(h1.dtype, h2.dtype))


@_exact_math
def joint_entropy(h1: torch.Tensor, h2: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Matrix joint entropy ``H_alpha(K1 ∘ K2)`` (Hadamard product of the sample Grams)."""
    dt = pair_dtype(h1, h2)
    h1, h2 = h1.to(dt), h2.to(dt)
    k1 = gram(normalized_features(h1), "sample")
    k2 = gram(normalized_features(h2), "sample")
    return renyi_entropy_psd(k1 * k2, alpha)


@_exact_math
def mutual_information(h1: torch.Tensor, h2: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Matrix mutual information ``I_alpha = H_alpha(K1) + H_alpha(K2) - H_alpha(K1 ∘ K2)``."""
    dt = pair_dtype(h1, h2)
    h1, h2 = h1.to(dt), h2.to(dt)
    return renyi_entropy(h1, alpha) + renyi_entropy(h2, alpha) - joint_entropy(h1, h2, alpha)


# ----------------------------------------------------------------------------- peers
@_exact_math
def mec_from_cross(c: torch.Tensor, m, d: int, *, eps_sq: float = 0.06,
                   order: int = TAYLOR_ORDER) -> torch.Tensor:
    """MEC from the cross Gram ``c = Z2ᵀZ1`` (d, d) or ``Z1Z2ᵀ`` (m, m) (the traces of their
    powers agree) of m rows (a number or a 0-d tensor)."""
    lam, mu_mec = d / (m * eps_sq), (m + d) / 2.0
    coeffs = series.taylor_coefficients(order)
    trace_log = sum(a * t for a, t in zip(coeffs, power_traces(lam * c, order)))
    return -mu_mec * trace_log


@_exact_math
def mec(h1: torch.Tensor, h2: torch.Tensor, *, eps_sq: float = 0.06,
        order: int = TAYLOR_ORDER) -> torch.Tensor:
    """Maximum Entropy Coding loss ``-mu_mec · tr log(I_m + lam · Z1 Z2ᵀ)`` by order-p Taylor::

        lam = d / (m · eps_sq),   mu_mec = (m + d) / 2

    The traces of ``(Z1 Z2ᵀ)^k`` equal those of ``(Z2ᵀ Z1)^k``: computed on the smaller side
    (``mec_from_cross``).
    """
    dt = pair_dtype(h1, h2)
    z1, z2 = normalized_features(h1.to(dt)), normalized_features(h2.to(dt))
    m, d = z1.shape
    c = z2.mT @ z1 if d <= m else z1 @ z2.mT
    return mec_from_cross(c, m, d, eps_sq=eps_sq, order=order)


def mce_from_cross(c: torch.Tensor, m, *, mu: float = 1.0,
                   order: int = TAYLOR_ORDER) -> torch.Tensor:
    """MCE from the centred cross Gram ``c = Z1ᵀ J Z2`` (d, d) of m rows (a number or a 0-d
    tensor): ``Q = c/m + mu·I``."""
    d = c.shape[-1]
    eye = torch.eye(d, dtype=c.dtype, device=c.device)
    q = c / m + mu * eye
    coeffs = series.taylor_coefficients(order)
    trace_log = sum(a * t for a, t in zip(coeffs, power_traces(q - eye, order)))
    return -trace_log / d + q.diagonal().sum()


@_exact_math
def matrix_cross_entropy(h1: torch.Tensor, h2: torch.Tensor, *, mu: float = 1.0,
                         order: int = TAYLOR_ORDER) -> torch.Tensor:
    """Matrix-SSL uniformity term ``MCE(I_d/d, Q) = tr(-(1/d) log Q + Q)`` with::

        Q = (1/m) Z1ᵀ J Z2 + mu·I_d   (d, d),   log Q ≈ Σ_{k<=p} (-1)^(k+1) (Q - I)^k / k
    """
    dt = pair_dtype(h1, h2)
    z1, z2 = normalized_features(h1.to(dt), centering=True), normalized_features(h2.to(dt))
    return mce_from_cross(z1.mT @ z2, z1.shape[0], mu=mu, order=order)  # (J Z1)ᵀ Z2 = Z1ᵀ J Z2


def uniformity_equivalent_weight(lamb: float, mu: float, m: int, d: int) -> float:
    """U-MAE weight equal to lambda·R's order-2 Taylor term: ``lambda · mu² m² / (2 d²)``."""
    return lamb * mu**2 * m**2 / (2.0 * d**2)


__all__ = [
    "EPS", "compute_dtype", "row_norms", "l2_normalize", "center", "smaller_side", "gram", "normalized_features",
    "power_traces", "chebyshev_traces", "logdet_cholesky", "logdet_taylor", "logdet_chebyshev",
    "logdet_identity_plus", "default_degree", "tcr_from_gram", "tcr", "tcr_series", "uniformity",
    "MAX_POWER_TRACE_ALPHA", "renyi_entropy_psd", "renyi_entropy", "pair_dtype", "effective_rank", "joint_entropy", "mutual_information",
    "mec_from_cross", "mec", "mce_from_cross", "matrix_cross_entropy", "uniformity_equivalent_weight",
]
