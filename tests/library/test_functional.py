"""Public API: input checks, output dtypes and values (against the independent float64 formulas
of tests/independent.py), backend dispatch."""
import numpy as np
import pytest
import torch

import independent as ind
import mmae_fast as mf
from mmae_fast import backends, series
from mmae_fast.ops.tcr import registry
from mmae_fast import reference as R
from tolerances import REFERENCE_TOLERANCES, cancellation, exp_condition

ONE_VIEW = {
    "tcr_loss": lambda z, **kw: mf.tcr_loss(z, 2.0, **kw),
    "uniformity_loss": mf.uniformity_loss,
    "matrix_entropy": mf.matrix_entropy,
    "effective_rank": mf.effective_rank,
}
TWO_VIEWS = {
    "matrix_joint_entropy": mf.matrix_joint_entropy,
    "matrix_mutual_information": mf.matrix_mutual_information,
    "mec_loss": mf.mec_loss,
    "matrix_cross_entropy": mf.matrix_cross_entropy,
}


def _all_calls():
    for name, fn in ONE_VIEW.items():
        yield name, lambda z, fn=fn, **kw: fn(z, **kw)
    for name, fn in TWO_VIEWS.items():
        yield name, lambda z, fn=fn, **kw: fn(z, z, **kw)


CALLS = dict(_all_calls())

#: name -> (independent value of CALLS[name](h), cancellation factor of its float arithmetic)
EXPECTED = {
    "tcr_loss": lambda h: (ind.tcr_exact(h, 2.0), 1.0),
    "uniformity_loss": lambda h: (ind.uniformity(h), 1.0),
    "matrix_entropy": lambda h: (ind.matrix_entropy(h), 1.0),
    "effective_rank": lambda h: (ind.effective_rank(h), exp_condition(ind.matrix_entropy(h))),
    "matrix_joint_entropy": lambda h: (ind.joint_entropy(h, h), 1.0),
    "matrix_mutual_information": lambda h: (
        ind.mutual_information(h, h),
        cancellation([2 * ind.matrix_entropy(h), -ind.joint_entropy(h, h)])),
    "mec_loss": lambda h: (ind.mec(h, h), cancellation(_mec_terms(h))),
    "matrix_cross_entropy": lambda h: (ind.matrix_cross_entropy(h, h), 1.0),
}


def _mec_terms(h, eps_sq=0.06, order=4):
    z = ind.features(h)
    m, d = z.shape
    nu = np.linalg.eigvals(d / (m * eps_sq) * z @ z.T)
    return [(-1) ** (k + 1) / k * nu ** k for k in range(1, order + 1)]


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("bad,exc,match", [
    (torch.randn(5), ValueError, "must be 2-D"),
    (torch.randn(2, 3, 4), ValueError, "must be 2-D"),
    (torch.ones(4, 3, dtype=torch.int64), TypeError, "floating dtype.*float()"),
    (torch.randn(0, 3), ValueError, "empty batch"),
    (torch.randn(3, 0), ValueError, "d = 0"),
    ([[1.0, 2.0]], TypeError, "torch.Tensor"),
])
def test_bad_features_raise_naming_the_argument(name, bad, exc, match):
    with pytest.raises(exc, match=match):
        CALLS[name](bad)


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_check_finite(name, value):
    z = torch.randn(6, 4)
    z[2, 1] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        CALLS[name](z, check_finite=True)


@pytest.mark.parametrize("name", TWO_VIEWS)
def test_two_views_must_match(name):
    fn = TWO_VIEWS[name]
    with pytest.raises(ValueError, match="same number of rows"):
        fn(torch.randn(5, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="same device"):
        fn(torch.randn(5, 4), torch.randn(5, 4, device="meta"))


def test_same_width_required_where_the_formula_needs_it():
    for fn in (mf.mec_loss, mf.matrix_cross_entropy):
        with pytest.raises(ValueError, match="same feature dimension"):
            fn(torch.randn(5, 4), torch.randn(5, 3))
    h1, h2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert mf.matrix_mutual_information(h1, h2).item() == pytest.approx(
        ind.mutual_information(h1, h2), rel=1e-12, abs=1e-13)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"mu": 0.0}, ValueError, "mu must be a finite number > 0"),
    ({"mu": -1.0}, ValueError, "mu must be"),
    ({"mu": float("nan")}, ValueError, "mu must be"),
    ({"mu": "3"}, TypeError, "mu must be a real number"),
    ({"estimator": "lu"}, ValueError, "estimator must be one of"),
    ({"estimator": "taylor", "order": 0}, ValueError, "order must be >= 1"),
    ({"estimator": "series", "order": 2.5}, TypeError, "order must be an int"),
    ({"estimator": "exact", "order": 3}, ValueError, "order applies to"),
    ({"estimator": "series", "tol": 0.0}, ValueError, "tol must be"),
    ({"estimator": "series", "tol": -1e-3}, ValueError, "tol must be"),
    ({"estimator": "series", "tol": 1e-300}, ValueError, "needs a series degree above"),
    ({"estimator": "series", "tol": 1.0}, ValueError, r"give 0 < tol < 1"),
    ({"estimator": "series", "tol": 5.0}, ValueError, r"give 0 < tol < 1"),
    ({"grad_semantics": "mean"}, ValueError, "grad_semantics must be one of"),
    ({"backend": "cudnn"}, ValueError, "backend must be one of"),
    ({"centering": 1}, TypeError, "centering must be True or False"),
    ({"group": object()}, ValueError, "torch.distributed is not initialised"),
])
def test_tcr_loss_bad_arguments(kwargs, exc, match):
    kwargs = dict(kwargs)
    mu = kwargs.pop("mu", 1.0)
    with pytest.raises(exc, match=match):
        mf.tcr_loss(torch.randn(6, 4), mu, **kwargs)


def test_other_bad_arguments():
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match="alpha must be"):
        mf.matrix_entropy(z, alpha=0.0)
    with pytest.raises(ValueError, match="eps_sq must be"):
        mf.mec_loss(z, z, eps_sq=-1.0)
    with pytest.raises(ValueError, match="order must be >= 1"):
        mf.matrix_cross_entropy(z, z, order=0)
    with pytest.raises(ValueError, match="no 'triton' kernel yet"):
        mf.matrix_entropy(z, backend="triton")


@pytest.mark.parametrize("dtype,out", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                       (torch.float32, torch.float32), (torch.float64, torch.float64)])
@pytest.mark.parametrize("name", CALLS)
def test_output_is_a_scalar_of_the_compute_dtype_with_the_independent_value(name, dtype, out):
    """Half inputs compute in float32: the value is that of the rounded input to fp32 accuracy."""
    h = torch.randn(9, 5, generator=torch.Generator().manual_seed(3)).to(dtype)
    y = CALLS[name](h)
    assert y.shape == () and y.dtype == out
    expected, cond = EXPECTED[name](h.double())
    assert y.item() == pytest.approx(expected, rel=REFERENCE_TOLERANCES[dtype][0] * cond)


@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
@pytest.mark.parametrize("centering", [False, True])
def test_tcr_loss_equals_reference_and_is_differentiable(estimator, centering, gen):
    z = torch.randn(17, 40, generator=gen, dtype=torch.float64, requires_grad=True)
    got = mf.tcr_loss(z, 1.5, centering=centering, estimator=estimator, order=6
                      if estimator != "exact" else None)
    ref = R.tcr(z, 1.5, centering=centering, estimator=estimator,
                degree=6 if estimator != "exact" else None)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    exact = ind.tcr_exact(z, 1.5, centering)
    if estimator == "exact":
        assert got.item() == pytest.approx(exact, rel=1e-13)
    elif estimator == "taylor":
        assert got.item() == pytest.approx(ind.tcr_taylor(z, 1.5, 6, centering), rel=1e-12)
    else:
        bound = series.relative_error_bound(series.kappa(1.5, 17, 40), 6)
        assert abs(got.item() - exact) <= bound * abs(exact)
    (g,) = torch.autograd.grad(got, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)
    if estimator == "exact":
        closed = torch.from_numpy(ind.tcr_exact_grad(z, 1.5, centering))
        assert torch.allclose(g, closed, rtol=1e-9, atol=1e-13)


def test_series_default_meets_tol(gen):
    z = torch.randn(64, 24, generator=gen, dtype=torch.float64)
    exact = ind.tcr_exact(z, 3.0)
    for tol in (1e-3, 1e-5, 1e-8):
        assert abs(mf.tcr_loss(z, 3.0, estimator="series", tol=tol).item() - exact) <= tol * abs(exact)


def test_taylor_warns_when_it_may_diverge():
    z = torch.randn(32, 8)
    with pytest.warns(RuntimeWarning, match="may diverge"):
        mf.tcr_loss(z, 1.0, estimator="taylor")  # mu·m/d = 4
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mf.tcr_loss(z, 0.2, estimator="taylor")  # mu·m/d = 0.8: safe, no warning


def test_autocast_does_not_lower_the_loss_precision(gen):
    z = torch.randn(20, 12, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mf.tcr_loss(z, 3.0)
    assert inside.dtype == torch.float32
    assert inside.item() == pytest.approx(ind.tcr_exact(z, 3.0),
                                          rel=REFERENCE_TOLERANCES[torch.float32][0])


def test_m_equals_one_works():
    assert mf.tcr_loss(torch.randn(1, 7, dtype=torch.float64), 3.0).item() == pytest.approx(
        -torch.log1p(torch.tensor(3.0 / 7, dtype=torch.float64)).item())


def test_auto_backend_on_cpu_is_the_cpu_stages(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.resolve("auto", torch.randn(3, 2)).__name__ == "mmae_fast.ops.tcr.cpu"
    assert backends.resolve_name("auto", torch.randn(3, 2)) == "cpu"
    assert {"cpu", "reference"} <= set(mf.available_backends())


def test_cpu_backend_refuses_other_devices():
    with pytest.raises(ValueError, match="the cpu backend runs CPU tensors, got device 'meta'"):
        backends.resolve("cpu", torch.empty(3, 2, device="meta"))


def test_env_var_sets_what_auto_means(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.resolve("auto", torch.randn(3, 2)).__name__ == "mmae_fast.ops.tcr.stages"
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="MMAE_FAST_BACKEND='fastest' is not a backend"):
        mf.tcr_loss(torch.randn(3, 2))


def test_unavailable_backend_names_the_reason(monkeypatch):
    """An explicitly requested backend that cannot run raises, never falls back silently."""
    monkeypatch.setitem(registry.BACKEND_MODULES, "cuda", "mmae_fast._no_such_module")
    monkeypatch.setitem(registry.MODULES, "cuda", registry.import_backend("cuda"))
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot be imported"):
        mf.tcr_loss(torch.randn(4, 3), backend="cuda")
    assert backends.availability("cuda") is not None
    h = torch.randn(4, 3, dtype=torch.float64)
    assert mf.tcr_loss(h, backend="auto").item() == pytest.approx(ind.tcr_exact(h, 1.0), rel=1e-13)


@pytest.mark.parametrize("estimator, dynamic", [("exact", False), ("exact", True),
                                                ("taylor", False), ("taylor", True),
                                                ("series", False)])
def test_tcr_loss_compiles_without_graph_breaks(estimator, dynamic, gen):
    """A training-step-like function calling the public tcr_loss compiles with fullgraph=True
    (backend resolution and the series coefficients are resolved while tracing) and matches
    eager. The series polynomial depends on m (kappa = 1 + mu·m/d), so its graph is static."""
    torch._dynamo.reset()

    def step(x, w):
        feats = x @ w
        return feats.square().mean() + 0.01 * mf.tcr_loss(feats, 0.5, centering=True,
                                                          estimator=estimator)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for m in (37, 41):
        x = torch.randn(m, 16, generator=gen, dtype=torch.float64)
        w1 = torch.randn(16, 23, generator=gen, dtype=torch.float64, requires_grad=True)
        w2 = w1.detach().clone().requires_grad_()
        got, want = compiled(x, w1), step(x, w2)
        got.backward()
        want.backward()
        assert torch.allclose(got, want, rtol=1e-10) and torch.allclose(w1.grad, w2.grad,
                                                                         rtol=1e-8)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_check_finite_must_be_a_bool(value):
    """A truthy non-bool (``"yes"``, ``1``) is refused, not read as True."""
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        mf.tcr_loss(torch.randn(4, 3), check_finite=value)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        mf.mec_loss(torch.randn(4, 3), torch.randn(4, 3), check_finite=value)
