"""Each kernel backend end to end through the public API (``tcr_loss(..., backend=...)``, i.e. the
staged op with the backend's gram/grad ops) against the float64 reference — and proof that the
backend's own ops ran (the recorded op names), not a fallback.

On the CPU only the Triton backend runs (Triton's interpreter, small shapes); on a GPU both.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmae_fast
from mmae_fast import backends, reference, series
from tests.tolerances import STAGED_BACKEND

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_BACKENDS = [b for b in ("triton", "cuda") if backends.availability(b) is None]
SHAPES = [(37, 21), (21, 37), (70, 53)] if DEVICE == "cpu" else [
    (37, 21), (21, 37), (300, 129), (129, 300), (1000, 257)]


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _features(m, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + 31 * m + d)
    h = torch.randn(m, d, generator=g, dtype=torch.float64)
    h = h * torch.rand(m, 1, generator=g, dtype=torch.float64).add(0.5) + 0.3
    return h.to(dtype)


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
        with _Ops() as ops:
            value = mmae_fast.tcr_loss(x, mu, centering=centering, estimator=estimator,
                                       backend=backend)
            (value * 1024.0).backward()
        # with centring stage 1 is torch_stages.centred_gram (the operand is centred before
        # the product) on every backend; the backward is always the backend's
        assert (f"mmae_fast.{backend}_gram.default" in ops.names) == (not centering)
        assert f"mmae_fast.{backend}_grad.default" in ops.names
        ref_x = h.detach().double().requires_grad_(True)
        degree = reference.default_degree(estimator, series.kappa(mu, m, d))
        ref = reference.tcr(ref_x, mu, centering=centering, estimator=estimator,
                            degree=degree or None)
        (ref * 1024.0).backward()
        vtol, gtol = STAGED_BACKEND[dtype]
        assert _rel(value, ref) <= vtol, (m, d)
        assert _rel(x.grad, ref_x.grad.to(dtype)) <= gtol, (m, d)


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
    ref_x = h.detach().double().requires_grad_(True)
    ref = reference.tcr(ref_x, 0.301, estimator="taylor", degree=5)
    (ref * 1024.0).backward()
    vtol, gtol = STAGED_BACKEND[dtype]
    assert _rel(value, ref) <= vtol
    assert _rel(x.grad, ref_x.grad.to(dtype)) <= gtol


@pytest.mark.skipif(not CASES, reason="no kernel backend is available (triton not installed?)")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
def test_backend_compiles_fullgraph(backend, estimator):
    """tcr_loss on the kernel backend under torch.compile(fullgraph=True) at two batch sizes
    (aot_eager on the CPU: no C compiler needed; inductor on a GPU)."""
    torch._dynamo.reset()
    compile_backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    fn = torch.compile(lambda x: mmae_fast.tcr_loss(x, 0.5, estimator=estimator,
                                                    backend=backend),
                       fullgraph=True, backend=compile_backend)
    for m in (40, 47):
        h = _features(m, 24, torch.float32)
        x = h.to(DEVICE).requires_grad_(True)
        value = fn(x)
        value.backward()
        degree = reference.default_degree(estimator, series.kappa(0.5, m, 24))
        ref_x = h.detach().double().requires_grad_(True)
        ref = reference.tcr(ref_x, 0.5, estimator=estimator, degree=degree or None)
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
