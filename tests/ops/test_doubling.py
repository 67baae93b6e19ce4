"""The Newton–Schulz doubling inverse (mmae_fast/ops/tcr/doubling.py): its a-priori residual
bound against the measured residual ``||I - A X_K||_2`` (float64 spectral norm), in float64 and in
the emulated tensor-core formats (mmae_fast/ops/tcr/rounding.py), kappa in {2, 4, 65, 257}, odd n;
and the rounding emulation itself against torch's own conversions."""
import math

import pytest
import torch

from mmae_fast import series
from mmae_fast.ops.tcr import doubling, rounding
from tests import independent as ind
from tests.tolerances import DOUBLING_FLOOR_FACTOR

KAPPAS = [2.0, 4.0, 65.0, 257.0]
N = 101


def _spd(gen, n, kappa):
    """Symmetric, eigenvalues evenly filling [1, kappa] (both ends included): the bound's worst
    case, so it is attained."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = (q * torch.linspace(1.0, kappa, n, dtype=torch.float64)) @ q.mT
    return (a + a.mT) / 2


def _residual(a, x):
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    return torch.linalg.matrix_norm(eye - a @ x.double(), ord=2).item()


def test_bound_closed_form_and_steps():
    """1/T_N(sigma) against numpy-free cosh/arccosh, and the step counts the design assumes."""
    for kappa in KAPPAS:
        sigma = (kappa + 1) / (kappa - 1)
        for k in range(1, 6):
            want = 1.0 / math.cosh(2 ** k * math.acosh(sigma))
            assert doubling.residual_bound(kappa, k) == pytest.approx(want, rel=1e-12)
            assert doubling.residual_bound(kappa, k) <= 2 * doubling.rho(kappa) ** (2 ** k) * (1 + 1e-12)
    assert doubling.steps_for(4.0, 5e-8) == 4
    assert doubling.steps_for(257.0, 3e-7) == 7
    assert doubling.residual_bound(257.0, 40) == 0.0
    with pytest.raises(ValueError, match="target must be > 0"):
        doubling.steps_for(4.0, 0.0)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_float64_residual_is_the_bound(gen, kappa):
    """In float64 the measured residual equals the a-priori bound (the spectrum fills [1, kappa]),
    down to float64 rounding, at every step count."""
    a = _spd(gen, N, kappa)
    for k in range(1, doubling.steps_for(kappa, 1e-13) + 1):
        bound = doubling.residual_bound(kappa, k)
        measured = _residual(a, doubling.inverse(a, kappa, k))
        floor = kappa * rounding.UNIT_ROUNDOFF["float64"] * math.sqrt(N) * DOUBLING_FLOOR_FACTOR
        assert measured <= bound + floor
        if bound > 1e-12:
            assert measured >= 0.99 * bound, "the bound is attained on this spectrum"


@pytest.mark.parametrize("fmt", ["float32", "tf32x3", "bf16x3", "tf32", "bf16"])
@pytest.mark.parametrize("kappa", KAPPAS)
def test_emulated_formats_reach_bound_or_floor(gen, kappa, fmt):
    """Products in an emulated tensor-core format: the residual follows the bound until the
    format's floor ``kappa·u·sqrt(n)`` (times DOUBLING_FLOOR_FACTOR), and stays there."""
    a = _spd(gen, N, kappa)
    floor = kappa * rounding.UNIT_ROUNDOFF[fmt] * math.sqrt(N) * DOUBLING_FLOOR_FACTOR
    steps = doubling.steps_for(kappa, 1e-12) + 1
    for k in range(1, steps + 1):
        x = doubling.inverse(a.float(), kappa, k, mm=lambda p, q: rounding.product(p, q, fmt))
        assert x.dtype == torch.float32
        assert _residual(a, x) <= doubling.residual_bound(kappa, k) + floor


@pytest.mark.parametrize("m,d,centering", [(257, 63, False), (63, 257, True)])
def test_gram_spectrum_is_inside_the_interval(gen, m, d, centering):
    """A = I + mu/d·G of real normalised rows: the spectrum lies in [1, kappa], so the bound
    holds for kappa = series.kappa (not attained: G does not fill the interval)."""
    mu = 3.0
    kappa = series.kappa(mu, m, d)
    h = torch.randn(m, d, generator=gen, dtype=torch.float64) + 0.5
    z = torch.from_numpy(ind.features(h, centering))
    g = z.mT @ z if d <= m else z @ z.mT
    a = torch.eye(g.shape[0], dtype=torch.float64) + (mu / d) * g
    for k in (2, 4, doubling.steps_for(kappa, 1e-10)):
        assert _residual(a, doubling.inverse(a, kappa, k)) <= doubling.residual_bound(kappa, k) + 1e-13


def test_inverse_calls_mm_twice_per_step_after_the_first(gen):
    a = _spd(gen, 7, 4.0)
    calls = []

    def counting(p, q):
        calls.append(1)
        return p @ q

    doubling.inverse(a, 4.0, 5, mm=counting)
    assert len(calls) == 2 * (5 - 1)


def test_rounding_matches_torch_conversions(gen):
    """bf16 (7 bits) and fp16 (10 bits) rounding of normal float32 numbers equals torch's own
    round-to-nearest-even casts; float32 and float64 operands are unchanged."""
    x = torch.randn(4096, generator=gen).float() * 3.0
    assert torch.equal(rounding.round_mantissa(x, 7), x.bfloat16().float())
    assert torch.equal(rounding.round_mantissa(x, 10), x.half().float())
    assert torch.equal(rounding.operand(x, "float32"), x)
    # a tie at 10 bits rounds to even: 1 + 2^-11 -> 1, 1 + 3·2^-11 -> 1 + 2^-9
    ties = torch.tensor([1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11])
    assert rounding.operand(ties, "tf32").tolist() == [1.0, 1.0 + 2.0 ** -9]


def test_split_products_are_more_accurate(gen):
    a = torch.randn(63, 65, generator=gen, dtype=torch.float64)
    b = torch.randn(65, 61, generator=gen, dtype=torch.float64)
    exact = a @ b
    err = {f: ((rounding.product(a, b, f).double() - exact).norm() / exact.norm()).item()
           for f in rounding.FORMATS}
    assert err["float64"] < 1e-15
    assert err["tf32x3"] < err["tf32"] / 100 and err["bf16x3"] < err["bf16"] / 100
    assert err["bf16"] > err["tf32"] > err["float32"]
    with pytest.raises(ValueError, match="fmt must be one of"):
        rounding.product(a, b, "int8")


def _rows(gen, m, d):
    scale = (torch.arange(d, dtype=torch.float64) + 1.0) ** -0.5
    h = torch.randn(m, d, generator=gen, dtype=torch.float64) * scale
    return h + 0.5 * torch.randn(1, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("m,d", [(45, 31), (31, 45)])
@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_with_the_doubling_inverse_meets_the_contract(gen, monkeypatch, m, d, kappa,
                                                            centering, dtype):
    """MMAE_FAST_EXACT_INVERSE=doubling: the exact estimator's gradient from the doubling
    inverse (float64 products) against the independent oracle, at the cpu backend's tolerances."""
    import mmae_fast as mf
    from mmae_fast.ops.tcr import small_side
    from tests.tolerances import CPU_BACKEND, rel_err

    monkeypatch.setenv(small_side.INVERSE_ENV, "doubling")
    called = []
    real = doubling.inverse
    monkeypatch.setattr(doubling, "inverse", lambda *a, **k: called.append(1) or real(*a, **k))
    mu = (kappa - 1.0) * d / m
    h = _rows(gen, m, d).to(dtype)
    x = h.clone().requires_grad_(True)
    value = mf.tcr_loss(x, mu, centering=centering)
    value.backward()
    assert called, "the doubling inverse did not run"
    vtol, gtol = CPU_BACKEND[dtype]
    expected = ind.tcr_exact(h, mu, centering)
    assert abs(value.item() - expected) <= vtol * abs(expected)
    assert rel_err(x.grad, torch.from_numpy(ind.tcr_exact_grad(h, mu, centering))) <= gtol


def test_doubling_constants_carry_kappa_and_bad_choice_is_an_error(monkeypatch):
    import mmae_fast as mf
    from mmae_fast.ops.tcr import small_side

    kw = dict(mu=2.0, m=40, d=16, feature=True, centering=False, estimator="exact", degree=0,
              need_grad=True, grouped=False)
    plain = small_side.Constants.of(**kw)
    doubled = small_side.Constants.of(**kw, inverse="doubling")
    assert plain.kappa == 0.0 and plain.inverse == "cholesky"
    assert doubled.kappa == series.kappa(2.0, 40, 16) and doubled.inverse == "doubling"
    # the forward alone never inverts: its graph stays independent of kappa
    assert small_side.Constants.of(**{**kw, "need_grad": False}, inverse="doubling").kappa == 0.0
    monkeypatch.setenv(small_side.INVERSE_ENV, "lu")
    with pytest.raises(ValueError, match="MMAE_FAST_EXACT_INVERSE='lu': use one of"):
        mf.tcr_loss(torch.randn(8, 4, requires_grad=True))
