"""Values of the public uniformity / entropy / MI / MEC / MCE functions against independent
float64 formulas (tests/independent.py: eigenvalues of dense matrices, never ``mmae_fast``).

Each argument (alpha, eps_sq, order, mu) is shown to change the expected value by more than the
tolerance, and the two views always differ (z1 != z2), so a wrapper that ignores an argument or
uses one view for the other fails.
"""
import math

import numpy as np
import pytest
import torch

import independent as ind
import mmae_fast as mf
from tolerances import REFERENCE_TOLERANCES, cancellation, exp_condition

SHAPES = [(9, 20), (20, 9), (12, 12)]  # m < d, m > d, m = d
DTYPES = [torch.float64, torch.float32]
ALPHAS = [0.5, 1.0, 2.0, 2.5, 3.0]


def views(m, d, dtype=torch.float64, seed=0, d2=None):
    """Two different, correlated views (m, d) and (m, d2) with a power-law spectrum."""
    g = torch.Generator().manual_seed(100 * m + d + seed)
    h1 = torch.randn(m, d, generator=g, dtype=torch.float64) * torch.arange(1, d + 1) ** -0.7
    d2 = d if d2 is None else d2
    h2 = h1[:, :d2] if d2 <= d else torch.cat([h1, h1[:, : d2 - d]], 1)
    h2 = h2 + 0.8 * torch.randn(m, d2, generator=g, dtype=torch.float64)
    return h1.to(dtype), h2.to(dtype)


def close(got, expected, dtype, cond=1.0):
    return got == pytest.approx(expected, rel=REFERENCE_TOLERANCES[dtype][0] * cond)


def _taylor_terms(nu, order):
    """Every term a_k·ν_i^k of Σ_k a_k tr(C^k) = Σ_k a_k Σ_i ν_i^k (for its cancellation)."""
    return [(-1) ** (k + 1) / k * nu ** k for k in range(1, order + 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d", SHAPES)
def test_uniformity(dtype, m, d):
    h, _ = views(m, d, dtype)
    assert close(mf.uniformity_loss(h).item(), ind.uniformity(h), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_matrix_entropy(dtype, m, d, alpha):
    h, _ = views(m, d, dtype)
    assert close(mf.matrix_entropy(h, alpha).item(), ind.matrix_entropy(h, alpha), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d", SHAPES)
def test_effective_rank(dtype, m, d):
    h, _ = views(m, d, dtype)
    expected = ind.effective_rank(h)
    assert 1.0 < expected < min(m, d)
    assert close(mf.effective_rank(h).item(), expected, dtype, exp_condition(np.log(expected)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d,d2", [(9, 20, 7), (20, 9, 12), (12, 12, 12)])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_joint_entropy_and_mutual_information(dtype, m, d, d2, alpha):
    h1, h2 = views(m, d, dtype, d2=d2)
    assert close(mf.matrix_joint_entropy(h1, h2, alpha).item(), ind.joint_entropy(h1, h2, alpha),
                 dtype)
    mi = ind.mutual_information(h1, h2, alpha)
    # MI is a difference of entropies: its rounding error is that of the entropies
    cond = cancellation([ind.matrix_entropy(h1, alpha), ind.matrix_entropy(h2, alpha),
                         -ind.joint_entropy(h1, h2, alpha)])
    assert close(mf.matrix_mutual_information(h1, h2, alpha).item(), mi, dtype, cond)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d", SHAPES)  # d <= m (feature side) and d > m (sample side)
@pytest.mark.parametrize("eps_sq,order", [(8.0, 4), (2.0, 3), (20.0, 6)])
def test_mec(dtype, m, d, eps_sq, order):
    h1, h2 = views(m, d, dtype)
    z1, z2 = ind.features(h1), ind.features(h2)
    nu = np.linalg.eigvals(d / (m * eps_sq) * z1 @ z2.T)
    expected = ind.mec(h1, h2, eps_sq, order)
    got = mf.mec_loss(h1, h2, eps_sq=eps_sq, order=order).item()
    assert close(got, expected, dtype, cancellation(_taylor_terms(nu, order)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("mu,order", [(1.0, 4), (0.7, 2), (1.5, 5)])
def test_matrix_cross_entropy(dtype, m, d, mu, order):
    h1, h2 = views(m, d, dtype)
    expected = ind.matrix_cross_entropy(h1, h2, mu, order)
    got = mf.matrix_cross_entropy(h1, h2, mu=mu, order=order).item()
    assert close(got, expected, dtype)


def _differs(a, b, rel=1e-4):
    return abs(a - b) > rel * max(abs(a), abs(b))


@pytest.mark.parametrize("m,d", [(9, 20), (20, 9)])
def test_every_argument_and_view_changes_the_value(m, d):
    """Each pair of settings gives expected values apart by far more than the tolerance (1e-10
    in float64); the functions follow both settings."""
    h1, h2 = views(m, d)
    tol = 1e-10
    for a, b in [(0.5, 1.0), (1.0, 2.0), (2.0, 3.0)]:
        for fn, formula, args in [
            (mf.matrix_entropy, ind.matrix_entropy, (h1,)),
            (mf.matrix_joint_entropy, ind.joint_entropy, (h1, h2)),
            (mf.matrix_mutual_information, ind.mutual_information, (h1, h2)),
        ]:
            ea, eb = formula(*args, a), formula(*args, b)
            assert _differs(ea, eb), (fn.__name__, a, b)
            assert fn(*args, alpha=a).item() == pytest.approx(ea, rel=tol)
            assert fn(*args, alpha=b).item() == pytest.approx(eb, rel=tol)
    for kw_a, kw_b in [({"eps_sq": 8.0}, {"eps_sq": 4.0}), ({"order": 4}, {"order": 3})]:
        ea, eb = ind.mec(h1, h2, **kw_a), ind.mec(h1, h2, **kw_b)
        assert _differs(ea, eb)
        assert mf.mec_loss(h1, h2, **kw_a).item() == pytest.approx(ea, rel=1e-9)
        assert mf.mec_loss(h1, h2, **kw_b).item() == pytest.approx(eb, rel=1e-9)
    for kw_a, kw_b in [({"mu": 1.0}, {"mu": 1.2}), ({"order": 4}, {"order": 2})]:
        ea, eb = ind.matrix_cross_entropy(h1, h2, **kw_a), ind.matrix_cross_entropy(h1, h2, **kw_b)
        assert _differs(ea, eb, 1e-6)
        assert mf.matrix_cross_entropy(h1, h2, **kw_a).item() == pytest.approx(ea, rel=tol)
        assert mf.matrix_cross_entropy(h1, h2, **kw_b).item() == pytest.approx(eb, rel=tol)
    # the two views matter: swapping them or passing one twice changes MEC / MCE / joint
    for fn, formula in [(mf.mec_loss, ind.mec), (mf.matrix_cross_entropy, ind.matrix_cross_entropy),
                        (mf.matrix_joint_entropy, ind.joint_entropy)]:
        assert _differs(formula(h1, h2), formula(h1, h1), 1e-6), fn.__name__
        assert fn(h1, h1).item() == pytest.approx(formula(h1, h1), rel=1e-9)
    # (swapping the views leaves MEC and MCE unchanged: tr((AᵀB)^k) = tr((BᵀA)^k))


def test_known_values():
    """Closed forms: orthonormal rows have H_alpha = log m, effective rank m, uniformity 1/m;
    one direction repeated has H = 0, effective rank 1; MI of a view with itself is H."""
    eye = torch.eye(6, 10, dtype=torch.float64) * 2.5
    for alpha in ALPHAS:
        assert mf.matrix_entropy(eye, alpha).item() == pytest.approx(math.log(6.0), rel=1e-13)
    assert mf.effective_rank(eye).item() == pytest.approx(6.0, rel=1e-13)
    assert mf.uniformity_loss(eye).item() == pytest.approx(1 / 6, rel=1e-14)
    collapsed = torch.randn(8, 1, dtype=torch.float64).abs() * torch.randn(1, 5, dtype=torch.float64)
    assert mf.matrix_entropy(collapsed).item() == pytest.approx(0.0, abs=1e-12)
    assert mf.effective_rank(collapsed).item() == pytest.approx(1.0, abs=1e-12)
    h1, _ = views(12, 7)
    assert mf.matrix_mutual_information(h1, h1, 2.0).item() == pytest.approx(
        2 * ind.matrix_entropy(h1, 2.0) - ind.joint_entropy(h1, h1, 2.0), rel=1e-12)
