"""The cpu backend's native stages (csrc/cpu/tcr_cpu.cpp, mmae_fast/ops/tcr/cpu_native.py):
``cpu_gram`` and ``cpu_grad`` against the stage contract in float64 (``stages.gram`` /
``stages.grad`` on the same rounded input) for odd shapes on both Gram sides and every input
dtype, rows at the norm floor, rows of 1e30 (1e200 in float64), NaN rows; ``cpu_exact_side``
against the Python small side; ``opcheck`` of the three ops; when they run and the switch that
turns them off. The whole op through them: tests/ops/test_cpu_backend.py (the native stages are
the default there)."""
import pytest
import torch

import mmae_fast as mf
from mmae_fast import reference
from mmae_fast.ops.tcr import cpu, cpu_native, small_side, stages
from tests import independent as ind
from tests.op_names import OpNames
from tests.tolerances import CPU_BACKEND, CPU_NATIVE_EXACT_SIDE, CPU_NATIVE_STAGES, rel_err

native = pytest.mark.skipif(cpu_native.REASON is not None, reason=str(cpu_native.REASON))

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
#: odd sizes (no multiple of a SIMD width), n < d and n > d on each side, and one n >= 512
#: (the Gram from three blocks)
SHAPES = [(45, 31), (31, 45), (101, 333), (300, 77), (37, 515)]
EPS = reference.EPS


def _features(gen, m, d, dtype, special=True):
    """Unequal row norms and a shared direction; with ``special``, a zero row and a row below
    the norm floor (float32 / float64: half cannot hold 1e-12)."""
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    h = h * torch.rand(m, 1, generator=gen, dtype=torch.float64).add(0.5)
    h = h + 0.5 * torch.randn(1, d, generator=gen, dtype=torch.float64)
    if special and dtype in (torch.float32, torch.float64):
        h[2] = 0.0
        h[3] = (0.5 * EPS) * h[4] / h[4].norm()
    return h.to(dtype)


def _float64_gram(h, feature):
    return stages.gram(h.double(), feature)


def _python(monkeypatch):
    monkeypatch.setenv(cpu_native.NATIVE_ENV, "0")
    assert not cpu_native.usable()


@native
@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("feature", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_is_the_float64_stage(gen, m, d, feature, dtype):
    h = _features(gen, m, d, dtype)
    g, rinv = torch.ops.mmae_fast.cpu_gram(h, feature, EPS)
    want_g, want_rinv = _float64_gram(h, feature)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert g.dtype == acc and rinv.dtype == acc
    assert g.shape == want_g.shape and rinv.shape == (m,)
    tol = CPU_NATIVE_STAGES[dtype][0]
    assert rel_err(g, want_g) <= tol
    assert rel_err(rinv, want_rinv) <= tol
    if dtype in (torch.float32, torch.float64):  # rows at the floor: rinv = 1/EPS, z = h/EPS
        assert rinv[2].item() == stages._inv_floor(acc) and rinv[3].item() == rinv[2].item()


@native
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e30), (torch.bfloat16, 1e30),
                                         (torch.float64, 1e200), (torch.float16, 6e4)])
def test_gram_keeps_rows_whose_squares_overflow(gen, dtype, scale):
    """Rows of norm ~ scale beside rows of norm 1 (float16: entries at the top of its range):
    the row norms by powers of two (``reference.row_norms``), no overflow."""
    h64 = _features(gen, 29, 19, torch.float64, special=False)
    h64[::3] *= scale / h64[::3].abs().amax(dim=1, keepdim=True)
    h = h64.to(dtype)
    if dtype != torch.float16:  # the plain sum of squares overflows in the accumulating dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert not torch.isfinite(h.to(acc).square().sum(dim=1)).all()
    for feature in (True, False):
        g, rinv = torch.ops.mmae_fast.cpu_gram(h, feature, EPS)
        want_g, want_rinv = _float64_gram(h, feature)
        assert torch.isfinite(g).all()
        assert rel_err(g, want_g) <= CPU_NATIVE_STAGES[dtype][0]
        assert rel_err(rinv * (1.0 / want_rinv), torch.ones_like(want_rinv)) \
            <= CPU_NATIVE_STAGES[dtype][0]


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_of_a_nan_row_is_nan_there_only(gen, dtype):
    h = _features(gen, 13, 9, dtype)
    h[5, 4] = float("nan")
    g, rinv = torch.ops.mmae_fast.cpu_gram(h, False, EPS)
    assert torch.isnan(rinv[5]) and torch.isfinite(rinv[torch.arange(13) != 5]).all()
    keep = torch.arange(13) != 5
    assert torch.isnan(g[5]).all() and torch.isnan(g[:, 5]).all()
    assert rel_err(g[keep][:, keep], _float64_gram(h[keep], False)[0]) <= CPU_NATIVE_STAGES[dtype][0]
    g_feature, _ = torch.ops.mmae_fast.cpu_gram(h, True, EPS)
    assert torch.isnan(g_feature).all(), "every feature-side entry sums over the NaN row"


def _grad_inputs(gen, m, d, feature, centred, dtype):
    h = _features(gen, m, d, dtype)
    rinv = stages._rinv(h)
    n = d if feature else m
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q = (a + a.mT).to(rinv.dtype)
    v = (torch.randn(d, generator=gen, dtype=torch.float64).to(rinv.dtype) if centred
         else q.new_empty(0))
    return h, rinv, q, v


@native
@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("feature", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_is_the_float64_stage(gen, m, d, feature, dtype):
    """dh of every row kind (projected, zero, below the floor) against ``stages.grad`` in float64,
    with v (centring, feature side) and without, ``[s, t]`` and ``[s]``, a scale."""
    h, rinv, q, v = _grad_inputs(gen, m, d, feature, feature, dtype)
    for coef in (torch.tensor([0.7, -0.3]), torch.tensor([1.3])):
        coef = coef.to(rinv.dtype)
        got = torch.ops.mmae_fast.cpu_grad(coef, h, rinv, q, v, feature, 3.0, EPS)
        want = stages.grad(coef.double(), h.double(), stages._rinv(h.double()), q.double(),
                           v.double(), feature, 3.0)
        assert got.dtype == dtype and got.shape == h.shape
        tol = CPU_NATIVE_STAGES[dtype][1]
        assert rel_err(got, want.to(dtype)) <= tol
        if dtype in (torch.float32, torch.float64):
            for row in (2, 3):  # the zero row and the row below the floor: dh = rinv·(s·u - t·z)
                assert rel_err(got[row], want[row]) <= tol, row


@native
def test_grad_of_floor_rows_keeps_the_radial_part(gen):
    """Rows at the floor are not projected: their dh is ``rinv·s·u - rinv·t·z`` (the projected
    form would give ``rinv·s·(u - <z, u> z)``)."""
    h, rinv, q, v = _grad_inputs(gen, 12, 7, True, False, torch.float64)
    coef = torch.tensor([0.7, -0.3], dtype=torch.float64)
    got = torch.ops.mmae_fast.cpu_grad(coef, h, rinv, q, v, True, 1.0, EPS)
    z = h * rinv[:, None]
    u = z @ q
    for row in (2, 3):
        want = rinv[row] * (0.7 * u[row] + 0.3 * z[row])
        assert rel_err(got[row], want) <= 1e-14, row


def _exact_constants(m, d, need_grad):
    return small_side.Constants.of(mu=1.5, m=m, d=d, feature=True, centering=False,
                                   estimator="exact", degree=0, need_grad=need_grad,
                                   grouped=False)


@native
@pytest.mark.parametrize("n", [1, 7, 64, 191])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("need_grad", [True, False])
def test_exact_side_is_the_python_small_side(gen, monkeypatch, n, dtype, need_grad):
    """``cpu_exact_side`` where ``small_side`` takes it (exact, no centring, no group, the
    float64 inverse): the same (R, Q, v, qinfo) as the Python small side, in g's dtype."""
    h = _features(gen, 3 * n + 2, n, torch.float64, special=False)
    g = stages.gram(h, True)[0].to(dtype)
    k = _exact_constants(3 * n + 2, n, need_grad)
    colsum = g.new_empty(0)
    assert small_side._native_exact(g, None, k)
    got = small_side.small_side(g, colsum, None, k)
    _python(monkeypatch)
    assert not small_side._native_exact(g, None, k)
    want = small_side.small_side(g, colsum, None, k)
    tol = CPU_NATIVE_EXACT_SIDE
    for name, a, b in zip(("R", "Q", "v", "qinfo"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if b.numel():
            assert rel_err(a, b) <= tol, name
    expected = ind.tcr_exact(h, 1.5, False)  # and R against the oracle's eigenvalues
    assert abs(got[0].item() - expected) <= CPU_BACKEND[dtype][0] * abs(expected)


@native
def test_exact_side_gives_nan_when_the_factorisation_fails(gen):
    g = stages.gram(_features(gen, 20, 9, torch.float64, special=False), True)[0]
    for bad, c in ((g.clone().fill_diagonal_(float("nan")), 0.5), (g, -10.0)):
        value, q, qinfo = torch.ops.mmae_fast.cpu_exact_side(bad, c, True)
        assert torch.isnan(value), c
    value, q, qinfo = torch.ops.mmae_fast.cpu_exact_side(g, 0.5, False)
    assert q.shape == (0, 0) and qinfo.tolist() == [1.0, 0.0] and torch.isfinite(value)


@native
@pytest.mark.parametrize("op,args", [
    ("cpu_gram", lambda h, g: (h, True, EPS)),
    ("cpu_gram", lambda h, g: (h.half(), False, EPS)),
    ("cpu_grad", lambda h, g: (torch.tensor([0.5, 0.1]), h, stages._rinv(h),
                               torch.eye(h.shape[1]), torch.ones(h.shape[1]), True, 2.0, EPS)),
    ("cpu_exact_side", lambda h, g: (g, 0.25, True)),
    ("cpu_exact_side", lambda h, g: (g.double(), 0.25, False)),
])
def test_opcheck(gen, op, args):
    """Schema, fake (meta) functions and the dispatcher's checks of each op
    (``torch.library.opcheck``)."""
    h = _features(gen, 11, 6, torch.float32, special=False)
    g = stages.gram(h, True)[0]
    torch.library.opcheck(getattr(torch.ops.mmae_fast, op), args(h, g))


@native
@pytest.mark.parametrize("call,match", [
    (lambda: torch.ops.mmae_fast.cpu_gram(torch.ones(5), True, EPS), "h must be 2-D"),
    (lambda: torch.ops.mmae_fast.cpu_gram(torch.ones(3, 2, dtype=torch.int32), True, EPS),
     "h must be floating"),
    (lambda: torch.ops.mmae_fast.cpu_exact_side(torch.ones(3, 2), 1.0, True),
     "g must be square"),
    (lambda: torch.ops.mmae_fast.cpu_grad(torch.ones(1), torch.ones(3, 2), torch.ones(2),
                                          torch.eye(2), torch.ones(0), True, 1.0, EPS),
     "one entry per row"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def _profiled_op_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def _loss_and_grad(h):
    x = h.clone().requires_grad_(True)
    mf.tcr_loss(x, 1.5).backward()
    return x.grad


@native
def test_native_stages_run_in_eager_mode_only(gen):
    """Plain eager ``tcr_loss`` on a CPU tensor calls the three native ops; under a dispatch
    mode (here an op recorder) the Python stages run, and both give the same gradient."""
    h = _features(gen, 40, 24, torch.float32, special=False)
    names = _profiled_op_names(lambda: _loss_and_grad(h))
    assert {"mmae_fast::cpu_gram", "mmae_fast::cpu_grad", "mmae_fast::cpu_exact_side"} <= names
    eager = _loss_and_grad(h)
    with OpNames() as ops:
        traced = _loss_and_grad(h)
    assert not any("cpu_" in name for name in ops.names), ops.names
    assert rel_err(eager, traced) <= CPU_NATIVE_STAGES[torch.float32][1]


def test_switched_off_runs_the_python_stages(gen, monkeypatch):
    """``MMAE_FAST_CPU_NATIVE=0`` (and a build without the extension) runs the Python stages,
    with the oracle's value and gradient."""
    _python(monkeypatch)
    h = _features(gen, 40, 24, torch.float32, special=False)
    names = _profiled_op_names(lambda: _loss_and_grad(h))
    assert not any(name.startswith("mmae_fast::cpu_") for name in names), names
    x = h.clone().requires_grad_(True)
    value = mf.tcr_loss(x, 1.5)
    value.backward()
    vtol, gtol = CPU_BACKEND[torch.float32]
    expected = ind.tcr_exact(h, 1.5, False)
    assert abs(value.item() - expected) <= vtol * abs(expected)
    want = torch.from_numpy(ind.tcr_exact_grad(h, 1.5, False))
    assert rel_err(x.grad, want) <= gtol


@pytest.mark.parametrize("kappa,n,dtype,native_side", [
    (257.0, 255, torch.float32, False),  # the float32 form of the inverse (cpu.py)
    (16.0, 191, torch.float32, True),  # n below cpu.FLOAT32_INVERSE_MIN_N: float64 potri
    (16.0, 255, torch.float64, True),  # float64 input
])
def test_exact_side_runs_where_the_python_side_takes_potri(gen, kappa, n, dtype, native_side):
    """``small_side._native_exact`` follows ``cpu.takes_float64_inverse``: the native side
    replaces exactly the float64 potri branch."""
    m = 4 * n
    mu = (kappa - 1.0) * n / m
    k = small_side.Constants.of(mu=mu, m=m, d=n, feature=True, centering=False,
                                estimator="exact", degree=0, need_grad=True, grouped=False)
    g = torch.eye(n, dtype=dtype)
    takes_potri = cpu.takes_float64_inverse(n, k.float32_inverse and dtype != torch.float64)
    assert takes_potri == native_side
    assert small_side._native_exact(g, None, k) == (native_side and cpu_native.enabled())
