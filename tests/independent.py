"""Independent float64 numpy formulas for every public value: the expected side of the value tests.

Nothing here imports ``mmae_fast``: each value is computed another way than the package does —
from eigenvalues (``numpy.linalg.eigvalsh`` / ``eigvals``) or ``slogdet`` of dense matrices, with
a dense centring matrix ``J = I - 11ᵀ/m`` — so a bug shared by the reference and the kernels
(a constant, a sign, a dropped term, a wrong Gram side) cannot hide on both sides of a comparison.
Inputs: torch tensors or arrays of shape (m, d); outputs: Python floats.
"""
from __future__ import annotations

import numpy as np


def row_norms(h) -> np.ndarray:
    """(m, 1) float64 ``||h_i|| = s_i·||h_i / s_i||``, s_i = max_j |h_ij| (1 for a zero row): no
    square overflows, whatever the size of the entries."""
    h = np.asarray(h, dtype=np.float64)
    s = np.abs(h).max(axis=1, keepdims=True)
    s = np.where(s > 0, s, 1.0)
    return s * np.sqrt(((h / s) ** 2).sum(axis=1, keepdims=True))


def features(h, centering: bool = False) -> np.ndarray:
    """(m, d) float64 rows ``z_i = h_i / max(||h_i||, 1e-12)``, then ``J Z`` if ``centering``."""
    if hasattr(h, "detach"):
        h = h.detach().double().cpu().numpy()
    z = np.asarray(h, dtype=np.float64)
    z = z / np.maximum(row_norms(z), 1e-12)
    if centering:
        m = z.shape[0]
        z = (np.eye(m) - np.ones((m, m)) / m) @ z
    return z


def gram_eigenvalues(h, centering: bool = False) -> np.ndarray:
    """Eigenvalues of the feature Gram ``ZᵀZ`` (d of them; the m x m side has the same non-zero
    ones), clipped at 0."""
    z = features(h, centering)
    return np.clip(np.linalg.eigvalsh(z.T @ z), 0.0, None)


def tcr_exact(h, mu: float, centering: bool = False) -> float:
    """``R = -Σ_i log(1 + mu/d · λ_i(ZᵀZ))``."""
    d = np.shape(h)[1]
    return float(-np.log1p(mu / d * gram_eigenvalues(h, centering)).sum())


def tcr_slogdet(h, mu: float, centering: bool = False) -> float:
    """``R = -logdet(I_m + mu/d · ZZᵀ)`` by LU (``slogdet``) on the sample side: a second,
    eigenvalue-free way to the same number."""
    z = features(h, centering)
    m, d = z.shape
    sign, logabs = np.linalg.slogdet(np.eye(m) + mu / d * z @ z.T)
    assert sign > 0
    return float(-logabs)


def tcr_taylor(h, mu: float, order: int, centering: bool = False) -> float:
    """``-Σ_{k<=order} (-1)^(k+1)/k · Σ_i (mu/d · λ_i)^k``."""
    d = np.shape(h)[1]
    y = mu / d * gram_eigenvalues(h, centering)
    return float(-sum((-1) ** (k + 1) / k * (y ** k).sum() for k in range(1, order + 1)))


def uniformity(h) -> float:
    """``mean((ZZᵀ)²) = ||ZZᵀ||_F² / m² = Σ λ_i² / m²``."""
    m = np.shape(h)[0]
    return float((gram_eigenvalues(h) ** 2).sum() / m ** 2)


def renyi_of_gram(k: np.ndarray, alpha: float) -> float:
    """``H_alpha`` of a PSD (N, N) ``k`` normalised to unit trace, from its eigenvalues; those
    at rounding level (< N·2.2e-16·λ_max) are zeros. ``log Σ λ^α`` as
    ``α log λ_max + log Σ (λ/λ_max)^α`` (no underflow at large α)."""
    lam = np.linalg.eigvalsh(k / np.trace(k))
    lam = lam[lam > k.shape[0] * 2.3e-16 * lam.max()]
    if alpha == 1:
        return float(-(lam * np.log(lam)).sum())
    top = lam.max()
    return float((alpha * np.log(top) + np.log(((lam / top) ** alpha).sum())) / (1.0 - alpha))


def sample_gram(h) -> np.ndarray:
    z = features(h)
    return z @ z.T


def matrix_entropy(h, alpha: float = 1.0) -> float:
    return renyi_of_gram(sample_gram(h), alpha)


def effective_rank(h) -> float:
    return float(np.exp(matrix_entropy(h, 1.0)))


def joint_entropy(h1, h2, alpha: float = 1.0) -> float:
    return renyi_of_gram(sample_gram(h1) * sample_gram(h2), alpha)


def mutual_information(h1, h2, alpha: float = 1.0) -> float:
    return matrix_entropy(h1, alpha) + matrix_entropy(h2, alpha) - joint_entropy(h1, h2, alpha)


def mec(h1, h2, eps_sq: float = 0.06, order: int = 4) -> float:
    """``-(m+d)/2 · Σ_k (-1)^(k+1)/k · Σ_i ν_i^k``, ν the (complex) eigenvalues of
    ``lam · Z1 Z2ᵀ`` (m, m), ``lam = d / (m·eps_sq)``."""
    z1, z2 = features(h1), features(h2)
    m, d = z1.shape
    nu = np.linalg.eigvals(d / (m * eps_sq) * z1 @ z2.T)
    trace_log = sum((-1) ** (k + 1) / k * (nu ** k).sum() for k in range(1, order + 1))
    return float(-(m + d) / 2.0 * trace_log.real)


def matrix_cross_entropy(h1, h2, mu: float = 1.0, order: int = 4) -> float:
    """``tr Q - (1/d) Σ_k (-1)^(k+1)/k · Σ_i ν_i^k``, ν the eigenvalues of ``Q - I``,
    ``Q = Z1ᵀ J Z2 / m + mu·I`` (d, d), J dense."""
    z1, z2 = features(h1), features(h2)
    m, d = z1.shape
    j = np.eye(m) - np.ones((m, m)) / m
    q = z1.T @ j @ z2 / m + mu * np.eye(d)
    nu = np.linalg.eigvals(q - np.eye(d))
    trace_log = sum((-1) ** (k + 1) / k * (nu ** k).sum() for k in range(1, order + 1))
    return float(np.trace(q) - trace_log.real / d)


def tcr_exact_grad(h, mu: float, centering: bool = False) -> np.ndarray:
    """dR/dh (m, d) of ``tcr_exact``: ``G = -2c·Zc·(I + c·ZcᵀZc)⁻¹`` on the (centred) rows
    (J is symmetric and idempotent, so centring adds no factor), then through the normalisation
    ``dR/dh_i = (G_i - z_i <G_i, z_i>) / ||h_i||``."""
    h = np.asarray(h.detach().double().cpu().numpy() if hasattr(h, "detach") else h, np.float64)
    m, d = h.shape
    c = mu / d
    z = features(h)
    zc = features(h, centering)
    g = -2.0 * c * zc @ np.linalg.inv(np.eye(d) + c * zc.T @ zc)
    return (g - z * (g * z).sum(1, keepdims=True)) / row_norms(h)


def inverse_complement(y) -> np.ndarray:
    """``W = I - (I + Y)⁻¹ = V diag(λ/(1 + λ)) Vᵀ`` (n, n) of a symmetric PSD Y, from its
    eigendecomposition (no subtraction from the identity)."""
    y = np.asarray(y.detach().double().cpu().numpy() if hasattr(y, "detach") else y, np.float64)
    lam, v = np.linalg.eigh((y + y.T) / 2)
    lam = np.clip(lam, 0.0, None)
    return (v * (lam / (1.0 + lam))) @ v.T


def shifted_and_scaled(q, v=None):
    """The small side's ``(Q, v/qscale, qscale, alpha)`` of a symmetric ``q`` (n, n) and an
    optional vector v, in float64: ``alpha = -tr(q)/n``, ``Q' = q + alpha·I``, ``qscale =
    max(max|Q'_ij|, max|v_i|)``, ``Q = Q'/qscale``."""
    q = np.asarray(q.detach().double().cpu().numpy() if hasattr(q, "detach") else q, np.float64)
    alpha = -np.trace(q) / q.shape[0]
    shifted = q + alpha * np.eye(q.shape[0])
    scale = np.abs(shifted).max()
    if v is not None:
        v = np.asarray(v.detach().double().cpu().numpy() if hasattr(v, "detach") else v)
        scale = max(scale, np.abs(v).max())
    return shifted / scale, None if v is None else v / scale, scale, alpha


def chebyshev_log1p(kappa: float, degree: int) -> np.ndarray:
    """(p_0..p_D) in the Chebyshev basis of t = 2y/(kappa-1) - 1 of the series' polynomial
    ``P(y) = y·q(y)``, q the degree D-1 truncation of log1p(y)/y's Chebyshev series on
    [0, kappa-1]: numpy's interpolation at degree 400 (coefficients to rounding), truncated, times
    ``y = h·(1 + t)`` (numpy's chebmulx), ``h = (kappa-1)/2``."""
    cheb = np.polynomial.chebyshev
    h = (kappa - 1.0) / 2.0
    f = cheb.Chebyshev.interpolate(lambda t: np.log1p(h * (t + 1)) / (h * (t + 1)), 400)
    q = f.coef[:degree]
    return h * (np.pad(q, (0, 1)) + cheb.chebmulx(q)[: degree + 1])


def tcr_series(h, mu: float, degree: int, centering: bool = False) -> float:
    """``R_D = -Σ_i P(y_i)``: the degree-D series polynomial P (``chebyshev_log1p``) by numpy's
    chebval at ``t_i = 2y_i/(kappa - 1) - 1``, ``y_i = mu/d · λ_i(ZᵀZ)``, ``kappa = 1 + mu·m/d``."""
    m, d = np.shape(h)
    kappa = 1.0 + mu * m / d
    y = mu / d * gram_eigenvalues(h, centering)
    t = 2.0 * y / (kappa - 1.0) - 1.0
    return float(-np.polynomial.chebyshev.chebval(t, chebyshev_log1p(kappa, degree)).sum())


def _rows_gradient(h, gz) -> np.ndarray:
    """dL/dh (m, d) from dL/dZ through ``z_i = h_i/||h_i||``: ``(g_i - z_i <g_i, z_i>)/||h_i||``."""
    h = np.asarray(h.detach().double().cpu().numpy() if hasattr(h, "detach") else h, np.float64)
    z = features(h)
    return (gz - z * (gz * z).sum(1, keepdims=True)) / np.linalg.norm(h, axis=1, keepdims=True)


def uniformity_grad(h) -> np.ndarray:
    """dR/dh (m, d) of ``uniformity``: R = Σ_ij <z_i, z_j>² / m², dR/dz_i = 4 Σ_j <z_i, z_j> z_j
    / m² (the (m, m) sample Gram, written out)."""
    z = features(h)
    m = z.shape[0]
    return _rows_gradient(h, 4.0 * (z @ z.T) @ z / m ** 2)


def matrix_entropy_grad(h, alpha: float = 1.0) -> np.ndarray:
    """dH_alpha/dh (m, d) of ``matrix_entropy`` for full-rank feature Grams (M >= d): with
    ``K̂ = S/t``, S = ZᵀZ, t = tr S, eigenpairs (λ, V) of K̂ and ``φ'`` the derivative of H in
    each λ (-(log λ + 1) for alpha = 1, alpha λ^(alpha-1) / ((1-alpha) Σ λ^alpha) else):
    ``D = V diag(φ') Vᵀ``, ``dH/dS = (D - tr(K̂D) I)/t``, ``dH/dZ = 2 Z dH/dS``."""
    z = features(h)
    s = z.T @ z
    t = np.trace(s)
    lam, v = np.linalg.eigh(s / t)
    if alpha == 1:
        dphi = -(np.log(lam) + 1.0)
    else:
        dphi = alpha * lam ** (alpha - 1) / ((1.0 - alpha) * (lam ** alpha).sum())
    dmat = (v * dphi) @ v.T
    ds = (dmat - np.trace((s / t) @ dmat) * np.eye(s.shape[0])) / t
    return _rows_gradient(h, 2.0 * z @ ds)
