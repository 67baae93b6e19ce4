"""The "triton" backend against the float64 reference (Triton's interpreter on CPU, the GPU when
there is one): values, gradients, kernels, the custom ops and torch.compile.

Shapes are odd and straddle the interpreter's 32-wide tiles (1 to 3 tiles per side), with m < d
(sample-side Gram) and m > d (feature side). Half-precision gradients are compared after a loss
scale of 2**10 (as AMP does): unscaled, many TCR gradient entries are fp16 subnormals and the
rounding of the *output* alone, identical for the reference cast to fp16, exceeds the tolerance.
"""
import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from tests.tolerances import assert_close

triton = pytest.importorskip("triton")

import mmae_fast  # noqa: E402
from mmae_fast import backends, reference, series  # noqa: E402
from mmae_fast.ops import reference_backend  # noqa: E402
from mmae_fast.ops import triton_backend  # noqa: E402
from mmae_fast.ops.plan import make_plan  # noqa: E402
from mmae_fast.triton import config, gram, tcr, traces  # noqa: E402

pytestmark = pytest.mark.skipif(triton_backend.availability() is not None,
                                reason=str(triton_backend.availability()))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(37, 21), (21, 37), (70, 53), (53, 70)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ESTIMATORS = ["exact", "series", "taylor"]
GRAD_SCALE = 2.0 ** 10


def _mu(estimator: str, m: int, d: int) -> float:
    """mu = 2 (kappa = 1 + 2m/d), Taylor: mu·m/d = 1/2 so that the series converges."""
    return 0.5 * d / m if estimator == "taylor" else 2.0


def _degree(estimator: str, mu: float, m: int, d: int) -> int:
    """The public API's default degree (series: relative error 1e-4 a priori)."""
    return reference.default_degree(estimator, series.kappa(mu, m, d))


def _features(gen, m, d, dtype):
    """Rows with unequal norms and a common offset (so that centring matters)."""
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    h = h * torch.rand(m, 1, generator=gen, dtype=torch.float64).add(0.5) + 0.3
    return h.to(dtype)


def _compare(h, mu, centering, estimator, degree):
    """Value and gradient of the triton backend and of the float64 reference on the same h."""
    x = h.to(DEVICE, copy=True).requires_grad_()
    value = triton_backend.tcr(x, mu=mu, centering=centering, estimator=estimator, degree=degree)
    scale = GRAD_SCALE if h.dtype in (torch.float16, torch.bfloat16) else 1.0
    value.backward(torch.tensor(scale, device=DEVICE))
    x64 = h.double().requires_grad_()
    ref = reference.tcr(x64, mu, centering=centering, estimator=estimator, degree=degree or None)
    ref.backward(torch.tensor(scale, dtype=torch.float64))
    return value, x.grad, ref, x64.grad


# ----------------------------------------------------------------------------- contract
def test_availability_and_supports_reasons(monkeypatch):
    assert triton_backend.availability() is None
    assert triton_backend.supports(torch.zeros(3, 4, device=DEVICE)) is None
    assert "float64" in triton_backend.supports(torch.zeros(3, 4, dtype=torch.float64,
                                                            device=DEVICE))
    assert "(m, d)" in triton_backend.supports(torch.zeros(2, 3, 4, device=DEVICE))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CUDA tensor" in triton_backend.supports(torch.zeros(3, 4))
    if not torch.cuda.is_available():
        assert "TRITON_INTERPRET" in triton_backend.availability()


def test_explicit_backend_rejects_float64_with_the_fix():
    with pytest.raises(ValueError, match="float64"):
        mmae_fast.tcr_loss(torch.randn(5, 4, dtype=torch.float64, device=DEVICE),
                           backend="triton")


def test_auto_never_picks_the_interpreter(monkeypatch):
    """On CPU tensors "auto" means the reference even while the interpreter is on."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.resolve("auto", torch.zeros(3, 4)) is reference_backend


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(5, 4, dtype=torch.float64), False, 1.0, "exact", 0, True), "float64"),
    ((torch.zeros(5, 4, dtype=torch.int32), False, 1.0, "exact", 0, True), "int32"),
    ((torch.zeros(2, 5, 4), False, 1.0, "exact", 0, True), r"\(m, d\)"),
    ((torch.zeros(0, 4), False, 1.0, "exact", 0, True), "non-empty"),
    ((torch.ones(5, 4), False, 0.0, "exact", 0, True), "mu must be"),
    ((torch.ones(5, 4), False, float("nan"), "series", 0, True), "mu must be"),
    ((torch.ones(5, 4), False, 1.0, "lu", 0, True), "estimator"),
    ((torch.ones(5, 4), False, 1.0, "series", -2, True), "degree"),
])
def test_ops_reject_bad_input_by_name(args, match):
    """The ops called directly (not through tcr_loss's checks) still fail with the reason."""
    args = (args[0].to(DEVICE),) + args[1:]
    with pytest.raises(ValueError, match=match):
        torch.ops.mmae_fast.triton_tcr_forward(*args)


def test_public_api_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="mu"):
        mmae_fast.tcr_loss(torch.ones(5, 4, device=DEVICE), -1.0, backend="triton")
    with pytest.raises(ValueError, match="estimator"):
        mmae_fast.tcr_loss(torch.ones(5, 4, device=DEVICE), estimator="lu", backend="triton")
    with pytest.raises((TypeError, ValueError), match="2-D"):
        mmae_fast.tcr_loss(torch.ones(5, device=DEVICE), backend="triton")


# ----------------------------------------------------------------------------- value + gradient
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("centering", [False, True])
def test_matches_reference(gen, shape, dtype, estimator, centering):
    m, d = shape
    mu = _mu(estimator, m, d)
    h = _features(gen, m, d, dtype)
    value, grad, ref, ref_grad = _compare(h, mu, centering, estimator, _degree(estimator, mu, m, d))
    assert value.dtype == torch.float32 and value.dim() == 0
    assert grad.dtype == dtype and grad.shape == h.shape
    assert_close(value, ref, dtype, kind="value")
    assert_close(grad, ref_grad, dtype, kind="grad")


@pytest.mark.parametrize("estimator", ["series", "taylor"])
@pytest.mark.parametrize("degree", [1, 2, 3, 6, 9])
def test_every_degree(gen, estimator, degree):
    """Odd and even degrees: the last basis matrix, the pair bookkeeping, P with and without
    the extra product. Centred, so that the degree-1 gradient (zero for unit rows) is not."""
    m, d = 45, 29
    mu = _mu(estimator, m, d)
    h = _features(gen, m, d, torch.float32)
    value, grad, ref, ref_grad = _compare(h, mu, True, estimator, degree)
    assert_close(value, ref, torch.float32, kind="value")
    assert_close(grad, ref_grad, torch.float32, kind="grad")


@pytest.mark.parametrize("shape", [(37, 21), (21, 37)])
@pytest.mark.parametrize("centering", [False, True])
def test_zero_row(gen, shape, centering):
    """A zero row stays zero after normalisation; its gradient is F.normalize's (scaled 1/eps)."""
    h = _features(gen, *shape, torch.float32)
    h[4] = 0.0
    value, grad, ref, ref_grad = _compare(h, 1.0, centering, "exact", 0)
    assert torch.isfinite(grad).all()
    assert_close(value, ref, torch.float32, kind="value")
    assert_close(grad, ref_grad, torch.float32, kind="grad")


def test_non_contiguous_input(gen):
    h = _features(gen, 29, 45, torch.float32)
    x = h.to(DEVICE).t().contiguous().t().requires_grad_()  # column-major view
    value = triton_backend.tcr(x, mu=1.0, centering=True, estimator="series", degree=6)
    value.backward()
    x64 = h.double().requires_grad_()
    ref = reference.tcr(x64, 1.0, centering=True, estimator="series", degree=6)
    ref.backward()
    assert_close(value, ref, torch.float32, kind="value")
    assert_close(x.grad, x64.grad, torch.float32, kind="grad")


def test_public_api_uses_the_kernels(gen):
    h = _features(gen, 40, 27, torch.float32).to(DEVICE)
    got = mmae_fast.tcr_loss(h, 3.0, centering=True, estimator="series", backend="triton")
    want = mmae_fast.tcr_loss(h.double(), 3.0, centering=True, estimator="series",
                              backend="reference")
    assert_close(got, want, torch.float32, kind="value")


def test_no_grad_skips_the_derivative(gen):
    h = _features(gen, 37, 21, torch.float32).to(DEVICE)
    with torch.no_grad():
        value = triton_backend.tcr(h, mu=2.0, centering=False, estimator="taylor", degree=5)
    value2, p, r, zbar = torch.ops.mmae_fast.triton_tcr_forward(h, False, 2.0, "taylor", 5, False)
    assert p.shape == (0, 0) and zbar.shape == (0,) and r.shape == (37,)
    assert_close(value, reference.tcr(h.double(), 2.0, estimator="taylor", degree=5),
                 torch.float32)
    assert value.item() == value2.item()
    x = h.clone().requires_grad_()
    out = torch.ops.mmae_fast.triton_tcr_forward(x, False, 2.0, "taylor", 5, False)[0]
    with pytest.raises(RuntimeError, match="need_grad=True"):
        out.backward()


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gram_kernel(gen, shape, centering, dtype):
    """Row norms, centring mean, B_1 = alpha·Y + beta·I, its trace terms and W/V initial values
    against plain float64 torch formulas."""
    m, d = shape
    n = min(m, d)
    h = _features(gen, m, d, dtype).to(DEVICE)
    cfg = config.choose(dtype, n)
    inline = d > m and not centering
    if inline:
        r, zbar = torch.empty(m, device=DEVICE), torch.empty(0, device=DEVICE)
    else:
        r, zbar = gram.row_stats(h, centering, reference.EPS, cfg)
    nt = triton.cdiv(n, cfg.block_n)
    dots = torch.full((nt * nt,), float("nan"), device=DEVICE)
    w, v = torch.empty(n, n, device=DEVICE), torch.empty(n, n, device=DEVICE)
    b1 = gram.gram_basis(h, r, zbar, centering=centering, inline_norms=inline, eps=reference.EPS,
                         alpha=0.3, beta=-1.0, dots=dots, w_self=0.7, w_tr=-0.2, wv=(w, v),
                         wv_coef=(0.5, 2.0, -1.5, 0.25), cfg=cfg)
    h64 = h.double().cpu()
    x = reference.normalized_features(h64, centering)
    want = 0.3 * reference.gram(x) - torch.eye(n, dtype=torch.float64)
    rtol = 1e-6 if dtype == torch.float32 else 2e-3
    assert_close(r, 1.0 / h64.norm(dim=1), torch.float32)
    if centering:
        assert_close(zbar, reference.l2_normalize(h64).mean(0), torch.float32)
    assert (b1.double().cpu() - want).norm() <= rtol * want.norm()
    assert (b1 - b1.mT).abs().max() <= 1e-6 * b1.abs().max()  # mirrored tiles
    fro = 0.7 * (want * want).sum() - 0.2 * want.trace()
    assert abs(dots.sum().item() - fro.item()) <= rtol * abs(fro.item()) * 10
    eye = torch.eye(n, dtype=torch.float64)
    assert (w.double().cpu() - (0.5 * eye + 2.0 * want)).norm() <= rtol * 2 * want.norm()
    assert (v.double().cpu() - (-1.5 * eye + 0.25 * want)).norm() <= rtol * want.norm()


@pytest.mark.parametrize("n", [19, 70])
def test_sym_gemm_kernel(gen, n):
    """C = gamma·X·Y + beta·I + e·E with the Frobenius epilogue and the W/V updates."""
    base = torch.randn(n, n, generator=gen, dtype=torch.float64)
    s = base + base.mT
    x64, y64 = s / n, (s @ s) / n ** 2 + torch.eye(n, dtype=torch.float64)  # commuting pair
    e64 = torch.randn(n, n, generator=gen, dtype=torch.float64)
    e64 = e64 + e64.mT
    x, y, e = (t.float().to(DEVICE) for t in (x64, y64, e64))
    w0, v0 = e.clone(), 2.0 * e
    cfg = config.choose(torch.float32, n)
    nt = triton.cdiv(n, cfg.block_n)
    dots = torch.full((nt * nt,), float("nan"), device=DEVICE)
    out = torch.empty(n, n, device=DEVICE)
    traces.sym_gemm(x, y, out, gamma=2.0, beta_eye=-0.5, e=e, e_coef=-1.0, dots=dots, prev=y,
                    w_prev=0.3, w_self=-0.4, w_tr=1.1, wv=(w0, v0), w_coef=0.2, v_coef=-3.0,
                    cfg=cfg)
    c = 2.0 * x64 @ y64 - 0.5 * torch.eye(n, dtype=torch.float64) - e64
    want_dots = 0.3 * (c * y64).sum() - 0.4 * (c * c).sum() + 1.1 * c.trace()
    assert_close(out, c, torch.float32)
    assert abs(dots.sum().item() - want_dots.item()) <= 1e-5 * (c * c).sum().item()
    assert_close(w0, e64 + 0.2 * c, torch.float32)
    assert_close(v0, 2.0 * e64 - 3.0 * c, torch.float32)


def test_trace_weights_regroup_and_reject():
    plan = make_plan(50, 20, mu=1.0, estimator="series", degree=7)
    tw = traces.trace_weights(plan.pair_j, plan.pair_l, plan.pair_w, plan.nbasis, 20)
    total = tw.const + sum(tw.w_prev) + sum(tw.w_self) + sum(tw.w_tr)
    assert total == pytest.approx(sum(plan.pair_w[i] * (20 if plan.pair_l[i] == 0 else 1)
                                      for i in range(len(plan.pair_w))))
    with pytest.raises(ValueError, match="B_1, B_3"):
        traces.trace_weights((1,), (3,), (1.0,), 3, 20)


_CHOOSE = config.choose


def _gpu_config(dtype, n):
    """The configuration ``config.choose`` makes on a GPU."""
    real = config.interpreting
    try:
        config.interpreting = lambda: False
        return _CHOOSE(dtype, n)
    finally:
        config.interpreting = real


@pytest.fixture
def gpu_dot_precision(monkeypatch):
    """Make the interpreter's tl.dot honour ``input_precision`` as a GPU does (it ignores it):
    "tf32" rounds float32 operands to tf32 (10-bit mantissa), "tf32x3" splits each into a tf32
    high and low part and sums the three products lo·hi + hi·lo + hi·hi."""
    if not config.interpreting():
        pytest.skip("emulates the GPU's dot precision in the interpreter")
    interp = pytest.importorskip("triton.runtime.interpreter")
    builder = getattr(interp, "InterpreterBuilder", None)
    to_tf32 = getattr(interp, "_round_f32_to_tf32", None)
    if builder is None or to_tf32 is None:
        pytest.skip("this triton's interpreter offers no hook to emulate tf32")
    dot = builder.create_dot

    def create_dot(self, a, b, acc, input_precision, max_num_imprecise_acc):
        mode = str(input_precision).upper()
        if "TF32" not in mode or a.data.dtype != np.float32:
            return dot(self, a, b, acc, input_precision, max_num_imprecise_acc)
        ah, bh = to_tf32(a.data), to_tf32(b.data)
        wa = lambda x: interp.TensorHandle(x, a.dtype.scalar)  # noqa: E731
        wb = lambda x: interp.TensorHandle(x, b.dtype.scalar)  # noqa: E731
        if "X3" in mode:
            al, bl = to_tf32(a.data - ah), to_tf32(b.data - bh)
            acc = dot(self, wa(al), wb(bh), acc, input_precision, max_num_imprecise_acc)
            acc = dot(self, wa(ah), wb(bl), acc, input_precision, max_num_imprecise_acc)
        return dot(self, wa(ah), wb(bh), acc, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(builder, "create_dot", create_dot)


def _run_with_config(monkeypatch, gen, choose, shape, dtype, estimator, centering):
    """Reference comparison with ``config.choose`` replaced by ``choose``; errors returned."""
    chosen = []
    monkeypatch.setattr(config, "choose", lambda dt, n: chosen.append(n) or choose(dt, n))
    m, d = shape
    mu = _mu(estimator, m, d)
    h = _features(gen, m, d, dtype)
    value, grad, ref, ref_grad = _compare(h, mu, centering, estimator, _degree(estimator, mu, m, d))
    assert chosen == [min(m, d)] * 2  # forward and backward ran with the patched configuration
    return value, grad, ref, ref_grad


@pytest.mark.parametrize("n_gpu", [64, 4096], ids=["tile64", "tile128"])
@pytest.mark.parametrize("shape, dtype, estimator, centering", [
    ((70, 45), torch.float32, "series", True), ((45, 70), torch.float16, "exact", False),
    ((45, 70), torch.float32, "taylor", False), ((70, 45), torch.float16, "series", False),
    ((45, 70), torch.float16, "taylor", True)])
def test_gpu_configs(monkeypatch, gpu_dot_precision, gen, n_gpu, shape, dtype, estimator,
                     centering):
    """The GPU's choices (tile sizes with block_k != block_n, 64/128-wide tiles larger than the
    matrix, fp16 tensor-core Gram, tf32x3 products for half inputs, emulated) against the
    reference. Only bf16's tensor-core dot is left to a GPU."""
    value, grad, ref, ref_grad = _run_with_config(
        monkeypatch, gen, lambda dt, n: _gpu_config(dt, n_gpu), shape, dtype, estimator,
        centering)
    assert_close(value, ref, dtype, kind="value")
    assert_close(grad, ref_grad, dtype, kind="grad")


def test_plain_tf32_misses_the_half_tolerance(monkeypatch, gpu_dot_precision, gen):
    """Why half inputs use tf32x3: with plain tf32 products the uncentred gradient misses the
    float16 tolerance (the normalisation projection cancels its large radial part). Also shows
    that the precision emulation of ``test_gpu_configs`` is live."""
    tf32 = lambda dt, n: dataclasses.replace(_gpu_config(dt, n), precision="tf32")  # noqa: E731
    _, grad, _, ref_grad = _run_with_config(monkeypatch, gen, tf32, (70, 45), torch.float16,
                                            "taylor", False)
    with pytest.raises(AssertionError, match="grad relative error"):
        assert_close(grad, ref_grad, torch.float16, kind="grad")


def test_interpreter_config_casts_bf16_dots():
    if not config.interpreting():
        pytest.skip("interpreter-only choice")
    assert not config.choose(torch.bfloat16, 64).half_dot
    assert config.choose(torch.float16, 64).half_dot
    assert dataclasses.asdict(config.choose(torch.float32, 64))["precision"] == "ieee"


# ----------------------------------------------------------------------------- ops / compile
@pytest.mark.parametrize("shape, centering", [((37, 21), True), ((21, 37), False)])
def test_opcheck(gen, shape, centering):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of both ops."""
    h = _features(gen, *shape, torch.float32).to(DEVICE).requires_grad_()
    torch.library.opcheck(torch.ops.mmae_fast.triton_tcr_forward.default,
                          (h, centering, 1.5, "series", 5, True))
    _, p, r, zbar = torch.ops.mmae_fast.triton_tcr_forward(h.detach(), centering, 1.5, "series",
                                                           5, True)
    torch.library.opcheck(torch.ops.mmae_fast.triton_tcr_backward.default,
                          (torch.tensor(1.0, device=DEVICE), h.detach(), p, r, zbar, centering,
                           1.5, "series", 5))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(gen, dynamic):
    """A training-step-like function calling the op through the public API compiles without
    graph breaks (fullgraph=True raises on one): dynamo + AOT autograd trace the fake kernels,
    the recorded forward/backward graphs must call the two ops, and the kernels run eagerly.
    The op plans from the real shapes inside, so dynamic shapes work too."""
    torch._dynamo.reset()

    def step(x, w):
        feats = x @ w
        return ((feats - 1.0) ** 2).mean() + 0.01 * mmae_fast.tcr_loss(
            feats, 3.0, centering=True, estimator="series", order=6, backend="triton")

    graphs = {"forward": [], "backward": []}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(gm.code)
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
    compiled = torch.compile(step, fullgraph=True, backend=backend, dynamic=dynamic)
    for m in (37, 41):
        x = _features(gen, m, 16, torch.float32).to(DEVICE)
        w1 = torch.randn(16, 23, generator=gen).to(DEVICE).requires_grad_()
        w2 = w1.detach().clone().requires_grad_()
        got, want = compiled(x, w1), step(x, w2)
        got.backward()
        want.backward()
        assert_close(got, want, torch.float32)
        assert_close(w1.grad, w2.grad, torch.float32, kind="grad")
    # the registered ops themselves are in the traced graphs (not a decomposition or a fallback)
    assert graphs["forward"] and all("triton_tcr_forward" in g for g in graphs["forward"])
    assert graphs["backward"] and all("triton_tcr_backward" in g for g in graphs["backward"])


# ----------------------------------------------------------------------------- GPU compilation
def test_kernels_compile_for_sm90():
    """The interpreter never compiles a kernel: compile the launches of two cases (fp16, both
    Gram sides, every kernel) for sm_90 with Triton's own ptxas, in a process without
    TRITON_INTERPRET (``python -m mmae_fast.triton.compile_check`` runs every case)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "mmae_fast.triton.compile_check",
                           "--quick", "--arch", "90"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled 9 kernel variants" in proc.stdout, proc.stdout
