"""The public functions at the numerical extremes, on the reference path, against the independent
float64 formulas of tests/independent.py: features of any size (row norms that would overflow a
plain sum of squares, rows just above the 1e-12 norm floor), non-finite and all-zero features,
large Rényi orders, and pairs of views of different dtypes.
"""
import math

import numpy as np
import pytest
import torch

import independent as ind
import mmae_fast as mf
from extremes import CASES, at_scale, case_id, tcr_grad_error, views
from tolerances import REFERENCE_TOLERANCES, cancellation, exp_condition

def _mec_terms(h1, h2, eps_sq=0.06, order=4):
    z1, z2 = ind.features(h1), ind.features(h2)
    m, d = z1.shape
    nu = np.linalg.eigvals(d / (m * eps_sq) * z1 @ z2.T)
    return [(-1) ** (k + 1) / k * nu ** k for k in range(1, order + 1)]


#: name -> (call on two views (one-view functions take the first), independent value, the
#: cancellation factor of its float arithmetic)
FUNCTIONS = {
    "tcr_loss": (lambda a, b: mf.tcr_loss(a, 2.0), lambda a, b: ind.tcr_exact(a, 2.0),
                 lambda a, b: 1.0),
    "uniformity_loss": (lambda a, b: mf.uniformity_loss(a), lambda a, b: ind.uniformity(a),
                        lambda a, b: 1.0),
    "matrix_entropy": (lambda a, b: mf.matrix_entropy(a), lambda a, b: ind.matrix_entropy(a),
                       lambda a, b: 1.0),
    "matrix_entropy(alpha=2)": (lambda a, b: mf.matrix_entropy(a, 2.0),
                                lambda a, b: ind.matrix_entropy(a, 2.0), lambda a, b: 1.0),
    "effective_rank": (lambda a, b: mf.effective_rank(a), lambda a, b: ind.effective_rank(a),
                       lambda a, b: exp_condition(ind.matrix_entropy(a))),
    "matrix_joint_entropy": (mf.matrix_joint_entropy, ind.joint_entropy, lambda a, b: 1.0),
    "matrix_mutual_information": (
        mf.matrix_mutual_information, ind.mutual_information,
        lambda a, b: cancellation([ind.matrix_entropy(a), ind.matrix_entropy(b),
                                   -ind.joint_entropy(a, b)])),
    "mec_loss": (mf.mec_loss, ind.mec, lambda a, b: cancellation(_mec_terms(a, b))),
    "matrix_cross_entropy": (mf.matrix_cross_entropy, ind.matrix_cross_entropy,
                             lambda a, b: 1.0),
}
TWO_VIEWS = ["matrix_joint_entropy", "matrix_mutual_information", "mec_loss",
             "matrix_cross_entropy"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_values_at_extreme_scales(name, case):
    """Every function normalises the rows itself: features of any finite size give the value of
    the rounded input (a plain sum of squares overflows beyond ~1e19 in float32 / bfloat16)."""
    dtype, scale, floor_rows = case
    call, formula, cond = FUNCTIONS[name]
    h1, h2 = (at_scale(h, dtype, scale, floor_rows) for h in views())
    got = call(h1, h2).item()
    a, b = h1.double(), h2.double()
    expected = formula(a, b)
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=REFERENCE_TOLERANCES[dtype][0] * cond(a, b))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tcr_gradient_at_extreme_scales(case):
    """dR/dh ~ 1/||h_i||, compared row by row at the rows' own scale; half gradients within the
    tolerance or twice the rounding of the expected one to their dtype."""
    dtype, scale, floor_rows = case
    h = at_scale(views()[0], dtype, scale, floor_rows).requires_grad_(True)
    mf.tcr_loss(h, 2.0).backward()
    assert h.grad.dtype == dtype and bool(torch.isfinite(h.grad).all())
    err, floor = tcr_grad_error(h.grad, h, 2.0)
    assert err <= max(REFERENCE_TOLERANCES[dtype][1], 2.0 * floor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_check_finite_accepts_large_finite_features(dtype):
    """check_finite=True raises for NaN / Inf only: finite features of 1e30 pass and are right."""
    h = at_scale(views()[0], dtype, 1e30)
    got = mf.tcr_loss(h, 2.0, check_finite=True).item()
    assert got == pytest.approx(ind.tcr_exact(h.double(), 2.0),
                                rel=REFERENCE_TOLERANCES[dtype][0])
    h[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        mf.tcr_loss(h, 2.0, check_finite=True)


# ----------------------------------------------------------------------------- non-finite, zero
ENTROPIES = {
    **{f"matrix_entropy(alpha={a})": (lambda a_: lambda z: mf.matrix_entropy(z, a_))(a)
       for a in (0.5, 1.0, 2.0, 2.5, 100.0)},
    "effective_rank": mf.effective_rank,
    "matrix_joint_entropy": lambda z: mf.matrix_joint_entropy(z, z.flip(0)),
    "matrix_mutual_information": lambda z: mf.matrix_mutual_information(z, z.flip(0)),
}
OTHERS = {
    "tcr_loss": lambda z: mf.tcr_loss(z, 2.0),
    "uniformity_loss": mf.uniformity_loss,
    "mec_loss": lambda z: mf.mec_loss(z, z.flip(0)),
    "matrix_cross_entropy": lambda z: mf.matrix_cross_entropy(z, z.flip(0)),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("shape", [(1, 3), (2, 5), (5, 2), (3, 3), (16, 20)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [*ENTROPIES, *OTHERS])
def test_non_finite_features_give_nan(name, dtype, shape, value):
    """Without check_finite a NaN / Inf entry gives NaN, never a plausible number or an
    exception (eigvalsh on a NaN matrix either fails or returns finite values)."""
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    z[0, 0] = value
    assert math.isnan({**ENTROPIES, **OTHERS}[name](z).item())


@pytest.mark.parametrize("shape", [(1, 3), (2, 5), (5, 2), (16, 20)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_features_have_zero_entropy(dtype, shape):
    """All-zero features (no positive eigenvalue): H_alpha = 0 for every alpha, effective rank 1,
    as for one direction repeated; a finite zero gradient."""
    for alpha in (0.5, 1.0, 2.0, 2.5, 100.0):
        z = torch.zeros(*shape, dtype=dtype, requires_grad=True)
        value = mf.matrix_entropy(z, alpha)
        assert value.item() == 0.0
        value.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))
    assert mf.effective_rank(torch.zeros(*shape, dtype=dtype)).item() == 1.0


def test_zero_rows_among_others_are_ignored():
    """Zero rows add zero rows and columns to K: the entropy is that of the other rows."""
    h, _ = views(12, 7)
    padded = torch.cat([h, torch.zeros(3, 7, dtype=h.dtype)])
    for alpha in (0.5, 1.0, 2.0):
        assert mf.matrix_entropy(padded, alpha).item() == pytest.approx(
            ind.matrix_entropy(h, alpha), rel=1e-12)


# ----------------------------------------------------------------------------- large alpha
@pytest.mark.parametrize("alpha", [9.0, 100.0, 1000.0, 1e6])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m,d", [(9, 20), (20, 9)])
def test_large_alpha(dtype, alpha, m, d):
    """tr(K̂^alpha) underflows for large alpha; log tr(K̂^alpha) = logsumexp(alpha·log λ) does
    not. H_alpha decreases towards the min-entropy -log λ_max."""
    h, h2 = (x.to(dtype) for x in views(m, d))
    tol = REFERENCE_TOLERANCES[dtype][0]
    got = mf.matrix_entropy(h, alpha).item()
    assert got == pytest.approx(ind.matrix_entropy(h, alpha), rel=tol)
    assert mf.matrix_joint_entropy(h, h2, alpha).item() == pytest.approx(
        ind.joint_entropy(h, h2, alpha), rel=tol)
    assert got < ind.matrix_entropy(h, 8.0)
    x = h.clone().requires_grad_(True)
    mf.matrix_entropy(x, alpha).backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().max()) > 0


# ----------------------------------------------------------------------------- mixed dtypes
@pytest.mark.parametrize("dtypes,common", [
    ((torch.float32, torch.float64), torch.float64),
    ((torch.float64, torch.bfloat16), torch.float64),
    ((torch.bfloat16, torch.float32), torch.float32),
    ((torch.float16, torch.bfloat16), torch.float32),
])
@pytest.mark.parametrize("name", TWO_VIEWS)
def test_mixed_dtype_pairs(name, dtypes, common):
    """Two views of different dtypes compute in the compute dtype of their promoted dtype
    (float64 if either is float64, else float32): the value is that of both views cast to it,
    and each view's gradient comes back in its own dtype."""
    call, formula, cond = FUNCTIONS[name]
    h1, h2 = (h.to(t).requires_grad_(True) for h, t in zip(views(12, 7), dtypes))
    value = call(h1, h2)
    assert value.dtype == common
    a, b = h1.detach().double(), h2.detach().double()
    tol = REFERENCE_TOLERANCES[common][0] * cond(a, b)
    assert value.item() == pytest.approx(formula(a, b), rel=tol)
    value.backward()
    assert h1.grad.dtype == dtypes[0] and h2.grad.dtype == dtypes[1]
    same = call(h1.detach().to(common), h2.detach().to(common)).item()
    assert value.item() == pytest.approx(same, rel=REFERENCE_TOLERANCES[common][0])
