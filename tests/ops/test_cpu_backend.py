"""The "cpu" backend (mmae_fast/ops/tcr/cpu.py), what ``backend="auto"`` runs for CPU tensors:
its stage 3 against the stage contract (``mmae_fast.ops.tcr.stages`` in float64), and the whole
op against the independent float64 oracle (tests/independent.py) for every estimator, centring,
odd n on both Gram sides, kappa in {2, 4, 65, 257} and every input dtype."""
import warnings

import pytest
import torch
import torch.distributed as dist

import mmae_fast as mf
from mmae_fast import backends, reference, series
from mmae_fast.ops.tcr import cpu, cpu_native, stages
from tests import independent as ind
from tests.gloo import spawn
from tests.op_names import OpNames
from tests.tcr_checks import (assert_compiles_fullgraph, assert_no_host_sync, grad_oracle,
                              value_oracle)
from torch.utils._python_dispatch import TorchDispatchMode
from tests.tolerances import (CPU_BACKEND, CPU_BACKEND_EXACT_GRAD_VS_REFERENCE,
                               CPU_FLOAT32_COMPLEMENT, rel_err)

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
KAPPAS = [2.0, 4.0, 65.0, 257.0]
SHAPES = [(45, 31), (31, 45)]  # n = 31 on the feature side, then on the sample side


def _features(gen, m, d, dtype=torch.float64):
    """Unequal norms, a shared direction and decaying column scales (a dominant eigenvalue)."""
    scale = (torch.arange(d, dtype=torch.float64) + 1.0) ** -0.5
    h = torch.randn(m, d, generator=gen, dtype=torch.float64) * scale
    h = h * torch.rand(m, 1, generator=gen, dtype=torch.float64).add(0.5)
    return (h + 0.5 * torch.randn(1, d, generator=gen, dtype=torch.float64)).to(dtype)


def _stage_inputs(gen, m, d, feature, centred, dtype):
    n = d if feature else m
    h = _features(gen, m, d, dtype)
    if dtype in (torch.float32, torch.float64):  # (half: 1/EPS overflows the gradient)
        h[2] = 0.0  # a zero row
        h[3] = (0.5 * reference.EPS) * h[4] / h[4].norm()  # a row below the norm floor
    rinv = stages._rinv(h)
    acc = rinv.dtype
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q = (a + a.mT).to(acc)
    v = torch.randn(d, generator=gen, dtype=torch.float64).to(acc) if centred else q.new_empty(0)
    coef = torch.tensor([0.7, -0.3], dtype=acc)
    return coef, h, rinv, q, v


@pytest.mark.parametrize("feature", [True, False])
@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("pair", [True, False])
def test_grad_is_the_stage_contract_in_float64(gen, feature, centred, pair):
    coef, h, rinv, q, v = _stage_inputs(gen, 9, 7, feature, centred and feature, torch.float64)
    coef = coef if pair else coef[:1]
    got = cpu.grad(coef, h, rinv, q, v, feature, 3.0)
    want = stages.grad(coef, h, rinv, q, v, feature, 3.0)
    assert got.dtype == torch.float64 and got.shape == h.shape
    assert rel_err(got, want) <= 1e-14
    assert rel_err(got[3], want[3]) <= 1e-14, "the row below the norm floor"
    assert rel_err(got[2], want[2]) <= 1e-14, "the zero row"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("feature", [True, False])
def test_grad_in_low_precision_against_float64(gen, dtype, feature):
    coef, h, rinv, q, v = _stage_inputs(gen, 33, 17, feature, feature, dtype)
    got = cpu.grad(coef, h, rinv, q, v, feature, 1.0)
    want = stages.grad(coef.double(), h.double(), stages._rinv(h.double()), q.double(),
                       v.double(), feature, 1.0)
    assert got.dtype == dtype
    assert rel_err(got, want.to(dtype)) <= CPU_BACKEND[dtype][1]


class _OpSizes(TorchDispatchMode):
    """Records (op name, number of elements of its first tensor output) of every op called."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) else out
        self.calls.append((str(func), first.numel() if isinstance(first, torch.Tensor) else 0))
        return out


def test_grad_makes_few_passes_over_the_rows(gen):
    """Stage 3 is one GEMM and at most five other ops producing m×d numbers (the generic stage
    makes about twelve): what makes the CPU path faster than the official loss."""
    m, d = 40, 24
    coef, h, rinv, q, v = _stage_inputs(gen, m, d, True, True, torch.float32)
    with _OpSizes() as ops:
        cpu.grad(coef, h, rinv, q, v, True, 1.0)
    big = [n for n, size in ops.calls if size == m * d]
    assert sum(n.startswith("aten.mm") for n in big) == 1, big
    assert len(big) <= 1 + 5 + 1, big  # + the z = h·rinv pass; v's subtraction with centring


#: (estimator, kappa): Taylor only where its polynomial is a loss one runs (y <= 3)
ESTIMATOR_KAPPAS = [(e, k) for e in ("exact", "series", "taylor") for k in KAPPAS
                    if e != "taylor" or k <= 4]


@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("estimator,kappa", ESTIMATOR_KAPPAS)
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_on_cpu_against_the_oracle(gen, m, d, kappa, centering, estimator, dtype):
    """tcr_loss(backend="auto") on a CPU tensor runs the cpu backend and gives the oracle's value
    and gradient; float64 stays float64, other inputs give a float32 value."""
    mu = (kappa - 1.0) * d / m
    assert series.kappa(mu, m, d) == pytest.approx(kappa)
    degree = reference.default_degree(estimator, kappa)
    h = _features(gen, m, d, dtype)
    assert backends.resolve_name("auto", h) == "cpu"
    x = h.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Taylor at mu·m/d >= 1
        value = mf.tcr_loss(x, mu, centering=centering, estimator=estimator,
                            order=degree if estimator != "exact" else None)
    value.backward()
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert x.grad.dtype == dtype
    vtol, gtol = CPU_BACKEND[dtype]
    expected = value_oracle(h, mu, centering, estimator, degree)
    assert abs(value.item() - expected) <= vtol * abs(expected)
    if estimator == "series":  # and the series' contract against the exact value
        exact = ind.tcr_exact(h, mu, centering)
        assert abs(value.item() - exact) <= (reference.SERIES_TOL + vtol) * abs(exact)
    want = grad_oracle(h, mu, centering, estimator, degree)
    assert rel_err(x.grad, want.to(dtype)) <= gtol


@pytest.mark.parametrize("kappa", [16.0, 65.0, 257.0])  # 257: the float32 form's edge
@pytest.mark.parametrize("m,d,centering", [(1023, 255, False), (1023, 255, True),
                                           (255, 1023, True)])
@pytest.mark.parametrize("collapsed", [False, True])
def test_exact_float32_contract_at_large_kappa(gen, kappa, m, d, centering, collapsed):
    """Exact on float32 input at a realistic odd n: R within 1e-5 relative; the gradient within
    CPU_BACKEND_EXACT_GRAD_VS_REFERENCE x the error of the float32 reference (reference.tcr on
    the same input: a float32 Gram, the float64 small side) against the float64 oracle; up to
    kappa 257 the gradient takes the float32 form (``cpu.FLOAT32_INVERSE_KAPPA``)."""
    mu = (kappa - 1.0) * d / m
    h = _features(gen, m, d)
    if collapsed:
        h = h[:, :1] * torch.randn(1, d, generator=gen, dtype=torch.float64) + 1e-2 * h
    h = h.float()
    x = h.clone().requires_grad_(True)
    value = mf.tcr_loss(x, mu, centering=centering)
    value.backward()
    expected = ind.tcr_exact(h, mu, centering)
    assert abs(value.item() - expected) <= 1e-5 * abs(expected)
    want = torch.from_numpy(ind.tcr_exact_grad(h, mu, centering))
    y = h.clone().requires_grad_(True)
    reference.tcr(y, mu, centering=centering).backward()
    floor = max(rel_err(y.grad, want), rel_err(want.float(), want))
    assert rel_err(x.grad, want) <= CPU_BACKEND_EXACT_GRAD_VS_REFERENCE * floor


@pytest.mark.parametrize("kappa,n,dtype,want", [
    (257.0, 255, torch.float32, "float32"),  # the float32 form up to cpu.FLOAT32_INVERSE_KAPPA
    (258.0, 255, torch.float32, "float64"),  # kappa above it
    (16.0, 191, torch.float32, "float64"),  # n below cpu.FLOAT32_INVERSE_MIN_N
    (16.0, 255, torch.float64, "float64"),  # float64 input
])
def test_exact_inverse_precision_choice(gen, monkeypatch, kappa, n, dtype, want):
    """The exact gradient's inverse is the float32 form (a float32 triangular solve, no
    potri) only where the tests measure its error within the contract
    (``cpu.exact_derivative``); else LAPACK's float64 potri. The Python small side (the native
    one takes the same branches: tests/ops/test_cpu_native.py)."""
    monkeypatch.setenv(cpu_native.NATIVE_ENV, "0")
    seen, inverse, solve = [], torch.cholesky_inverse, torch.linalg.solve_triangular
    monkeypatch.setattr(torch, "cholesky_inverse", lambda a, *r, **k: seen.append(
        ("potri", a.dtype)) or inverse(a, *r, **k))
    monkeypatch.setattr(torch.linalg, "solve_triangular", lambda a, *r, **k: seen.append(
        ("solve", a.dtype)) or solve(a, *r, **k))
    m = 4 * n
    mu = (kappa - 1.0) * n / m
    x = _features(gen, m, n, dtype).requires_grad_(True)
    mf.tcr_loss(x, mu).backward()
    assert seen == ([("solve", torch.float32)] if want == "float32"
                    else [("potri", torch.float64)]), seen


@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
def test_no_host_sync_and_the_op_calls(gen, estimator):
    """Forward + backward read no device value on the host; one small-side op call."""
    assert_no_host_sync(_features(gen, 40, 24, torch.float32), estimator)


@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_auto_on_cpu_compiles_fullgraph(gen, estimator):
    assert_compiles_fullgraph(_features(gen, 41, 23, torch.float32), estimator,
                              *CPU_BACKEND[torch.float32])


def test_gradcheck_float64(gen):
    for m, d in [(7, 5), (5, 7)]:
        for centering in (False, True):
            h = _features(gen, m, d).requires_grad_(True)
            assert torch.autograd.gradcheck(
                lambda x: mf.tcr_loss(x, 1.5, centering=centering, backend="cpu"), (h,))


def _gloo_worker(rank, world):
    g = torch.Generator().manual_seed(11)
    x = _features(g, 16, 11)
    out = {}
    for dtype in (torch.float64, torch.float32):
        for centering in (False, True):
            z = x[8 * rank: 8 * rank + 8].to(dtype).requires_grad_(True)
            with OpNames() as ops:
                loss = mf.tcr_loss(z, 0.7, centering=centering, group=dist.group.WORLD,
                                   grad_semantics="exact")
                loss.backward()
            out[(dtype, centering)] = (loss.detach(), z.grad, ops.names,
                                       backends.resolve_name("auto", z))
    return out


def test_two_gloo_ranks_through_the_cpu_stages():
    results = spawn(_gloo_worker)
    g = torch.Generator().manual_seed(11)
    x = _features(g, 16, 11)
    for (dtype, centering), _ in results[0].items():
        full = x.to(dtype).double()
        expected = ind.tcr_exact(full, 0.7, centering)
        want = torch.from_numpy(ind.tcr_exact_grad(full, 0.7, centering))
        vtol, gtol = CPU_BACKEND[dtype]
        for rank in range(2):
            value, grad, names, backend = results[rank][(dtype, centering)]
            assert backend == "cpu" and "mmae_fast.small_side.default" in names
            assert value.dtype == dtype
            assert abs(value.item() - expected) <= vtol * abs(expected)
            local = 2.0 * want[8 * rank: 8 * rank + 8]  # "exact": K x the local slice
            assert rel_err(grad, local) <= gtol


def test_lower_gram_from_blocks(gen):
    """``cpu.lower_gram`` of a lower-triangular matrix from n = BLOCKED_MIN on (odd n = 515,
    the zero block skipped) within float32 rounding of ``mᵀm``, its lower off-diagonal block
    the mirror of the upper (by construction); below BLOCKED_MIN one product."""
    n = cpu.BLOCKED_MIN + 3
    m = torch.randn(n, n, generator=gen).tril()
    p = cpu.lower_gram(m)
    half = n // 2
    assert torch.equal(p[half:, :half], p[:half, half:].mT)
    want = torch.from_numpy(m.double().numpy().T @ m.double().numpy())
    assert rel_err(p, want) <= CPU_BACKEND[torch.float32][0]
    small = torch.randn(cpu.BLOCKED_MIN - 1, cpu.BLOCKED_MIN - 1, generator=gen).tril()
    assert torch.equal(cpu.lower_gram(small), small.mT @ small)


@pytest.mark.parametrize("kappa", [1.01, 4.0, 257.0])
@pytest.mark.parametrize("n,collapsed", [(255, False), (255, True), (517, True)])
def test_float32_complement_keeps_w_digits(gen, kappa, n, collapsed):
    """``cpu.float32_complement``: W = I - A⁻¹ from the float64 factor of A = I + Y in float32
    products, within CPU_FLOAT32_COMPLEMENT (relative Frobenius) of the eigendecomposition's W
    at kappa 1.01 (W ~ 1e-2), 4 and 257, on spread and collapsed rows; odd n on both sides of
    BLOCKED_MIN (lower_gram's one product and its blocks)."""
    h = _features(gen, 2 * n + 1, n)
    if collapsed:
        h = h[:, :1] * torch.randn(1, n, generator=gen, dtype=torch.float64) + 1e-2 * h
    z = torch.nn.functional.normalize(h.float(), dim=1).double()
    g = z.mT @ z
    y = g * ((kappa - 1.0) / z.shape[0])  # c = mu/d with mu·m/d = kappa - 1
    a = y.clone()
    a.diagonal().add_(1.0)
    w = cpu.float32_complement(torch.linalg.cholesky(a))
    assert w.dtype == torch.float32
    assert rel_err(w, torch.from_numpy(ind.inverse_complement(y))) <= CPU_FLOAT32_COMPLEMENT


def test_symmetric_product_from_three_blocks(gen):
    """``cpu.symmetric_product`` from n = BLOCKED_MIN on (odd n = 515, three of four blocks):
    a Gram and a product of commuting symmetric matrices within float32 rounding of the full
    product, the upper off-diagonal block the mirror of the lower (by construction, on every
    BLAS), alpha applied; below BLOCKED_MIN one product."""
    n = cpu.BLOCKED_MIN + 3
    a = torch.randn(n, 301, generator=gen)
    g = cpu.symmetric_product(a, a.mT)
    half = n // 2
    assert torch.equal(g[:half, half:], g[half:, :half].mT)  # the mirrored block
    assert rel_err(g, a.double() @ a.double().mT) <= CPU_BACKEND[torch.float32][0]
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    x = (q * torch.rand(n, generator=gen, dtype=torch.float64)) @ q.mT
    y = (q * torch.rand(n, generator=gen, dtype=torch.float64)) @ q.mT
    p = cpu.symmetric_product(x.float(), y.float(), 0.5)
    assert torch.equal(p[:half, half:], p[half:, :half].mT)  # the mirrored block
    assert rel_err(p, 0.5 * x @ y) <= CPU_BACKEND[torch.float32][0]
    small = torch.randn(cpu.BLOCKED_MIN - 1, 7, generator=gen)
    assert torch.equal(cpu.symmetric_product(small, small.mT), small @ small.mT)
