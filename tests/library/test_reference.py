"""mmae_fast.reference against independent float64 formulas (numpy eigenvalues, dense J)."""
import numpy as np
import pytest
import torch

from mmae_fast import reference as R
from mmae_fast import series

import independent as ind

SHAPES = [(7, 13), (13, 13), (29, 11), (1, 5)]  # m < d, m = d, m > d, a single row
MUS = [0.5, 1.0, 3.0, 10.0]


def inputs(kind, m, d, gen):
    """Feature matrices with different spectra (float64)."""
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    if kind == "isotropic":
        return h
    if kind == "collapsed":  # rank 1: every row along one direction (random signs and scales)
        return torch.randn(m, 1, generator=gen, dtype=torch.float64) * h[:1]
    if kind == "powerlaw":
        return h * torch.arange(1, d + 1, dtype=torch.float64) ** -1.5
    if kind == "offset":  # a large common mean: centring matters
        return h + 5.0 * torch.randn(1, d, generator=gen, dtype=torch.float64)
    raise ValueError(kind)


@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("mu", MUS)
@pytest.mark.parametrize("centering", [False, True])
def test_tcr_exact_matches_eigenvalue_formula(m, d, mu, centering, gen):
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    got = R.tcr(h, mu, centering=centering).item()
    assert got == pytest.approx(ind.tcr_exact(h, mu, centering), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("m,d", SHAPES)
def test_sylvester_sides_agree(m, d, gen):
    z = R.normalized_features(torch.randn(m, d, generator=gen, dtype=torch.float64))
    for estimator, degree in [("exact", None), ("taylor", 5), ("series", 9)]:
        vals = [R.tcr_from_gram(R.gram(z, side), mu=3.0, m=m, d=d, estimator=estimator,
                                degree=degree).item() for side in ("feature", "sample")]
        assert vals[0] == pytest.approx(vals[1], rel=1e-10, abs=1e-12), estimator
    assert R.gram(z, "smaller").shape[0] == min(m, d)


@pytest.mark.parametrize("m,d", SHAPES)
def test_centering_matches_dense_j(m, d, gen):
    h = inputs("offset", m, d, gen)
    z = R.normalized_features(h, centering=True).numpy()
    assert np.allclose(z.T @ z, ind.features(h, True).T @ ind.features(h, True), atol=1e-12)
    assert np.allclose(R.gram(torch.from_numpy(z), "sample").numpy(),
                       ind.features(h, True) @ ind.features(h, True).T, atol=1e-12)


@pytest.mark.parametrize("m,d", SHAPES)
def test_taylor_order2_is_the_umae_identity(m, d, gen):
    """R ≈ -c·m + (c²/2)·||ZZᵀ||_F² = -c·m + (c² m²/2)·uniformity."""
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    mu = 0.7
    c = mu / d
    taylor2 = R.tcr(h, mu, estimator="taylor", degree=2).item()
    assert taylor2 == pytest.approx(-c * m + c**2 * m**2 / 2 * R.uniformity(h).item(), rel=1e-12)
    # the U-MAE weight with the same gradient as lambda·R's order-2 term
    lamb = 0.01
    w = R.uniformity_equivalent_weight(lamb, mu, m, d)
    assert w * R.uniformity(h).item() == pytest.approx(lamb * (taylor2 + c * m), rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 7])
def test_taylor_matches_truncated_eigen_series(order, gen):
    h = torch.randn(11, 17, generator=gen, dtype=torch.float64)
    mu = 2.0
    expected = ind.tcr_taylor(h, mu, order)
    assert R.tcr(h, mu, estimator="taylor", degree=order).item() == pytest.approx(expected, rel=1e-11)


@pytest.mark.parametrize("kind", ["isotropic", "collapsed", "powerlaw", "offset"])
@pytest.mark.parametrize("m,d", [(9, 24), (16, 16), (40, 12)])
@pytest.mark.parametrize("mu", MUS)
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_safe_series_meets_tolerance(kind, m, d, mu, tol, gen):
    h = inputs(kind, m, d, gen)
    for centering in (False, True):
        exact = ind.tcr_exact(h, mu, centering)
        value, bound = R.tcr_series(h, mu, centering=centering, tol=tol)
        err = abs(value.item() - exact)
        assert err <= tol * abs(exact) + 1e-13, (centering, err, exact)
        assert err <= bound.item() + 1e-13
        assert bound.item() <= tol * abs(exact) * 1.0001 + 1e-13  # a-priori relative guarantee


def test_series_degree_is_minimal_and_grows_with_kappa():
    for kappa in [1.05, 2.0, 4.0, 31.0, 400.0]:
        for tol in [1e-3, 1e-6]:
            deg = series.series_degree(kappa, tol)
            assert series.relative_error_bound(kappa, deg) <= tol
            if deg > 1:
                assert series.relative_error_bound(kappa, deg - 1) > tol
    assert series.series_degree(4.0, 1e-4) < series.series_degree(400.0, 1e-4)


@pytest.mark.parametrize("kappa", [1.3, 4.0, 64.0])
def test_chebyshev_polynomial_error_within_bound(kappa):
    degree = 7
    p = series.chebyshev_coefficients(kappa, degree)
    y = np.linspace(0.0, kappa - 1.0, 4001)
    approx = np.polynomial.chebyshev.chebval(2 * y / (kappa - 1) - 1, p)
    assert abs(approx[0]) < 1e-14  # P(0) = 0
    ratio = np.abs(approx[1:] - np.log1p(y[1:])) / y[1:]
    assert ratio.max() <= series.chebyshev_error(kappa, degree)
    assert ratio.max() > 0.2 * series.chebyshev_error(kappa, degree)  # the bound is not loose


@pytest.mark.parametrize("m,d", [(9, 20), (20, 9)])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 2.5, 3.0])
def test_entropies_match_eigenvalue_formulas(m, d, alpha, gen):
    h1 = torch.randn(m, d, generator=gen, dtype=torch.float64)
    h2 = inputs("powerlaw", m, d + 3, gen)
    assert R.renyi_entropy(h1, alpha).item() == pytest.approx(ind.matrix_entropy(h1, alpha),
                                                                  rel=1e-9)
    assert R.joint_entropy(h1, h2, alpha).item() == pytest.approx(ind.joint_entropy(h1, h2, alpha),
                                                                  rel=1e-9)
    mi = ind.mutual_information(h1, h2, alpha)
    assert R.mutual_information(h1, h2, alpha).item() == pytest.approx(mi, rel=1e-8, abs=1e-10)


def test_renyi2_identity_and_alpha_to_one_limit(gen):
    h = torch.randn(15, 10, generator=gen, dtype=torch.float64)
    assert R.renyi_entropy(h, 2.0).item() == pytest.approx(-np.log(R.uniformity(h).item()), rel=1e-12)
    h1 = R.renyi_entropy(h, 1.0).item()
    for a in (1 - 1e-6, 1 + 1e-6):
        assert R.renyi_entropy(h, a).item() == pytest.approx(h1, abs=1e-5)
    assert R.renyi_entropy(h, 0.9).item() > h1 > R.renyi_entropy(h, 1.1).item()  # decreasing in alpha


def test_effective_rank_extremes(gen):
    collapsed = inputs("collapsed", 12, 7, gen)
    assert R.effective_rank(collapsed).item() == pytest.approx(1.0, abs=1e-6)
    orthonormal = torch.eye(6, 9, dtype=torch.float64) * 3.0
    assert R.effective_rank(orthonormal).item() == pytest.approx(6.0, rel=1e-10)


def test_mec_matches_direct_formula(gen):
    m, d, eps_sq, order = 10, 6, 4.0, 4
    h1, h2 = (torch.randn(m, d, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = ind.mec(h1, h2, eps_sq=eps_sq, order=order)
    assert R.mec(h1, h2, eps_sq=eps_sq, order=order).item() == pytest.approx(expected, rel=1e-10)
    # d > m (the m x m side), z1 != z2: the same formula on the other side of the products
    w1, w2 = h1[:, :3].repeat(1, 5), h2[:, :3].repeat(1, 5)
    expected = ind.mec(w1, w2, eps_sq=eps_sq, order=order)
    assert R.mec(w1, w2, eps_sq=eps_sq, order=order).item() == pytest.approx(expected, rel=1e-10)


def test_matrix_cross_entropy_matches_direct_formula(gen):
    m, d, mu, order = 12, 5, 1.3, 4
    h1, h2 = (torch.randn(m, d, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = ind.matrix_cross_entropy(h1, h2, mu=mu, order=order)
    assert R.matrix_cross_entropy(h1, h2, mu=mu, order=order).item() == pytest.approx(expected, rel=1e-10)


def test_half_inputs_compute_in_float32(gen):
    h = torch.randn(33, 21, generator=gen).half()
    out = R.tcr(h, 3.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ind.tcr_exact(h.double(), 3.0), rel=1e-5)
    assert R.tcr(h.double(), 3.0).dtype == torch.float64


def test_zero_rows_follow_normalize_eps(gen):
    h = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    h[3] = 0.0
    value = R.tcr(h, 2.0)
    without = torch.cat([h[:3], h[4:]])
    expected = ind.tcr_exact(without, 2.0)  # the zero row adds nothing
    assert value.item() == pytest.approx(expected, rel=1e-12)
    hr = h.clone().requires_grad_()
    R.tcr(hr, 2.0).backward()
    assert hr.grad[3].abs().max() == 0
    wr = without.clone().requires_grad_()
    R.tcr(wr, 2.0).backward()  # the other rows get the gradient they get without the zero row
    assert torch.allclose(torch.cat([hr.grad[:3], hr.grad[4:]]), wr.grad, rtol=1e-12, atol=1e-15)


def test_single_row():
    h = torch.randn(1, 7, dtype=torch.float64)
    assert R.tcr(h, 3.0).item() == pytest.approx(-np.log1p(3.0 / 7), rel=1e-14)
    assert R.effective_rank(h).item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- gradients
def _gc(fn, *tensors):
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("estimator,degree", [("exact", None), ("series", 6), ("taylor", 4)])
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("m,d", [(5, 7), (7, 4)])
def test_gradcheck_tcr(estimator, degree, centering, m, d, gen):
    h = torch.randn(m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    _gc(lambda x: R.tcr(x, 3.0, centering=centering, estimator=estimator, degree=degree), h)


def test_tcr_gradient_formula(gen):
    """The gradient equals its closed form (tests/independent.py: dR/dZ = -2c·Z·A⁻¹ on the
    normalised rows, A = I + c·ZᵀZ, through the normalisation)."""
    m, d, mu = 9, 6, 3.0
    h = torch.randn(m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    R.tcr(h, mu).backward()
    expected = torch.from_numpy(ind.tcr_exact_grad(h, mu))
    assert torch.allclose(h.grad, expected, atol=1e-12)


@pytest.mark.parametrize("name", ["uniformity", "renyi1", "renyi2", "renyi_half", "effective_rank",
                                  "joint", "mutual_information", "mec", "mce"])
def test_gradcheck_other_functions(name, gen):
    h1 = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    fns = {
        "uniformity": (lambda a: R.uniformity(a), (h1,)),
        "renyi1": (lambda a: R.renyi_entropy(a, 1.0), (h1,)),
        "renyi2": (lambda a: R.renyi_entropy(a, 2.0), (h1,)),
        "renyi_half": (lambda a: R.renyi_entropy(a, 0.5), (h1,)),
        "effective_rank": (lambda a: R.effective_rank(a), (h1,)),
        "joint": (lambda a, b: R.joint_entropy(a, b, 1.0), (h1, h2)),
        "mutual_information": (lambda a, b: R.mutual_information(a, b, 2.0), (h1, h2)),
        "mec": (lambda a, b: R.mec(a, b, eps_sq=2.0), (h1, h2)),
        "mce": (lambda a, b: R.matrix_cross_entropy(a, b), (h1, h2)),
    }
    fn, args = fns[name]
    _gc(fn, *args)
