"""The "triton" backend's staged ops against the contract, ``mmae_fast.ops.tcr.stages`` run in
float64 on float64 copies of the inputs (Triton's interpreter on CPU, the real kernels on a GPU
when there is one).

    triton_gram(h, feature) -> G (n, n), rinv (m,)
    triton_grad(coef, h, rinv, q, v, feature, scale) -> dh (m, d) in h's dtype

Shapes are odd and straddle the interpreter's 32-wide tiles, with m < d and m > d and the Gram on
either side; every input has a zero row (except fp16 gradients, where the contract's
``rinv·gx = 1e12·gx`` overflows: the float64 value rounds to inf as well). Tolerances:
``tests/tolerances.py::TRITON_STAGE_TOLERANCES``.
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.fake_tensor import FakeTensorMode

from tests import extremes
from tests.tolerances import TRITON_STAGE_TOLERANCES as TOL
from tests.tolerances import assert_close, rel_err

triton = pytest.importorskip("triton")

import mmae_fast  # noqa: E402
from mmae_fast import backends, reference  # noqa: E402
from mmae_fast.ops.tcr import stages  # noqa: E402
from mmae_fast.ops.tcr.triton import backend as triton_backend  # noqa: E402
from mmae_fast.ops.tcr.triton import config, grad_kernel as stage_grad, gram_kernel as stage_gram  # noqa: E402

pytestmark = pytest.mark.skipif(triton_backend.availability() is not None,
                                reason=str(triton_backend.availability()))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(37, 21), (21, 37), (70, 53)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = reference.EPS


def _features(gen, m, d, dtype, zero_row=True):
    """Rows with unequal norms and a common offset; row 2 zero if ``zero_row``."""
    h = torch.randn(m, d, generator=gen, dtype=torch.float64)
    h = h * torch.rand(m, 1, generator=gen, dtype=torch.float64).add(0.5) + 0.3
    if zero_row:
        h[2] = 0.0
    return h.to(dtype)


def _collapsed(gen, m, d, dtype):
    """Nearly parallel rows (a collapsed representation): the projection cancels most of gx."""
    u = torch.randn(1, d, generator=gen, dtype=torch.float64)
    return (u + 0.03 * torch.randn(m, d, generator=gen, dtype=torch.float64)).to(dtype)


def _f64(x):
    return x.detach().double().cpu()


def _gram64(h, feature):
    """``(G, rinv)`` of the contract: ``stages.gram`` on a float64 copy of h."""
    return stages.gram(_f64(h), feature)


def _z64(h):
    """(z, rinv) in float64 from the input values (``stages.gram``'s rinv)."""
    rinv = _gram64(h, True)[1]
    return _f64(h) * rinv[:, None], rinv


def _grad64(coef, h, q, v, feature, scale):
    """dh of the contract: ``stages.grad`` on float64 copies (rinv from ``stages.gram``)."""
    return stages.grad(_f64(coef), _f64(h), _z64(h)[1], _f64(q), _f64(v), feature, scale)


def _q(g64, mu=2.0):
    """A realistic derivative matrix: (I + c·G)⁻¹ (c = mu/n), pre-scaled to max|q| = 1."""
    n = g64.shape[0]
    q = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + mu / n * g64)
    return q / q.abs().max()


def _check(x, ref, rtol, what):
    err = rel_err(x, ref)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


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


def test_registry_and_auto(monkeypatch):
    """The registry resolves "triton" to this module; "auto" never picks the interpreter (CPU
    tensors run the cpu backend)."""
    from mmae_fast.ops.tcr import cpu as cpu_backend

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.resolve("triton", torch.zeros(3, 4, device=DEVICE)) is triton_backend
    assert backends.resolve("auto", torch.zeros(3, 4)) is cpu_backend


def test_ops_are_registered_and_run(gen, monkeypatch):
    """gram/grad go through the registered custom ops, which run the stage kernels (counted)."""
    calls = []
    for mod, name in ((stage_gram, "gram"), (stage_grad, "grad")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=name, **k: (
            calls.append(_n), _real(*a, **k))[1])
    seen = []
    for op in ("triton_gram", "triton_grad"):
        packet = getattr(torch.ops.mmae_fast, op)
        monkeypatch.setattr(torch.ops.mmae_fast, op, lambda *a, _p=packet, _o=op: (
            seen.append(_o), _p(*a))[1])
    h = _features(gen, 37, 21, torch.float32).to(DEVICE)
    g, rinv = triton_backend.gram(h, True)
    triton_backend.grad(torch.tensor(1.0, device=DEVICE), h, rinv, g, g.new_empty(0), True, 1.0)
    assert seen == ["triton_gram", "triton_grad"] and calls == ["gram", "grad"]


def _grad_call(coef=(), rinv=5, q=4, v=0, feature=True, qdtype=torch.float32):
    """A triton_grad call on h = ones(5, 4) with one argument made wrong."""
    def call(h):
        dev = h.device
        return triton_backend.grad(torch.ones(coef, device=dev), h, torch.ones(rinv, device=dev),
                                   torch.eye(q, dtype=qdtype, device=dev),
                                   torch.ones(v, device=dev), feature, 1.0)
    return call


@pytest.mark.parametrize("call, match", [
    (lambda h: triton_backend.gram(h.double(), True), "float64"),
    (lambda h: triton_backend.gram(h.int(), True), "int32"),
    (lambda h: triton_backend.gram(h[None], True), r"\(m, d\)"),
    (lambda h: triton_backend.gram(h[:0], True), "non-empty"),
    (_grad_call(coef=(3,)), "coef must be a floating tensor of one or two numbers"),
    (_grad_call(coef=(1, 2)), "coef must be a floating tensor of one or two numbers"),
    (_grad_call(rinv=4), "rinv must be"),
    (_grad_call(feature=False), r"q must be.*feature=False"),
    (_grad_call(qdtype=torch.float64), "q must be a float32"),
    (_grad_call(v=5), r"v must be.*\(0,\) means"),
])
def test_ops_reject_bad_input_by_name(call, match):
    """Direct calls fail with a ValueError naming the argument and the fix (no kernel runs)."""
    with pytest.raises(ValueError, match=match):
        call(torch.ones(5, 4, device=DEVICE))


def test_interpreter_config_emulates_bf16():
    if not config.interpreting():
        pytest.skip("interpreter-only choice")
    bf16, fp16 = config.choose_stage(torch.bfloat16, 64), config.choose_stage(torch.float16, 64)
    assert bf16.emulate_bf16 and not bf16.half_dot
    assert fp16.half_dot and not fp16.emulate_bf16
    assert config.choose_stage(torch.float32, 64).precision == "ieee"


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", [True, False])
def test_gram(gen, shape, dtype, feature):
    h = _features(gen, *shape, dtype)
    g, rinv = triton_backend.gram(h.to(DEVICE), feature)
    g64, rinv64 = _gram64(h, feature)
    n = shape[1] if feature else shape[0]
    assert g.shape == (n, n) and g.dtype == torch.float32 and g.is_contiguous()
    assert torch.equal(g, g.T), "both triangles, mirrored"
    _check(g, g64, TOL[dtype]["gram"], "G")
    _check(rinv, rinv64, 2e-7, "rinv")  # float32 sum of squares of exact input values
    assert float(rinv[2]) == pytest.approx(1.0 / EPS, rel=1e-6)  # the zero row


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_row_splits(gen, dtype, monkeypatch):
    """Feature side with the rows split over several programs per tile (split-K, as for large
    m on a GPU): partial Grams added, G still exactly symmetric."""
    monkeypatch.setattr(stage_gram, "MIN_SPLIT_BLOCKS", 1)
    cfg = config.choose_stage(dtype, 37)
    m = 3 * cfg.block_k + 5
    h = _features(gen, m, 37, dtype)
    splits, rows = stage_gram._row_splits(m, 37, cfg.block_n, cfg.block_k)
    assert splits >= 2 and rows % cfg.block_k == 0 and (splits - 1) * rows < m
    g, rinv = triton_backend.gram(h.to(DEVICE), True)
    g64, rinv64 = _gram64(h, True)
    assert torch.equal(g, g.T)
    _check(g, g64, TOL[dtype]["gram"], "G")
    _check(rinv, rinv64, 2e-7, "rinv")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", [True, False])
@pytest.mark.parametrize("with_v", [False, True])
def test_grad(gen, shape, dtype, feature, with_v):
    m, d = shape
    h = _features(gen, m, d, dtype, zero_row=dtype != torch.float16)
    g64, _ = _gram64(h, feature)
    q = _q(g64).float()
    v = (0.3 * torch.randn(d, generator=gen)) if with_v else torch.empty(0)
    grad = torch.tensor(0.7)
    _, rinv = triton_backend.gram(h.to(DEVICE), feature)
    dh = triton_backend.grad(grad.to(DEVICE), h.to(DEVICE), rinv, q.to(DEVICE), v.to(DEVICE),
                             feature, -1.3)
    assert dh.shape == (m, d) and dh.dtype == dtype and dh.is_contiguous()
    ref = _grad64(grad, h, q, v, feature, -1.3)
    rows = torch.ones(m, dtype=torch.bool)
    if dtype != torch.float16:
        rows[2] = False  # the zero row, ~1e12 larger: compared on its own
        _check(dh[2], ref[2], TOL[dtype]["grad"], "dh of the zero row")
    _check(dh.cpu()[rows], ref[rows], TOL[dtype]["grad"], "dh")


@pytest.mark.parametrize("case", [c for c in extremes.CASES if c[0] in DTYPES],
                         ids=extremes.case_id)
@pytest.mark.parametrize("feature", [True, False])
def test_stages_at_extreme_scales(case, feature):
    """Row norms without overflow (``_row_norms_kernel``, the sample Gram's operands): rows of
    1e20 / 1e30 (float16: 6e4), and rows just above the floor beside them. G, rinv and dh
    against the float64 contract; rinv and dh row by row at the rows' own scale."""
    dtype, scale, floor_rows = case
    h = extremes.at_scale(extremes.views(37, 21)[0], dtype, scale, floor_rows)
    g, rinv = triton_backend.gram(h.to(DEVICE), feature)
    g64, rinv64 = _gram64(h, feature)
    _check(g, g64, TOL[dtype]["gram"], "G")
    assert float((rinv.double().cpu() / rinv64 - 1.0).abs().max()) <= 2e-7
    q = _q(g64).float()
    v = 0.3 * torch.randn(21, generator=torch.Generator().manual_seed(5))
    coef = torch.tensor([0.7, 0.2])
    dh = triton_backend.grad(coef.to(DEVICE), h.to(DEVICE), rinv, q.to(DEVICE), v.to(DEVICE),
                             feature, -1.3)
    ref = _grad64(coef, h, q, v, feature, -1.3)
    norms = 1.0 / rinv64[:, None]
    floor = rel_err(ref.to(dtype).double() * norms, ref * norms)
    _check(dh.double().cpu() * norms, ref * norms, max(TOL[dtype]["grad"], 2.0 * floor), "dh")


@pytest.mark.parametrize("feature", [True, False])
def test_grad_accepts_any_float_grad_and_row_strides(gen, feature):
    """grad in float64 / bfloat16; h a column slice (row stride > d) or a transposed view."""
    h = _features(gen, 37, 21, torch.float32)
    g64, _ = _gram64(h, feature)
    q = _q(g64).float().to(DEVICE)
    v = torch.empty(0, device=DEVICE)
    wide = torch.zeros(37, 30, device=DEVICE)
    wide[:, :21] = h.to(DEVICE)
    views = [wide[:, :21], h.T.contiguous().T.to(DEVICE)]
    assert views[0].stride() == (30, 1) and views[1].stride() == (1, 37)
    ref = _grad64(torch.tensor(0.5), h, q, v, feature, 1.0)
    for x, gdt in zip(views, (torch.float64, torch.bfloat16)):
        g, rinv = triton_backend.gram(x, feature)
        _check(g, g64, TOL[torch.float32]["gram"], "G of a strided view")
        dh = triton_backend.grad(torch.tensor(0.5, dtype=gdt, device=DEVICE), x, rinv, q, v,
                                 feature, 1.0)
        assert dh.is_contiguous()
        _check(dh.cpu()[3:], ref[3:], TOL[torch.float32]["grad"], "dh of a strided view")


# ----------------------------------------------------------------------------- split3
def _round(x, dtype):
    return x.to(dtype).double()


def _products(z32, q32, dtype, feature):
    """(single half product, split3) of the rounded operands, emulated exactly in float64
    (tensor cores: exact half products, float32-or-better accumulation)."""
    zhi, qhi = _round(z32, dtype), _round(q32, dtype)
    zlo, qlo = _round(z32.double() - zhi, dtype), _round(q32.double() - qhi, dtype)
    mul = (lambda a, b: a @ b) if feature else (lambda a, b: b @ a)
    return mul(zhi, qhi), mul(zlo, qhi) + mul(zhi, qlo) + mul(zhi, qhi)


def _project(h, prod):
    """dh from a given (emulated) Z·Q (or Q·Z) product, in float64 (coef = scale = 1, v = 0;
    no floor rows in these inputs)."""
    z, rinv = _z64(h)
    return rinv[:, None] * (prod - z * (z * prod).sum(1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("feature", [True, False])
def test_split3_emulation_on_collapsed_features(gen, dtype, feature):
    """The claim behind split3, by emulating exactly the roundings of the kernel (z = h·rinv in
    float32, hi/lo halves of z and q). On these collapsed features (rows 0.03-close to one
    direction, q = (I + 3/n·G)⁻¹) the rounding of dh itself to the input dtype errs by 1.7e-3
    (bf16) / 2.1e-4 (fp16); a single half product by 7.6e-2 / 9.1e-3, far above it; split3 by
    1.3e-4 / 1.1e-5 (its dropped lo·lo term is u² ≈ 1.5e-5 of |z||q| for bf16, amplified by the
    projection's cancellation), well below it."""
    m, d = 512, 128
    h = _collapsed(gen, m, d, dtype)
    g64, rinv = _gram64(h, feature)
    z32 = (h.float() * rinv.float()[:, None])
    q32 = _q(g64, mu=3.0).float()
    exact = _grad64(torch.tensor(1.0), h, q32, torch.empty(0), feature, 1.0)
    single, split = (_project(h, p) for p in _products(z32, q32, dtype, feature))
    floor = rel_err(exact.to(dtype), exact)
    assert rel_err(single, exact) > 5 * floor
    assert rel_err(split, exact) < floor / 5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, feature", [((96, 40), True), ((40, 96), False)])
def test_kernel_split3_on_collapsed_features(gen, dtype, shape, feature):
    """The kernel on collapsed features is as close to float64 as dh's own rounding (within
    10 %), where the single-product emulation is at least 3x worse: split3 is what ran."""
    h = _collapsed(gen, *shape, dtype)
    g64, rinv64 = _gram64(h, feature)
    q = _q(g64, mu=3.0).float()
    _, rinv = triton_backend.gram(h.to(DEVICE), feature)
    dh = triton_backend.grad(torch.tensor(1.0, device=DEVICE), h.to(DEVICE), rinv,
                             q.to(DEVICE), torch.empty(0, device=DEVICE), feature, 1.0).cpu()
    exact = _grad64(torch.tensor(1.0), h, q, torch.empty(0), feature, 1.0)
    floor = rel_err(exact.to(dtype), exact)
    assert rel_err(dh, exact) <= 1.1 * floor
    z32 = h.float() * rinv64.float()[:, None]
    single = _project(h, _products(z32, q, dtype, feature)[0]).to(dtype)
    assert rel_err(single, exact) > 3 * rel_err(dh, exact)


# ----------------------------------------------------------------------------- ops / compile
@pytest.mark.parametrize("shape, feature", [((37, 21), True), ((21, 37), False)])
def test_fake_matches_real_and_opcheck(gen, shape, feature):
    """The fake kernels give the real outputs' shapes, strides and dtypes; torch.library.opcheck
    (schema, fake tensors, AOT dispatch) passes for both ops."""
    h = _features(gen, *shape, torch.bfloat16).to(DEVICE)
    real = triton_backend.gram(h, feature)
    n = real[0].shape[0]
    q = _q(real[0].double().cpu()).float().to(DEVICE)
    v = torch.randn(shape[1], generator=gen).to(DEVICE)
    args = (torch.tensor(1.0, device=DEVICE), h, real[1], q, v, feature, 0.5)
    real_dh = torch.ops.mmae_fast.triton_grad(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fh = mode.from_tensor(h)
        fake = torch.ops.mmae_fast.triton_gram(fh, feature)
        fake_dh = torch.ops.mmae_fast.triton_grad(*(mode.from_tensor(a) if torch.is_tensor(a)
                                                    else a for a in args))
    for f, r in zip((*fake, fake_dh), (*real, real_dh)):
        assert (f.shape, f.stride(), f.dtype, f.device) == (r.shape, r.stride(), r.dtype,
                                                            r.device)
    assert real[0].shape == (n, n)
    torch.library.opcheck(torch.ops.mmae_fast.triton_gram.default, (h, feature))
    torch.library.opcheck(torch.ops.mmae_fast.triton_grad.default, args)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(gen, dynamic, monkeypatch):
    """A function calling both ops (with a torch small side between them) compiles with
    fullgraph=True (dynamo + AOT trace the fake kernels), the traced graph calls the two ops and
    the kernels run (counted); results equal eager."""
    torch._dynamo.reset()
    ran = []
    real = stage_gram.gram
    monkeypatch.setattr(stage_gram, "gram", lambda *a: (ran.append("gram"), real(*a))[1])

    def staged(h, grad):
        g, rinv = triton_backend.gram(h, True)
        colsum = (h.float() * rinv[:, None]).sum(0)
        n = g.shape[0]
        s = g - torch.outer(colsum, colsum) / h.shape[0]
        q = torch.linalg.inv(torch.eye(n, device=h.device) + s / n)
        v = q @ colsum / h.shape[0]
        return triton_backend.grad(grad, h, rinv, q, v, True, -2.0 / n)

    graphs = []

    def compiler(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    compiled = torch.compile(staged, fullgraph=True, dynamic=dynamic,
                             backend=aot_autograd(fw_compiler=compiler))
    for m in (37, 41):
        h = _features(gen, m, 21, torch.float16, zero_row=False).to(DEVICE)
        grad = torch.tensor(1.5, device=DEVICE)
        assert torch.equal(compiled(h, grad), staged(h, grad))
    assert graphs and all("triton_gram" in g and "triton_grad" in g for g in graphs)
    assert ran.count("gram") == 4


# ----------------------------------------------------------------------------- staged layer
@pytest.mark.parametrize("shape", [(70, 37), (37, 70)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("centering", [False, True])
def test_staged_layer_runs_on_these_ops(gen, shape, dtype, centering):
    """The shared staged op (``mmae_fast.ops.tcr.op``) with backend="triton": value and input
    gradient of the exact estimator against ``reference.tcr`` in float64 (half gradients after a
    2**10 loss scale, as AMP does)."""
    from mmae_fast.ops.tcr import op as staged
    h = _features(gen, *shape, dtype, zero_row=False)
    x = h.to(DEVICE, copy=True).requires_grad_()
    value = staged.tcr(x, backend="triton", mu=2.0, centering=centering, estimator="exact")
    value.backward(torch.tensor(2.0 ** 10, device=DEVICE))
    x64 = h.double().requires_grad_()
    ref = reference.tcr(x64, 2.0, centering=centering)
    ref.backward(torch.tensor(2.0 ** 10, dtype=torch.float64))
    assert_close(value, ref, dtype, kind="value")
    assert_close(x.grad, x64.grad, dtype, kind="grad")


def test_public_api_uses_the_kernels(gen, monkeypatch):
    """``tcr_loss(..., backend="triton")`` runs these ops (counted) and matches the reference."""
    ran = []
    real = stage_gram.gram
    monkeypatch.setattr(stage_gram, "gram", lambda *a: (ran.append("gram"), real(*a))[1])
    h = _features(gen, 40, 27, torch.float32, zero_row=False).to(DEVICE)
    got = mmae_fast.tcr_loss(h, 3.0, estimator="series", backend="triton")
    want = mmae_fast.tcr_loss(h.double(), 3.0, estimator="series", backend="reference")
    assert_close(got, want, torch.float32, kind="value")
    assert ran == ["gram"]


# ----------------------------------------------------------------------------- GPU compilation
def test_kernels_compile_for_sm90():
    """The interpreter never compiles a kernel: compile the launches of two cases (fp16 feature
    side with v, bf16 sample side, one tf32x3 small-side product) for sm_90 with Triton's own ptxas, in a process
    without TRITON_INTERPRET (``python -m mmae_fast.ops.tcr.triton.compile_check`` runs every case)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "mmae_fast.ops.tcr.triton.compile_check",
                           "--quick", "--arch", "90"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 12: the bf16 sample side launches _row_norms_kernel before its Gram, as the feature side;
    # 13: the small side's tf32x3 product (small_kernel), printed with its TF32 instructions
    assert "compiled 13 kernel variants" in proc.stdout, proc.stdout
    assert "small_kernel._product_kernel" in proc.stdout and "(tf32)" in proc.stdout, proc.stdout


def test_tensor_core_check_names_a_simt_half_product():
    """compile_check refuses a half-input product whose PTX has no tensor-core instruction (the
    quick compile above passes it for the real kernels)."""
    from mmae_fast.ops.tcr.triton.compile_check import check_tensor_cores

    sig, consts = {"h_ptr": "*bf16", "m": "i32"}, {"HALF_DOT": True}
    check_tensor_cores("k", sig, consts, "... wgmma.mma_async.sync.aligned ...", 90)
    check_tensor_cores("k", sig, consts, "... mma.sync.aligned.m16n8k16 ...", 80)
    check_tensor_cores("k", {"h_ptr": "*fp32"}, consts, "fma.rn.f32", 90)  # float32: IEEE, SIMT
    check_tensor_cores("k", sig, consts, "... mma.sync.aligned.m16n8k16 ...", 90)  # small tiles
    for arch in (80, 90):
        with pytest.raises(RuntimeError, match=f"no tensor-core instruction .* for sm_{arch}"):
            check_tensor_cores("k", sig, consts, "fma.rn.f32 ...", arch)
