"""Values of the public ``tcr_loss`` (reference path) against independent float64 formulas.

Expected values come from tests/independent.py (numpy eigenvalues / slogdet, dense J), never from
``mmae_fast``; tolerances from tests/tolerances.py (REFERENCE_TOLERANCES, measured). Every
argument (mu, centering, estimator, order, tol) is shown to change the expected value by more
than the tolerance, so a wrapper that ignores it fails.
"""
import warnings

import numpy as np
import pytest
import torch

import independent as ind
import mmae_fast as mf
from mmae_fast import series
from tolerances import REFERENCE_TOLERANCES, cancellation

SHAPES = [(7, 13), (16, 16), (40, 12), (1, 5)]  # m < d (sample side), m = d, m > d, one row
DTYPES = [torch.float64, torch.float32]


def batch(m, d, seed=0, offset=0.5, dtype=torch.float64):
    """Random rows with a common offset (so centring changes the value)."""
    g = torch.Generator().manual_seed(1000 * m + d + seed)
    h = torch.randn(m, d, generator=g, dtype=torch.float64)
    return (h + offset * torch.randn(1, d, generator=g, dtype=torch.float64)).to(dtype)


def vtol(dtype):
    return REFERENCE_TOLERANCES[dtype][0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("mu", [0.5, 3.0])
@pytest.mark.parametrize("centering", [False, True])
def test_exact_equals_eigenvalue_formula(dtype, m, d, mu, centering):
    h = batch(m, d, dtype=dtype)
    if centering and m == 1:
        expected = 0.0  # one centred row is zero: logdet(I) = 0
        assert mf.tcr_loss(h, mu, centering=True).item() == expected
        return
    expected = ind.tcr_exact(h, mu, centering)
    assert expected == pytest.approx(ind.tcr_slogdet(h, mu, centering), rel=1e-13)
    got = mf.tcr_loss(h, mu, centering=centering, backend="reference").item()
    assert got == pytest.approx(expected, rel=vtol(dtype))


@pytest.mark.parametrize("m,d", SHAPES[:3])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("centering", [False, True])
def test_taylor_equals_sum_of_eigenvalue_powers(m, d, order, centering):
    """taylor: R = -Σ_k a_k Σ_i (mu/d·λ_i)^k exactly (no convergence needed for the identity)."""
    h, mu = batch(m, d), 0.4
    y = mu / d * ind.gram_eigenvalues(h, centering)
    terms = [(-1) ** (k + 1) / k * (y ** k).sum() for k in range(1, order + 1)]
    expected = ind.tcr_taylor(h, mu, order, centering)
    with warnings.catch_warnings():  # mu·m/d >= 1 warns; the identity holds regardless
        warnings.simplefilter("ignore", RuntimeWarning)
        got = mf.tcr_loss(h, mu, centering=centering, estimator="taylor", order=order).item()
    assert got == pytest.approx(expected, rel=vtol(torch.float64) * cancellation(terms))


@pytest.mark.parametrize("m,d", SHAPES[:3])
@pytest.mark.parametrize("mu", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("order", [2, 5, 9])
@pytest.mark.parametrize("centering", [False, True])
def test_series_within_its_stated_bound(m, d, mu, order, centering):
    """series of degree D: |R_D - R| <= relative_error_bound(kappa, D)·|R|, and the bound is
    not vacuous (the error reaches at least 1e-4 of it at low degree)."""
    h = batch(m, d)
    exact = ind.tcr_exact(h, mu, centering)
    bound = series.relative_error_bound(series.kappa(mu, m, d), order)
    got = mf.tcr_loss(h, mu, centering=centering, estimator="series", order=order).item()
    assert abs(got - exact) <= bound * abs(exact) + 1e-14 * abs(exact)


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-8])
def test_series_default_degree_meets_tol(tol):
    h = batch(64, 24)
    exact = ind.tcr_exact(h, 3.0)
    got = mf.tcr_loss(h, 3.0, estimator="series", tol=tol).item()
    assert abs(got - exact) <= tol * abs(exact)


def test_every_argument_changes_the_value():
    """Two settings of each argument give expected values further apart than the tolerance,
    and the loss follows both (a wrapper ignoring the argument fails)."""
    h, tol = batch(24, 16, offset=1.0), 1e-10
    cases = [
        ({"mu": 1.0}, {"mu": 3.0}, lambda mu=1.0, centering=False: ind.tcr_exact(h, mu, centering)),
        ({"centering": False}, {"centering": True},
         lambda mu=1.0, centering=False: ind.tcr_exact(h, mu, centering)),
    ]
    for a, b, formula in cases:
        ea, eb = formula(**a), formula(**b)
        assert abs(ea - eb) > 1e-3 * abs(ea)
        assert mf.tcr_loss(h, **a).item() == pytest.approx(ea, rel=tol)
        assert mf.tcr_loss(h, **b).item() == pytest.approx(eb, rel=tol)
    # order: Taylor 3 vs 4
    t3, t4 = ind.tcr_taylor(h, 0.5, 3), ind.tcr_taylor(h, 0.5, 4)
    assert abs(t3 - t4) > 1e-4 * abs(t3)
    assert mf.tcr_loss(h, 0.5, estimator="taylor", order=3).item() == pytest.approx(t3, rel=tol)
    assert mf.tcr_loss(h, 0.5, estimator="taylor", order=4).item() == pytest.approx(t4, rel=tol)
    # order for series: degree 2 vs 3 differ (each within its bound, checked above)
    s2 = mf.tcr_loss(h, 3.0, estimator="series", order=2).item()
    s3 = mf.tcr_loss(h, 3.0, estimator="series", order=3).item()
    assert abs(s2 - s3) > 1e-6 * abs(s2)
    # estimator: exact vs taylor differ by the truncation
    assert abs(mf.tcr_loss(h, 0.5).item() - t4) > 1e-6 * abs(t4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("m,d", [(12, 6), (5, 9)])
def test_gradient_equals_closed_form(dtype, centering, m, d):
    """dR/dh = normalisation-Jacobian · (-2c·Zc·(I + c·ZcᵀZc)⁻¹), numpy float64; half inputs
    get their gradient in their own dtype (rounded: tolerance ~2u)."""
    g = torch.Generator().manual_seed(m + d)
    h = (torch.randn(m, d, generator=g, dtype=torch.float64) / d ** 0.5 + 0.1).to(dtype)
    x = h.clone().requires_grad_()
    mf.tcr_loss(x, 3.0, centering=centering).backward()
    assert x.grad.dtype == dtype
    expected = torch.from_numpy(ind.tcr_exact_grad(h.double(), 3.0, centering))
    err = float((x.grad.double() - expected).norm() / expected.norm())
    assert err <= REFERENCE_TOLERANCES[dtype][1]


def test_repeated_calls_are_bit_identical():
    h = batch(33, 20, dtype=torch.float32).requires_grad_()
    values, grads = [], []
    for _ in range(2):
        v = mf.tcr_loss(h, 3.0, centering=True)
        (g,) = torch.autograd.grad(v, h)
        values.append(v)
        grads.append(g)
    assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------- series coefficients
KAPPAS = [1.05, 1.3, 2.0, 4.0, 31.0, 400.0]


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("degree", [1, 2, 5, 12, 40])
def test_chebyshev_coefficients_match_numpy_interpolation(kappa, degree):
    got = np.array(series.chebyshev_coefficients(kappa, degree))
    want = ind.chebyshev_log1p(kappa, degree)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("degree", [1, 3, 8, 20])
def test_chebyshev_polynomial_respects_its_bounds(kappa, degree):
    """|P(y) - log1p(y)| <= eps_q·y at 20001 points of [0, kappa-1] (eps_q = chebyshev_error),
    and so a spectrum anywhere in the interval meets relative_error_bound."""
    p = series.chebyshev_coefficients(kappa, degree)
    y = np.linspace(0.0, kappa - 1.0, 20001)
    approx = np.polynomial.chebyshev.chebval(2.0 * y / (kappa - 1.0) - 1.0, p)
    eps_q = series.chebyshev_error(kappa, degree)
    assert abs(approx[0]) <= 1e-14
    err = np.abs(approx[1:] - np.log1p(y[1:]))
    assert (err <= eps_q * y[1:] + 1e-15).all()
    assert (err <= series.relative_error_bound(kappa, degree) * np.log1p(y[1:]) + 1e-15).all()


@pytest.mark.parametrize("kappa", [2.0, 31.0])
def test_chebyshev_error_is_not_loose_and_decays(kappa):
    """eps_q is attained within 5x on the grid at low degree, and decays with the degree at
    about rho = (sqrt(kappa)-1)/(sqrt(kappa)+1) per degree."""
    y = np.linspace(1e-9, kappa - 1.0, 20001)
    for degree in (2, 4):
        p = series.chebyshev_coefficients(kappa, degree)
        approx = np.polynomial.chebyshev.chebval(2.0 * y / (kappa - 1.0) - 1.0, p)
        worst = np.max(np.abs(approx - np.log1p(y)) / y)
        assert worst >= series.chebyshev_error(kappa, degree) / 5
    rho = (kappa ** 0.5 - 1) / (kappa ** 0.5 + 1)
    ratio = series.chebyshev_error(kappa, 12) / series.chebyshev_error(kappa, 6)
    assert rho ** 6 / 10 <= ratio <= rho ** 6 * 10


def test_taylor_coefficients():
    assert series.taylor_coefficients(5) == (1.0, -0.5, 1 / 3, -0.25, 0.2)


def test_kappa_is_the_spectral_bound():
    """kappa = 1 + mu·m/d bounds the spectrum of I + mu/d·ZᵀZ, attained by collapsed rows."""
    assert series.kappa(3.0, 40, 12) == 1.0 + 3.0 * 40 / 12
    collapsed = torch.ones(40, 12, dtype=torch.float64)
    top = 1.0 + 3.0 / 12 * ind.gram_eigenvalues(collapsed).max()
    assert top == pytest.approx(series.kappa(3.0, 40, 12), rel=1e-12)
