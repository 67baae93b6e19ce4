"""Each kernel backend end to end through the public API (``tcr_loss(..., backend=...)``, i.e. the
staged op with the backend's gram/grad ops) against the float64 reference — and proof that the
backend's own ops ran (the recorded op names), not a fallback.

On the CPU only the Triton backend runs (Triton's interpreter, small shapes); on a GPU both.
"""
import pytest
import torch

import mmae_fast
from mmae_fast import backends, reference, series
from tests import extremes, independent as ind
from tests.op_names import OpNames
from tests.tolerances import STAGED_BACKEND

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_BACKENDS = [b for b in ("triton", "cuda") if backends.availability(b) is None]
SHAPES = [(37, 21), (21, 37), (70, 53)] if DEVICE == "cpu" else [
    (37, 21), (21, 37), (300, 129), (129, 300), (1000, 257)]


def _features(m, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + 31 * m + d)
    h = torch.randn(m, d, generator=g, dtype=torch.float64)
    h = h * torch.rand(m, 1, generator=g, dtype=torch.float64).add(0.5) + 0.3
    return h.to(dtype)


def _assert_matches_reference(value, x, h, mu, *, centering=False, estimator="exact",
                               degree=None, where=None):
    """value and x.grad (after ``(value·1024).backward()``) against ``reference.tcr`` in float64 on
    the same rounded input h, within ``STAGED_BACKEND[h.dtype]``."""
    ref_x = h.detach().double().clone().requires_grad_(True)
    ref = reference.tcr(ref_x, mu, centering=centering, estimator=estimator, degree=degree)
    (ref * 1024.0).backward()
    vtol, gtol = STAGED_BACKEND[h.dtype]
    assert _rel(value, ref) <= vtol, where
    assert _rel(x.grad, ref_x.grad.to(h.dtype)) <= gtol, where
    return ref_x.grad


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _dtypes(backend):
    out = [torch.float32, torch.float16, torch.bfloat16]
    return out + [torch.float64] if backend == "cuda" else out


CASES = [(b, dt) for b in KERNEL_BACKENDS for dt in _dtypes(b)]


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend,dtype", CASES or [(None, None)])
@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
@pytest.mark.parametrize("centering", [False, True])
def test_backend_matches_reference(backend, dtype, estimator, centering):
    """Value and gradient vs float64 on the same rounded input; the backend's ops ran."""
    for m, d in SHAPES:
        mu = 0.5 * d / m if estimator == "taylor" else 2.0
        h = _features(m, d, dtype)
        x = h.to(DEVICE).requires_grad_(True)
        # AMP-style loss scale: unscaled fp16 gradients are subnormal (their rounding alone
        # would exceed the tolerance, for the reference cast to fp16 too)
        with OpNames() as ops:
            value = mmae_fast.tcr_loss(x, mu, centering=centering, estimator=estimator,
                                       backend=backend)
            (value * 1024.0).backward()
        # with centring stage 1 is stages.centred_gram (the operand is centred before
        # the product) on every backend; the backward is always the backend's
        assert (f"mmae_fast.{backend}_gram.default" in ops.names) == (not centering)
        assert f"mmae_fast.{backend}_grad.default" in ops.names
        degree = reference.default_degree(estimator, series.kappa(mu, m, d))
        _assert_matches_reference(value, x, h, mu, centering=centering, estimator=estimator,
                                  degree=degree or None, where=(m, d))


EXTREME_CASES = [(b, c) for b in KERNEL_BACKENDS for c in extremes.CASES if c[0] in _dtypes(b)]


@pytest.mark.skipif(not EXTREME_CASES, reason="no kernel backend is available")
@pytest.mark.parametrize("backend,case", EXTREME_CASES or [(None, None)],
                         ids=lambda x: extremes.case_id(x) if isinstance(x, tuple) else str(x))
@pytest.mark.parametrize("feature", [True, False])
def test_features_of_any_size(backend, case, feature):
    """Rows of 1e20 / 1e30 (1e200 in float64; float16: 6e4), rows just above the floor beside
    them: the backend's own ops give the eigenvalue formula's value and its closed-form
    gradient (row by row at the rows' own scale) on the same rounded input."""
    dtype, scale, floor_rows = case
    m, d = (37, 21) if feature else (21, 37)
    h = extremes.at_scale(extremes.views(m, d)[0], dtype, scale, floor_rows)
    x = h.to(DEVICE).requires_grad_(True)
    with OpNames() as ops:
        value = mmae_fast.tcr_loss(x, 2.0, backend=backend)
        value.backward()
    assert f"mmae_fast.{backend}_gram.default" in ops.names
    vtol, gtol = STAGED_BACKEND[dtype]
    expected = torch.tensor(ind.tcr_exact(h.double(), 2.0), dtype=torch.float64)
    assert _rel(value, expected) <= vtol
    err, floor = extremes.tcr_grad_error(x.grad, h, 2.0)
    assert err <= max(gtol, 2.0 * floor)


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend,dtype", CASES or [(None, None)])
def test_taylor5_at_300x129(backend, dtype):
    """The case that gave NaN on the old CUDA path at 3c0e1f0 (float32/16/bf16, μ = 0.301,
    Taylor order 5, n = 129: one more than a 128-wide tile) — on CPU the triton interpreter,
    on a GPU both backends."""
    h = _features(300, 129, dtype)
    x = h.to(DEVICE).requires_grad_(True)
    value = mmae_fast.tcr_loss(x, 0.301, estimator="taylor", order=5, backend=backend)
    (value * 1024.0).backward()
    _assert_matches_reference(value, x, h, 0.301, estimator="taylor", degree=5)


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_half_inputs_within_the_contract(backend, dtype, estimator):
    """Half inputs on the feature side: R within the series' 1e-4 contract of float64 on the
    same rounded input, collapsed rows included. The Gram's operand is float16 for bfloat16 too:
    a bfloat16 operand moved R by 4.6e-4 on these inputs."""
    worst = 0.0
    for m, d in [(37, 21), (70, 53), (200, 64)]:
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(m, d, generator=g, dtype=torch.float64)
            h = ((torch.randn(m, 8, generator=g, dtype=torch.float64)
                  @ torch.randn(8, d, generator=g, dtype=torch.float64)) + 1e-3 * x).to(dtype)
            value = mmae_fast.tcr_loss(h.to(DEVICE), 2.0, estimator=estimator, backend=backend)
            ref = reference.tcr(h.double(), 2.0)
            worst = max(worst, _rel(value, ref))
    assert worst <= 1e-4, worst


@pytest.fixture
def nan_filled_empty():
    """Every torch.empty / new_empty NaN-filled (deterministic mode, warn-only): a read of
    memory nobody wrote shows as NaN instead of passing on whatever the allocator held."""
    import torch.utils.deterministic as det

    was_on, was_warn = (torch.are_deterministic_algorithms_enabled(),
                        torch.is_deterministic_algorithms_warn_only_enabled())
    was_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    assert torch.empty(3, device=DEVICE).isnan().all()
    yield
    det.fill_uninitialized_memory = was_fill
    torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


@pytest.mark.parametrize("backend", ["reference"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("n", [128, 129])
@pytest.mark.parametrize("estimator,degree", [("taylor", 4), ("taylor", 5), ("series", 9)])
def test_no_uninitialised_reads(nan_filled_empty, backend, n, estimator, degree):
    """The cause of the old CUDA path's NaN at (300, 129), Taylor 5 (3c0e1f0): a GEMM into a
    torch.empty slot of the basis with beta = -0.0, which cuBLAS may read as beta·C. With every
    fresh buffer NaN, each stage must still give the reference value (n = 128 and one more than
    a 128-wide tile; both Gram sides)."""
    import warnings

    from mmae_fast.ops.tcr import op as staged

    dtype = torch.float32
    for m, d in ((300, n), (n, 300)):
        h = _features(m, d, dtype)
        x = h.to(DEVICE, copy=True).requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deterministic-mode and Taylor-divergence notes
            value = staged.tcr(x, backend=backend, mu=0.301, centering=False,
                               estimator=estimator, degree=degree)
            (value * 1024.0).backward()
        _assert_matches_reference(value, x, h, 0.301, estimator=estimator, degree=degree,
                                  where=(m, d))


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend,dtype", CASES or [(None, None)])
@pytest.mark.parametrize("feature", [True, False])
def test_rows_at_the_norm_floor(backend, dtype, feature):
    """Rows with 0 < ||h_i|| <= EPS (z_i = h_i/EPS, norm 0.5 here) are not projected by the
    normalisation Jacobian, so the kernels must remove Q's radial shift from them themselves
    (they did not: ~1.0 relative error on such a row); a zero row alongside."""
    if dtype == torch.float16:
        pytest.skip("fp16 cannot hold such a row (0.5·EPS underflows) nor its gradient (~1e12)")
    m, d = (37, 21) if feature else (21, 37)
    h = _features(m, d, torch.float64)
    h[3] = 0.5 * reference.EPS * h[3] / h[3].norm()
    h[4] = 0.0
    h = h.to(dtype)
    for centering in (False, True):
        x = h.to(DEVICE, copy=True).requires_grad_(True)
        value = mmae_fast.tcr_loss(x, 2.0, centering=centering, backend=backend)
        (value * 1024.0).backward()
        ref_grad = _assert_matches_reference(value, x, h, 2.0, centering=centering)
        gtol = STAGED_BACKEND[dtype][1]
        assert _rel(x.grad[3], ref_grad[3].to(dtype)) <= gtol, "the floor row"
        assert _rel(x.grad[5:], ref_grad[5:].to(dtype)) <= gtol


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_four_op_calls_from_python(backend, estimator):
    """One staged fwd+bwd without a group or centring is four op calls from Python: the
    backend's gram, the small side, grad·qinfo, the backend's grad (views and the empty colsum
    aside)."""
    x = _features(40, 24, torch.float32).to(DEVICE).requires_grad_(True)
    mmae_fast.tcr_loss(x, 2.0, estimator=estimator, backend=backend).backward()  # warm caches
    x.grad = None
    with OpNames() as ops:
        mmae_fast.tcr_loss(x, 2.0, estimator=estimator, backend=backend).backward()
    views = ("aten.view", "aten.select", "aten.detach", "aten.alias", "aten._unsafe_view")
    calls = [n for n in ops.names if not n.startswith(views)]
    # the autograd engine's seed gradient (ones_like) and its accumulation into x.grad are not
    # ours; nor is the empty (0,) colsum of an uncentred run a kernel (new_empty, no bytes);
    # everything else is
    calls = [n for n in calls
             if not n.startswith(("aten.ones_like", "aten.detach", "aten.new_empty"))]
    assert calls == [f"mmae_fast.{backend}_gram.default", "mmae_fast.small_side.default",
                     "aten.mul.Tensor", f"mmae_fast.{backend}_grad.default"], calls


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
@pytest.mark.parametrize("centering", [False, True])
def test_backend_compiles_fullgraph(backend, estimator, centering):
    """tcr_loss on the kernel backend under torch.compile(fullgraph=True) at two batch sizes
    (aot_eager on the CPU: no C compiler needed; inductor on a GPU)."""
    torch._dynamo.reset()
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    fn = torch.compile(lambda x: mmae_fast.tcr_loss(x, 0.5, estimator=estimator,
                                                    centering=centering, backend=backend),
                       fullgraph=True, backend=compile_backend)
    for m in (40, 47):
        h = _features(m, 24, torch.float32)
        x = h.to(DEVICE).requires_grad_(True)
        value = fn(x)
        value.backward()
        degree = reference.default_degree(estimator, series.kappa(0.5, m, 24))
        ref_x = h.detach().double().requires_grad_(True)
        ref = reference.tcr(ref_x, 0.5, estimator=estimator, centering=centering,
                            degree=degree or None)
        ref.backward()
        assert _rel(value, ref) <= 1e-5
        assert _rel(x.grad, ref_x.grad) <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda" or not CASES, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_reduce_overhead_cuda_graphs(backend, estimator):
    """torch.compile(mode="reduce-overhead") (CUDA graphs over the whole step): values and
    gradients equal to the eager call's, over several replays with fresh inputs."""
    torch._dynamo.reset()

    def step(x):
        return mmae_fast.tcr_loss(x, 3.0, estimator=estimator, backend=backend)

    fn = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):
        h = _features(512, 256, torch.bfloat16, seed=seed).cuda()
        x = h.clone().requires_grad_(True)
        value = fn(x)
        value.backward()
        y = h.clone().requires_grad_(True)
        eager = step(y)
        eager.backward()
        assert _rel(value, eager) <= 1e-6
        assert _rel(x.grad, y.grad) <= 1e-3
