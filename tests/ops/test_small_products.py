"""The products-only small side (``MMAE_FAST_SMALL_PRODUCTS``: ``small_side._products_side``):
the Y-weighted Chebyshev moments of the exact log-determinant (mmae_fast/ops/tcr/moments.py), the
doubling's complement form of its gradient (``doubling.complement``), the series on the S basis,
Taylor on the powers of Y — with every n×n product rounded as a tensor core rounds it
(``rounding.product``: float32, split TF32 "tf32x3", split bf16 "bf16x3"), against the
independent float64 oracle (tests/independent.py), kappa in {2, 4, 65, 257}, odd n, centred and
collapsed rows, every input dtype; the a-priori bounds against measured errors; no host sync,
fullgraph compile and two gloo ranks with the switch set."""
import math
import warnings

import pytest
import torch
import torch.distributed as dist

import mmae_fast as mf
from mmae_fast import backends, reference, series
from mmae_fast.ops.tcr import doubling, moments, op as staged, rounding, small_side
from tests import independent as ind
from tests.gloo import spawn
from tests.op_names import OpNames
from tests.tcr_checks import (assert_compiles_fullgraph, assert_no_host_sync, grad_oracle,
                              value_oracle)
from tests.tolerances import (COMPLEMENT_OUTPUTS, COMPLEMENT_OUTPUTS_FLOAT64, SMALL_PRODUCTS,
                               SMALL_PRODUCTS_END_TO_END, rel_err)

ENV = small_side.PRODUCTS_ENV
KAPPAS = [2.0, 4.0, 65.0, 257.0]
KINDS = ["anisotropic", "collapsed", "centred"]


def _features(gen, m, d, kind="anisotropic"):
    """float32 rows: decaying column scales; ``collapsed``: one direction plus 1e-2 noise."""
    h = torch.randn(m, d, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3.0, d,
                                                                               dtype=torch.float64)
    if kind == "collapsed":
        h = h[:, :1] * torch.randn(1, d, generator=gen, dtype=torch.float64) + 1e-2 * h
    return h.float()


def _y(h, mu, centering):
    """``Y = mu/d · G`` (float64) on the smaller side of the float32 rows h."""
    z = torch.nn.functional.normalize(h.double(), dim=1)
    if centering:
        z = z - z.mean(dim=0)
    m, d = z.shape
    return (z @ z.mT if m < d else z.mT @ z) * (mu / d)


# ----------------------------------------------------------------------------- moments
@pytest.mark.parametrize("kappa", KAPPAS)
def test_moments_are_the_series_polynomial(gen, kappa):
    """In float64, ``moments.logdet`` is the series' polynomial at every degree (every plan
    shape: s = 1 and no giant, s = 1 with giants, baby and giant steps), within its a-priori
    relative bound of the exact value."""
    m, d = 61, 23
    mu = (kappa - 1.0) * d / m
    h = _features(gen, m, d)
    y = _y(h, mu, False)
    exact = -ind.tcr_exact(h, mu)
    for degree in (1, 2, 3, 5, 8, 13, moments.exact_degree(kappa)):
        value = moments.logdet(y, kappa, degree).item()
        assert value == pytest.approx(-ind.tcr_series(h, mu, degree), rel=1e-12, abs=1e-12)
        bound = series.relative_error_bound(kappa, degree)
        assert abs(value - exact) <= bound * exact * (1 + 1e-9) + 1e-12


def test_plan_is_the_cheapest_cover():
    """``plan(D)`` covers the moments k < D with s - 1 + J products, the fewest over s, about
    2·sqrt(D); the exact estimator's degree and products at the four kappas."""
    for degree in range(1, 160):
        p = moments.plan(degree)
        assert (p.giants + 1) * p.s >= degree - 1
        brute = min(s - 1 + max(0, math.ceil((degree - 1) / s) - 1) for s in range(1, degree + 1))
        assert p.products == brute <= 2 * math.sqrt(degree)
    got = [(moments.exact_degree(k), moments.plan(moments.exact_degree(k)).products)
           for k in KAPPAS]
    assert got == [(8, 4), (12, 5), (59, 14), (125, 21)]
    with pytest.raises(ValueError, match="degree must be >= 1"):
        moments.plan(0)


#: (kappa, n) of the emulated-format sweeps: n = 101 at every kappa, 255 at the large ones
KAPPA_N = [(k, 101) for k in KAPPAS] + [(65.0, 255), (257.0, 255)]


@pytest.mark.parametrize("kappa,d", KAPPA_N)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["float32", "tf32x3", "bf16x3"])
def test_moments_in_emulated_formats(gen, kappa, d, kind, fmt):
    """The exact log-determinant from moments with products in each format, n = d (feature
    side of 2d + 1 rows): within ``SMALL_PRODUCTS["moments"][fmt]`` of the oracle, which for
    float32 and tf32x3 is well inside the exact estimator's 1e-5."""
    m = 2 * d + 1
    mu = (kappa - 1.0) * d / m
    h = _features(gen, m, d, kind)
    centering = kind == "centred"
    y = _y(h, mu, centering).float()
    mm = small_side.product_function(fmt, y.device)
    value = moments.logdet(y, kappa, moments.exact_degree(kappa), mm).item()
    expected = -ind.tcr_exact(h, mu, centering)
    assert abs(value - expected) <= SMALL_PRODUCTS["moments"][fmt] * abs(expected)


@pytest.mark.parametrize("kappa", [65.0, 257.0])
@pytest.mark.parametrize("kind", KINDS)
def test_plain_traces_miss_what_moments_keep(gen, kappa, kind):
    """The same polynomial from plain traces ``Σ p_k tr T_k(M)`` of a float32 basis misses the
    exact contract at n = 511 (its n-sized terms cancel to the log-determinant: measured 2.8e-5
    .. 4.7e-5; at n = 255 only 6e-6 .. 1.6e-5, not reliably above 1e-5); the Y-weighted moments
    of the same float32 Y keep it: the weighting is what the accuracy rests on."""
    m, d = 1022, 511
    mu = (kappa - 1.0) * d / m
    h = _features(gen, m, d, kind)
    centering = kind == "centred"
    y = _y(h, mu, centering).float()
    degree = moments.exact_degree(kappa)
    expected = -ind.tcr_exact(h, mu, centering)
    p = series.chebyshev_coefficients(kappa, degree)
    mat = y * (2.0 / (kappa - 1.0))
    mat.diagonal().sub_(1.0)
    prev, cur = torch.eye(d), mat
    plain = p[0] * d + p[1] * cur.double().trace().item()
    for k in range(2, degree + 1):
        prev, cur = cur, (mat @ cur).mul_(2.0).sub_(prev)
        plain += p[k] * cur.double().trace().item()
    assert abs(plain - expected) > 1e-5 * abs(expected)
    assert abs(moments.logdet(y, kappa, degree).item() - expected) <= 1e-6 * abs(expected)


# ----------------------------------------------------------------------------- complement
def _spectrum(gen, n, kappa):
    """Y symmetric with eigenvalues evenly filling [0, kappa - 1], and its eigen-pairs."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    lam = torch.linspace(0.0, kappa - 1.0, n, dtype=torch.float64)
    y = (q * lam) @ q.mT
    return (y + y.mT) / 2, q, lam


@pytest.mark.parametrize("kappa", KAPPAS)
def test_complement_bound_and_inverse(gen, kappa):
    """Float64: ``beta_K·I - U_K`` is the K-step doubling inverse, and the relative error of U_K
    per eigenvalue against ``W = 1 - 1/λ`` stays within ``complement_bound`` at every K, and
    above ``SMALL_PRODUCTS["complement_tightness"]`` of it (the bound is not vacuous)."""
    n = 41
    y, q, lam = _spectrum(gen, n, kappa)
    a = y.clone()
    a.diagonal().add_(1.0)
    for k in range(1, doubling.complement_steps_for(kappa, 1e-9) + 1):
        u, beta = doubling.complement(y, kappa, k)
        x = beta * torch.eye(n, dtype=torch.float64) - u
        assert (x - doubling.inverse(a, kappa, k)).abs().max().item() <= 1e-13
        w = lam / (1.0 + lam)
        got = torch.diagonal(q.mT @ u @ q)
        measured = ((got - w).abs()[1:] / w[1:]).max().item()
        bound = doubling.complement_bound(kappa, k)
        assert measured <= bound + 1e-12
        assert measured >= SMALL_PRODUCTS["complement_tightness"] * bound
    assert [doubling.complement_steps_for(k, small_side.COMPLEMENT_TARGET)
            for k in KAPPAS] == [4, 5, 7, 8]
    with pytest.raises(ValueError, match="target must be > 0"):
        doubling.complement_steps_for(kappa, 0.0)


@pytest.mark.parametrize("kappa,d", KAPPA_N)
@pytest.mark.parametrize("kind", ["anisotropic", "collapsed"])
@pytest.mark.parametrize("fmt", ["float32", "tf32x3", "bf16x3"])
def test_complement_in_emulated_formats(gen, kappa, d, kind, fmt):
    """The gradient's matrix ``2c·U`` after the radial shift, products in each format, n = d:
    relative Frobenius error against the float64 solve within ``SMALL_PRODUCTS["complement"]``."""
    m = 2 * d + 1
    mu = (kappa - 1.0) * d / m
    y = _y(_features(gen, m, d, kind), mu, False)
    a = y.clone()
    a.diagonal().add_(1.0)

    def shifted(u):
        u = u.double().clone()
        u.diagonal().sub_(u.diagonal().sum() / u.shape[0])
        return u

    want = shifted(torch.linalg.solve(a, y))
    steps = doubling.complement_steps_for(kappa, small_side.COMPLEMENT_TARGET)
    u, _ = doubling.complement(y.float(), kappa, steps, small_side.product_function(fmt, y.device))
    assert rel_err(shifted(u), want) <= SMALL_PRODUCTS["complement"][fmt]


# ----------------------------------------------------------------------------- end to end
#: (estimator, kappa): Taylor at mu·m/d = 0.5, where its series converges
ESTIMATOR_KAPPAS = [(e, k) for e in ("exact", "series") for k in KAPPAS] + [("taylor", 1.5)]


@pytest.mark.parametrize("a,b", [(2e-3, -2e-3), (-0.5, 3.0)])
def test_shift_and_scale_never_form_the_identity_part(gen, a, b):
    """``small_side._shift_and_scale``: Q and ``qinfo = [qscale, alpha]`` of ``q = a·w + b·I``
    from w alone, in w's float32, within COMPLEMENT_OUTPUTS of the float64 shift and scale of
    the dense q (tests/independent.py); w ~ 1e-4 beside an identity part of 1, so forming
    ``a·w + b·I`` in float32 first would lose w's digits."""
    n = 67
    x = torch.randn(n, n, generator=gen, dtype=torch.float64) * 1e-4
    w = x + x.mT
    q = a * w + b * torch.eye(n, dtype=torch.float64)
    want_q, _, want_scale, want_alpha = ind.shifted_and_scaled(q)
    got_q, _, qinfo = small_side._shift_and_scale(small_side.Complement(w.float(), a, b), None,
                                                  None)
    assert got_q.dtype == torch.float32
    assert rel_err(got_q, torch.from_numpy(want_q)) <= COMPLEMENT_OUTPUTS
    assert abs(qinfo[0].item() - want_scale) <= COMPLEMENT_OUTPUTS * want_scale
    assert abs(qinfo[1].item() - want_alpha) <= COMPLEMENT_OUTPUTS * abs(want_alpha)


@pytest.mark.parametrize("v_scale", [1e-3, 1e3])  # v below and above max|Q'|
def test_shift_and_scale_of_a_dense_q_with_v(gen, v_scale):
    """A dense float64 q (``Complement(q, 1, 0)``) with the feature side's v: the scale is the
    larger of max|Q'| and max|v|, and v is divided by it; ``ok`` False makes qscale NaN."""
    n = 41
    x = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q = x + x.mT + 3.0 * torch.eye(n, dtype=torch.float64)
    v = torch.randn(n, generator=gen, dtype=torch.float64) * v_scale
    want_q, want_v, want_scale, want_alpha = ind.shifted_and_scaled(q, v)
    got_q, got_v, qinfo = small_side._shift_and_scale(small_side.Complement(q.clone(), 1.0, 0.0),
                                                      v.clone(), None)
    assert rel_err(got_q, torch.from_numpy(want_q)) <= COMPLEMENT_OUTPUTS_FLOAT64
    assert rel_err(got_v, torch.from_numpy(want_v)) <= COMPLEMENT_OUTPUTS_FLOAT64
    assert qinfo[0].item() == pytest.approx(want_scale, rel=COMPLEMENT_OUTPUTS_FLOAT64)
    assert qinfo[1].item() == pytest.approx(want_alpha, rel=COMPLEMENT_OUTPUTS_FLOAT64)
    _, _, bad = small_side._shift_and_scale(small_side.Complement(q.clone(), 1.0, 0.0), None,
                                            torch.tensor(False))
    assert math.isnan(bad[0].item())


@pytest.mark.parametrize("m,d", [(45, 31), (31, 45)])
@pytest.mark.parametrize("estimator,kappa", ESTIMATOR_KAPPAS)
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_every_estimator_against_the_oracle(gen, monkeypatch, m, d, estimator, kappa, centering,
                                            backend):
    """tf32x3 products end to end (the staged op on the cpu backend's stages and on the
    reference stages): value and gradient against the oracle of the same estimator and degree,
    n = 31 on both Gram sides."""
    monkeypatch.setenv(ENV, "tf32x3")
    mu = (kappa - 1.0) * d / m
    degree = reference.default_degree(estimator, kappa)
    h = _features(gen, m, d)
    x = h.clone().requires_grad_(True)
    with OpNames() as ops:
        value = staged.tcr(x, backend=backend, mu=mu, centering=centering, estimator=estimator,
                           degree=degree if estimator != "exact" else 0)
        value.backward()
    assert "mmae_fast.small_side.default" in ops.names
    vtol, gtol = SMALL_PRODUCTS_END_TO_END[torch.float32]
    expected = value_oracle(h, mu, centering, estimator, degree)
    assert abs(value.item() - expected) <= vtol * abs(expected)
    assert rel_err(x.grad, grad_oracle(h, mu, centering, estimator, degree)) <= gtol


@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_triton_backend_shares_the_small_side(gen, monkeypatch, estimator):
    """The Triton backend's stages (its interpreter here) around the same products-only small
    side: its kernels launch and the value and gradient meet the oracle."""
    reason = backends.availability("triton") or backends._load("triton").supports(
        torch.ones(2, 2))
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv(ENV, "tf32x3")
    m, d, kappa = 37, 29, 4.0
    mu = (kappa - 1.0) * d / m
    degree = reference.default_degree(estimator, kappa)
    h = _features(gen, m, d)
    x = h.clone().requires_grad_(True)
    with OpNames() as ops:
        value = staged.tcr(x, backend="triton", mu=mu, centering=False, estimator=estimator,
                           degree=degree if estimator != "exact" else 0)
        value.backward()
    assert "mmae_fast.small_side.default" in ops.names
    vtol, gtol = SMALL_PRODUCTS_END_TO_END[torch.float32]
    assert abs(value.item() - value_oracle(h, mu, False, estimator, degree)) <= vtol * abs(
        value.item())
    assert rel_err(x.grad, grad_oracle(h, mu, False, estimator, degree)) <= gtol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_each_input_dtype(gen, monkeypatch, dtype, estimator):
    """Half inputs reach the small side as a float32 Gram: the same contracts against the
    oracle on the rounded input (gradient against the oracle rounded to the dtype)."""
    monkeypatch.setenv(ENV, "tf32x3")
    m, d, kappa = 53, 37, 4.0
    mu = (kappa - 1.0) * d / m
    degree = reference.default_degree(estimator, kappa)
    h = _features(gen, m, d).to(dtype)
    x = h.clone().requires_grad_(True)
    value = mf.tcr_loss(x, mu, estimator=estimator, backend="cpu")
    value.backward()
    assert value.dtype == torch.float32 and x.grad.dtype == dtype
    vtol, gtol = SMALL_PRODUCTS_END_TO_END[dtype]
    h64 = h.double()
    assert abs(value.item() - value_oracle(h64, mu, False, estimator, degree)) <= vtol * abs(
        value.item())
    want = grad_oracle(h64, mu, False, estimator, degree)
    assert rel_err(x.grad, want.to(dtype)) <= gtol


#: (format, kappa) of the realistic-n sweep: tf32x3 at both kappas, the others at 257
REALISTIC = [("tf32x3", 65.0), ("tf32x3", 257.0), ("float32", 257.0), ("bf16x3", 257.0)]


@pytest.mark.parametrize("fmt,kappa", REALISTIC)
@pytest.mark.parametrize("m,d,centering", [(1023, 255, False), (1023, 255, True),
                                           (255, 1023, True)])
@pytest.mark.parametrize("kind", ["anisotropic", "collapsed"])
def test_exact_contract_at_realistic_n(gen, monkeypatch, fmt, kappa, m, d, centering, kind):
    """Products in each format, float32 input, n = 255 on both sides: R within
    ``SMALL_PRODUCTS["moments"][fmt]`` relative (inside the exact contract 1e-5 for every
    format); the gradient within
    ``SMALL_PRODUCTS["exact_grad_vs_reference"][fmt]`` x the error of the float32 reference
    (reference.tcr on the same input) against the float64 oracle."""
    monkeypatch.setenv(ENV, fmt)
    mu = (kappa - 1.0) * d / m
    h = _features(gen, m, d, kind)
    x = h.clone().requires_grad_(True)
    value = mf.tcr_loss(x, mu, centering=centering, backend="cpu")
    value.backward()
    expected = ind.tcr_exact(h, mu, centering)
    assert abs(value.item() - expected) <= SMALL_PRODUCTS["moments"][fmt] * abs(expected)
    want = torch.from_numpy(ind.tcr_exact_grad(h, mu, centering))
    y = h.clone().requires_grad_(True)
    reference.tcr(y, mu, centering=centering).backward()
    floor = max(rel_err(y.grad, want), rel_err(want.float(), want))
    assert rel_err(x.grad, want) <= SMALL_PRODUCTS["exact_grad_vs_reference"][fmt] * floor


@pytest.mark.parametrize("fmt", ["float32", "bf16x3"])
@pytest.mark.parametrize("estimator,kappa", [("exact", 4.0), ("exact", 257.0), ("series", 4.0),
                                             ("series", 257.0), ("taylor", 1.5)])
@pytest.mark.parametrize("m,d", [(121, 61), (61, 121)])
def test_each_format_end_to_end(gen, monkeypatch, fmt, estimator, kappa, m, d):
    """float32 and bf16x3 products (tf32x3: the tests above), centred rows, n = 61 on both
    sides: value and gradient against the oracle of the estimator and degree within
    ``SMALL_PRODUCTS["end_to_end"][fmt]`` (the series also within its a-priori bound of the
    exact value), and against the float64 side's on the same float32 input (switch unset)."""
    mu = (kappa - 1.0) * d / m
    degree = reference.default_degree(estimator, kappa)
    h = _features(gen, m, d)
    out = []
    for choice in (fmt, None):
        if choice is None:
            monkeypatch.delenv(ENV)
        else:
            monkeypatch.setenv(ENV, choice)
        x = h.clone().requires_grad_(True)
        value = mf.tcr_loss(x, mu, centering=True, estimator=estimator, backend="cpu",
                            order=degree if estimator != "exact" else None)
        value.backward()
        out.append((value.item(), x.grad))
    (value, grad), (value64, grad64) = out
    vtol, gtol = SMALL_PRODUCTS["end_to_end"][fmt]
    expected = value_oracle(h, mu, True, estimator, degree)
    want = grad_oracle(h, mu, True, estimator, degree)
    assert abs(value - expected) <= vtol * abs(expected)
    assert rel_err(grad, want) <= gtol
    assert abs(value - value64) <= vtol * abs(value64)
    assert rel_err(grad, grad64) <= gtol
    if estimator == "series":
        exact = ind.tcr_exact(h, mu, True)
        bound = series.relative_error_bound(kappa, degree)
        assert abs(value - exact) <= (bound + vtol) * abs(exact)


@pytest.mark.parametrize("estimator,inverse", [("exact", "cholesky"), ("exact", "doubling"),
                                               ("series", "cholesky"), ("taylor", "cholesky")])
def test_float64_input_keeps_the_float64_side(gen, monkeypatch, estimator, inverse):
    """With the switch set, float64 input gives bit-identical value and gradient, with the exact
    estimator's inverse that ``MMAE_FAST_EXACT_INVERSE`` names."""
    monkeypatch.setenv(small_side.INVERSE_ENV, inverse)
    h = torch.randn(33, 21, generator=gen, dtype=torch.float64)
    out = []
    for fmt in (None, "tf32x3"):
        if fmt is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, fmt)
        x = h.clone().requires_grad_(True)
        value = mf.tcr_loss(x, 0.5, estimator=estimator, backend="cpu")
        value.backward()
        out.append((value, x.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_rows_at_the_norm_floor_match_the_float64_side(gen, monkeypatch, estimator):
    """A zero row and a row below the norm floor (their gradient keeps the radial shift alpha,
    so the identity part of the products side's 2P must be exact): value and gradient equal the
    float64 side's within the end-to-end tolerance."""
    h = _features(gen, 40, 24)
    h[2] = 0.0
    h[3] = (0.5 * reference.EPS) * h[4] / h[4].norm()
    out = []
    for fmt in ("float64", "tf32x3"):
        monkeypatch.setenv(ENV, fmt)
        x = h.clone().requires_grad_(True)
        value = mf.tcr_loss(x, 2.0, estimator=estimator, backend="cpu")
        value.backward()
        out.append((value.item(), x.grad.double()))
    vtol, gtol = SMALL_PRODUCTS_END_TO_END[torch.float32]
    assert abs(out[0][0] - out[1][0]) <= vtol * abs(out[0][0])
    assert rel_err(out[1][1][2:4], out[0][1][2:4]) <= gtol
    assert rel_err(out[1][1], out[0][1]) <= gtol


def test_switch_changes_the_arithmetic_and_bad_values_are_refused(gen, monkeypatch):
    """float32 input: "tf32x3" runs the products side (its product function is built), "float64"
    does not, and the two agree within the contract; an unknown value is a ValueError naming the
    variable."""
    h = _features(gen, 40, 24)
    built = []
    real = small_side.product_function
    monkeypatch.setattr(small_side, "product_function",
                        lambda fmt, device: built.append(fmt) or real(fmt, device))
    values = []
    for fmt in ("float64", "tf32x3"):
        monkeypatch.setenv(ENV, fmt)
        values.append(mf.tcr_loss(h, 2.0, backend="cpu").item())
        assert built == ([] if fmt == "float64" else ["tf32x3"])
    assert abs(values[0] - values[1]) <= 1e-5 * abs(values[0])
    monkeypatch.setenv(ENV, "tf32")
    with pytest.raises(ValueError, match="MMAE_FAST_SMALL_PRODUCTS='tf32'"):
        mf.tcr_loss(h, 2.0, backend="cpu")


@pytest.mark.parametrize("estimator,dtype,want", [
    ("series", torch.float32, ["float32"]), ("taylor", torch.float32, ["float32"]),
    ("exact", torch.float32, []), ("series", torch.float64, []), ("series", torch.bfloat16,
                                                                  ["float32"])])
def test_cpu_default_without_the_switch(gen, monkeypatch, estimator, dtype, want):
    """Unset, the switch means float32 products for the series and Taylor on CPU tensors (the
    products side runs) and the float64 side for the exact estimator and for float64 input;
    on CUDA tensors the float64 side for every estimator (``products_choice``)."""
    monkeypatch.delenv(ENV, raising=False)
    built = []
    real = small_side.product_function
    monkeypatch.setattr(small_side, "product_function",
                        lambda fmt, device: built.append(fmt) or real(fmt, device))
    x = _features(gen, 40, 24).to(dtype).requires_grad_(True)
    mu = 0.5 if estimator == "taylor" else 2.0  # Taylor converges for mu·m/d < 1
    mf.tcr_loss(x, mu, estimator=estimator, backend="cpu").backward()
    assert built == want
    assert [small_side.products_choice("cuda", e) for e in ("exact", "series", "taylor")] == [
        "float64"] * 3


# ----------------------------------------------------------------------------- structure
# The products a call makes against ``small_side.product_count``: tests/tooling/test_cost_model.py.


@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
def test_no_host_sync_and_one_op_call(gen, monkeypatch, estimator):
    """Forward + backward with tf32x3 products read no device value on the host."""
    monkeypatch.setenv(ENV, "tf32x3")
    assert_no_host_sync(_features(gen, 40, 24), estimator)


@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_compiles_fullgraph(gen, monkeypatch, estimator):
    monkeypatch.setenv(ENV, "tf32x3")
    assert_compiles_fullgraph(_features(gen, 41, 23), estimator,
                              *SMALL_PRODUCTS_END_TO_END[torch.float32])


def _gloo_worker(rank, world):
    import os
    os.environ[ENV] = "tf32x3"
    g = torch.Generator().manual_seed(11)
    x = _features(g, 16, 11)
    out = {}
    for estimator in ("exact", "series"):
        for centering in (False, True):
            z = x[8 * rank: 8 * rank + 8].clone().requires_grad_(True)
            with OpNames() as ops:
                loss = mf.tcr_loss(z, 0.7, centering=centering, estimator=estimator,
                                   group=dist.group.WORLD, grad_semantics="exact")
                loss.backward()
            out[(estimator, centering)] = (loss.detach(), z.grad, ops.names)
    return out


def test_two_gloo_ranks_through_the_staged_path(monkeypatch):
    """Two ranks of 8 rows with tf32x3 products: each rank's value is the whole batch's and its
    gradient K x its slice of the whole batch's (``grad_semantics="exact"``), against the oracle
    and against one process on the concatenated batch with the same switch."""
    results = spawn(_gloo_worker)
    g = torch.Generator().manual_seed(11)
    x = _features(g, 16, 11)
    monkeypatch.setenv(ENV, "tf32x3")
    vtol, gtol = SMALL_PRODUCTS_END_TO_END[torch.float32]
    for (estimator, centering) in results[0]:
        degree = reference.default_degree(estimator, series.kappa(0.7, 16, 11))
        expected = value_oracle(x, 0.7, centering, estimator, degree)
        want = grad_oracle(x, 0.7, centering, estimator, degree)
        whole = x.clone().requires_grad_(True)
        single = mf.tcr_loss(whole, 0.7, centering=centering, estimator=estimator)
        single.backward()
        for rank in range(2):
            value, grad, names = results[rank][(estimator, centering)]
            assert "mmae_fast.small_side.default" in names
            assert abs(value.item() - expected) <= vtol * abs(expected)
            assert rel_err(grad, 2.0 * want[8 * rank: 8 * rank + 8]) <= gtol
            assert abs(value.item() - single.item()) <= vtol * abs(single.item())
            assert rel_err(grad, 2.0 * whole.grad[8 * rank: 8 * rank + 8]) <= gtol


def test_product_function_formats():
    """float32 is torch's GEMM; the split formats are the emulation on a CPU device."""
    a = torch.randn(7, 7, dtype=torch.float32)
    assert small_side.product_function("float32", a.device) is torch.mm
    for fmt in ("tf32x3", "bf16x3"):
        got = small_side.product_function(fmt, a.device)(a, a)
        assert torch.equal(got, rounding.product(a, a, fmt))


def test_float32_products_refuse_tf32(monkeypatch):
    """On a CUDA device with TF32 allowed for float32 matmuls, "float32" products would be single
    TF32: refused with the fix (the check needs no GPU: it reads the flag and the device type)."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    with pytest.raises(ValueError, match="allow_tf32 is on.*tf32x3"):
        small_side.product_function("float32", cuda)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert small_side.product_function("float32", cuda) is torch.mm
