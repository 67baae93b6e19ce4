"""U-MAE's uniformity on the staged op (``op.uniformity``, stage 2
``small_side.uniformity_side``): on the reference stages against the float64 reference and the
independent formula (tests/independent.py), the small side alone, its graph key, and on the
kernel backends through ``uniformity_loss(backend=...)``: their ops ran (recorded op names,
counted Triton interpreter launches), value and gradient within ``STAGED_BACKEND``, fullgraph
compile."""
import pytest
import torch

import mmae_fast as mf
from mmae_fast import backends, reference
from mmae_fast.ops.tcr import graph_cache, op as staged, small_side
from tests import independent as ind
from tests.op_names import OpNames, interpreter_launches
from tests.tolerances import STAGED_BACKEND, STAGED_UNIFORMITY

SHAPES = [(37, 21), (21, 37), (70, 53), (53, 70), (5, 5)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_BACKENDS = [b for b in ("triton", "cuda") if backends.availability(b) is None]
KERNEL_SHAPES = [(37, 21), (21, 37), (70, 53)] if DEVICE == "cpu" else [
    (37, 21), (21, 37), (300, 129), (129, 300), (1000, 257)]


def _features(gen, m, d, dtype=torch.float64):
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    return (h * torch.rand(m, 1, generator=gen, dtype=torch.float64).add(0.5) + 0.3).to(dtype)


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _run(h, backend="reference", scale=1.0):
    x = h.clone().to(DEVICE if backend != "reference" else h.device).requires_grad_(True)
    value = staged.uniformity(x, backend=backend)
    (value * scale).backward()
    return value, x.grad


def _reference(h, scale=1.0):
    x = h.detach().double().cpu().requires_grad_(True)
    value = reference.uniformity(x)
    (value * scale).backward()
    return value, x.grad


@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_staged_uniformity_matches_reference(gen, m, d, dtype):
    h = _features(gen, m, d, dtype)
    value, grad = _run(h)
    ref_value, ref_grad = _reference(h)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    vtol, gtol = STAGED_UNIFORMITY[dtype]
    assert _rel(value, ref_value) <= vtol
    assert _rel(grad, ref_grad.to(dtype)) <= gtol


@pytest.mark.parametrize("m,d", [(40, 17), (17, 40)])
def test_staged_uniformity_matches_the_independent_formula(gen, m, d):
    """Both Gram sides (feature for m >= d, sample otherwise) against numpy."""
    h = _features(gen, m, d)
    value, grad = _run(h)
    assert value.item() == pytest.approx(ind.uniformity(h), rel=1e-13)
    want = torch.from_numpy(ind.uniformity_grad(h))
    assert _rel(grad, want) <= 1e-13


def test_small_side_count_and_rows(gen):
    """The row count from a group (a tensor) and from the constants give the same outputs; no
    gradient: empty Q, qinfo [1, 0]; the value is ||G||²/M² with M the count, not G's side."""
    z = reference.l2_normalize(_features(gen, 30, 8))
    g = z.mT @ z
    empty = g.new_empty((0,))
    local = small_side.uniformity_side(g, None, small_side.uniformity_constants(
        m=30, feature=True, need_grad=True, grouped=False))
    grouped = small_side.uniformity_side(g, torch.tensor(30.0, dtype=g.dtype),
                                         small_side.uniformity_constants(
                                             m=60, feature=True, need_grad=True, grouped=True))
    for a, b in zip(local, grouped):
        assert torch.allclose(a, b, rtol=1e-15, atol=0)
    assert local[0].item() == pytest.approx(ind.uniformity(z), rel=1e-13)
    q = local[1] * local[3][0]  # Q' = 2P + alpha·I, P = 2G/M²
    alpha = local[3][1]
    want = 4.0 * g / 30 ** 2 + alpha * torch.eye(8, dtype=g.dtype)
    assert torch.allclose(q, want, rtol=1e-13, atol=1e-16)
    assert alpha.item() == pytest.approx(-4.0 * g.trace().item() / 30 ** 2 / 8, rel=1e-13)
    bare = small_side.small_side(g, empty, None, small_side.uniformity_constants(
        m=30, feature=True, need_grad=False, grouped=False))
    assert bare[1].numel() == 0 and bare[3].tolist() == [1.0, 0.0]
    assert torch.equal(bare[0], local[0])


def test_graph_key_covers_the_row_count(gen, monkeypatch):
    """A replayed graph keeps the first call's 1/m²: batch sizes 64, 40, 64 on the feature side
    must give two keys and the reference's values."""
    replays = {}

    def replay_first(fn, inputs, constants):
        key = graph_cache.graph_key(inputs, constants)
        return replays.setdefault(key, lambda *x: fn(*x, constants))(*inputs)

    monkeypatch.setattr(small_side.CACHE, "run", replay_first)
    for m in (64, 40, 64):
        h = _features(gen, m, 16)
        value, grad = _run(h)
        ref_value, ref_grad = _reference(h)
        assert _rel(value, ref_value) < 1e-13 and _rel(grad, ref_grad) < 1e-13, m
    assert len(replays) == 2


def test_no_host_sync_and_one_small_side(gen):
    h = _features(gen, 40, 24, torch.float32).requires_grad_(True)
    with OpNames() as rec:
        staged.uniformity(h, backend="reference").backward()
    assert not [op for op in rec.names if "_local_scalar_dense" in op or "item" in op]
    assert sum("mmae_fast.small_side" in op for op in rec.names) == 1



CASES = [(b, dt) for b in KERNEL_BACKENDS
         for dt in [torch.float32, torch.float16, torch.bfloat16]
         + ([torch.float64] if b == "cuda" else [])]


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend,dtype", CASES or [(None, None)])
def test_kernel_backend_matches_reference(gen, backend, dtype):
    """uniformity_loss(backend=...): the backend's gram and grad ops ran, value and gradient
    (AMP-style loss scale, as test_staged_backends.py) within STAGED_BACKEND."""
    for m, d in KERNEL_SHAPES:
        h = _features(gen, m, d, dtype)
        x = h.to(DEVICE).requires_grad_(True)
        with OpNames() as ops:
            value = mf.uniformity_loss(x, backend=backend)
            (value * 1024.0).backward()
        assert f"mmae_fast.{backend}_gram.default" in ops.names
        assert f"mmae_fast.{backend}_grad.default" in ops.names
        ref_value, ref_grad = _reference(h, 1024.0)
        vtol, gtol = STAGED_BACKEND[dtype]
        assert _rel(value, ref_value) <= vtol, (m, d)
        assert _rel(x.grad, ref_grad.to(dtype)) <= gtol, (m, d)


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS or DEVICE != "cpu",
                    reason="counts Triton interpreter launches (CPU, triton installed)")
def test_triton_kernels_launch_in_forward_and_backward(gen, monkeypatch):
    h = _features(gen, 24, 16, torch.float32)
    launched = interpreter_launches(monkeypatch)
    x = h.clone().requires_grad_()
    value = mf.uniformity_loss(x, backend="triton")
    forward = len(launched)
    assert forward > 0, "backend='triton' launched no Triton kernel in the forward"
    value.backward()
    assert len(launched) > forward, "backend='triton' launched no Triton kernel in the backward"
    assert value.item() == pytest.approx(ind.uniformity(h), rel=STAGED_BACKEND[torch.float32][0])
    want = torch.from_numpy(ind.uniformity_grad(h))
    assert _rel(x.grad, want) <= STAGED_BACKEND[torch.float32][1]


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
def test_kernel_backend_compiles_fullgraph(gen, backend):
    torch._dynamo.reset()
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    fn = torch.compile(lambda x: mf.uniformity_loss(x, backend=backend), fullgraph=True,
                       backend=compile_backend)
    for m in (40, 47):
        h = _features(gen, m, 24, torch.float32)
        x = h.to(DEVICE).requires_grad_(True)
        value = fn(x)
        value.backward()
        ref_value, ref_grad = _reference(h)
        assert _rel(value, ref_value) <= STAGED_BACKEND[torch.float32][0]
        assert _rel(x.grad, ref_grad) <= STAGED_BACKEND[torch.float32][1]


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
def test_renyi_2_on_the_kernel_backend(gen, backend):
    """matrix_entropy(alpha=2) = -log(uniformity) on the kernel's ops: value and gradient
    against the independent eigenvalue formula; other orders have no kernel."""
    m, d = KERNEL_SHAPES[0]
    h = _features(gen, m, d, torch.float32)
    x = h.to(DEVICE).requires_grad_(True)
    with OpNames() as ops:
        value = mf.matrix_entropy(x, 2.0, backend=backend)
        value.backward()
    assert f"mmae_fast.{backend}_gram.default" in ops.names
    assert f"mmae_fast.{backend}_grad.default" in ops.names
    vtol, gtol = STAGED_BACKEND[torch.float32]
    assert value.item() == pytest.approx(ind.matrix_entropy(h, 2.0), rel=vtol)
    assert _rel(x.grad, torch.from_numpy(ind.matrix_entropy_grad(h, 2.0))) <= gtol
    assert mf.nn.MatrixEntropy(2.0, backend=backend)(x).item() == value.item()
    with pytest.raises(ValueError, match=f"no '{backend}' kernel"):
        mf.matrix_entropy(x, 1.0, backend=backend)


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
def test_renyi_2_on_the_kernel_backend_with_rows_at_the_floor(gen, backend):
    """Zero rows and rows below the 1e-12 norm floor make tr(ZᵀZ) < m: H_2 follows the float64
    reference (value and gradient); an all-zero batch gives the reference's 0 with a zero
    gradient."""
    m, d = KERNEL_SHAPES[0]
    h = _features(gen, m, d, torch.float64)
    h[:3] = 0.0
    h[3:5] *= 1e-13
    want = h.clone().requires_grad_(True)
    expected = mf.matrix_entropy(want, 2.0, backend="reference")
    expected.backward()
    x = h.float().to(DEVICE).requires_grad_(True)
    value = mf.matrix_entropy(x, 2.0, backend=backend)
    value.backward()
    vtol, gtol = STAGED_BACKEND[torch.float32]
    assert value.item() == pytest.approx(expected.item(), rel=vtol)
    assert _rel(x.grad.double().cpu(), want.grad) <= gtol
    zero = torch.zeros(m, d, device=DEVICE, requires_grad=True)
    value = mf.matrix_entropy(zero, 2.0, backend=backend)
    value.backward()
    assert value.item() == 0.0 and torch.equal(zero.grad, torch.zeros_like(zero))
