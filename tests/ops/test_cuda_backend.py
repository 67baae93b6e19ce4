"""The "cuda" backend (extension mmae_fast._C): the staged ops cuda_gram / cuda_grad.

CPU (no extension): availability messages; the C++ sources (schemas, EPS) agree with Python;
every csrc/*.cu compiles with nvcc; the host-side launch arithmetic and split layouts
(csrc/launch.h) pass a compiled C++ harness; an emulation of the half-input product roundings
shows its error against float64; the Python half (fakes, the staged op on emulated ops) runs
on an eager emulation of the two ops. GPU (marked ``gpu``): the real ops against the contract,
``mmae_fast.ops.tcr.stages`` run in float64 on float64 copies of the inputs.
"""
import math
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

import mmae_fast
from mmae_fast import backends, reference
from mmae_fast.ops.tcr import cuda as cuda_backend, op as staged, stages
from tests import extremes, independent as ind
from tests.tolerances import (CUDA_STAGE_TOLERANCES, STAGED_BACKEND, TOLERANCES, assert_close,
                              rel_err)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
BUILT = cuda_backend._C is not None
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
gpu = pytest.mark.gpu
requires_gpu = pytest.mark.skipif(not (BUILT and torch.cuda.is_available()),
                                  reason="needs the CUDA extension mmae_fast._C and a CUDA device")

#: (m, d): odd sizes, m > d and m < d, square, one row, larger than a block of 256 threads.
SHAPES = [(29, 11), (7, 13), (13, 13), (1, 5), (67, 300), (300, 129)]


# ----------------------------------------------------------------------------- float64 oracle
def _f64(x):
    return x.detach().double().cpu()


def gram64(h, feature):
    """``(G, rinv)`` of the contract: ``stages.gram`` on a float64 copy of h."""
    return stages.gram(_f64(h), feature)


def _coef(coef):
    """``(s, t)`` of the ops' ``coef`` argument: ``[s]`` or ``[s, t]`` (t = 0 when absent)."""
    vals = [float(x) for x in coef.detach().reshape(-1).cpu()]
    return vals[0], (vals[1] if len(vals) == 2 else 0.0)


def grad64(coef, h, q, v, feature, scale):
    """dh of the contract: ``stages.grad`` on float64 copies (rinv from ``stages.gram``)."""
    h64 = _f64(h)
    rinv = stages.gram(h64, feature)[1]
    return stages.grad(_f64(coef), h64, rinv, _f64(q), _f64(v), feature, scale)


def grad_scale(grad, h, q, v, feature, scale):
    """||rinv gx|| before the projection: the error scale where the projection cancels dh to ~0."""
    h64 = h.detach().double().cpu()
    z = h64 / h64.norm(dim=1, keepdim=True).clamp_min(reference.EPS)
    gx = z @ q.double().cpu() if feature else q.double().cpu() @ z
    if v.numel():
        gx = gx - v.double().cpu()[None, :]
    return abs(scale * _coef(grad)[0]) * float(gx.norm() / h64.norm(dim=1).max())


def features(m, d, gen, *, zero_row=False, collapsed=False):
    """float64 (m, d) rows of norm 0.1..0.4 (or nearly parallel rows); row 1 zero if asked."""
    if collapsed:
        base = torch.randn(d, generator=gen, dtype=torch.float64)
        h = 0.3 * (base + 0.05 * torch.randn(m, d, generator=gen, dtype=torch.float64))
    else:
        scale = 0.1 + 0.3 * torch.rand(m, 1, generator=gen, dtype=torch.float64)
        h = torch.randn(m, d, generator=gen, dtype=torch.float64) * scale / math.sqrt(d)
    if zero_row and m > 2:
        h[1] = 0.0
    return h


def small_side_q(h64, feature, mu=3.0):
    """The exact estimator's q = -2c (I + cG)^-1 scaled to max|q| = 1 (symmetric, n x n)."""
    g, _ = gram64(h64, feature)
    c = mu / h64.shape[1]
    q = -2.0 * c * torch.linalg.inv(torch.eye(g.shape[0], dtype=torch.float64) + c * g)
    q = (q + q.T) / 2
    return q / q.abs().max()


# ----------------------------------------------------------------------------- CPU: no extension
@pytest.mark.skipif(BUILT, reason="the extension is built")
def test_availability_names_the_fix(gen):
    reason = cuda_backend.availability()
    assert reason == cuda_backend.NOT_BUILT and "pip install --no-build-isolation ." in reason
    assert "cuda" not in backends.available_backends()
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: the CUDA extension"):
        mmae_fast.tcr_loss(torch.randn(8, 5, generator=gen), backend="cuda")
    with pytest.raises(ValueError, match=r"cuda_backend\.gram: the CUDA extension mmae_fast\._C"):
        cuda_backend.gram(torch.randn(8, 5, generator=gen), True)


def test_auto_runs_the_cpu_backend_on_cpu(gen, monkeypatch):
    from mmae_fast.ops.tcr import cpu as cpu_backend

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    z = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    assert backends.resolve("auto", z) is cpu_backend


def test_supports_reasons():
    assert "CUDA tensor" in cuda_backend.supports(torch.empty(4, 3))
    assert "CUDA tensor" in cuda_backend.supports(torch.empty(4, 3, device="meta"))


def _cpp_strings(text, start):
    """The C++ string literal(s) right after `start` (adjacent literals concatenated)."""
    rest = text[text.index(start) + len(start):]
    literals = re.match(r'\s*((?:"(?:[^"\\]|\\.)*"\s*)+)', rest).group(1)
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', literals))


def test_bindings_agree_with_python():
    """Schemas and EPS in csrc/bindings.cpp are the Python module's (no extension needed)."""
    text = (CSRC / "bindings.cpp").read_text()
    defs = [_cpp_strings(text[i:], "m.def(") for i in [m.start() for m in re.finditer(r"m\.def\(", text)]]
    assert defs == [cuda_backend.GRAM_SCHEMA, cuda_backend.GRAD_SCHEMA]
    eps = float(re.search(r"constexpr double kEps = ([0-9.e+-]+);", text).group(1))
    assert eps == reference.EPS


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", sorted(p.name for p in CSRC.glob("*.cu")))
def test_kernels_compile_with_nvcc(tmp_path, source):
    """nvcc -c of each torch-free kernel file for sm_80, warnings as errors."""
    out = subprocess.run(
        ["nvcc", "-c", str(CSRC / source), "-o", str(tmp_path / "k.o"), "-std=c++17", "-O1",
         f"-I{CSRC}", "-arch=sm_80", "-Xcompiler", "-Wall", "-Werror", "all-warnings"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_launch_arithmetic_host_harness(tmp_path):
    """csrc/launch.h (grids, split layouts) through tests/cuda_host/launch_test.cpp."""
    exe = tmp_path / "launch_test"
    build = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", f"-I{CSRC}",
         str(ROOT / "tests" / "cuda_host" / "launch_test.cpp"), "-o", str(exe)],
        capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


# ----------------------------------------------------------------------------- CPU: emulation
def _round(x, dtype):
    return x.to(dtype).float()


def emulate_grad(coef, h, rinv, q, v, feature, scale, *, single=False):
    """EMULATION in torch of cuda_grad's arithmetic: fp32 rinv / z, half operands exactly as the
    kernels round them (products exact, sums in fp32), the epilogue in fp32. ``single``: one half
    product z_half q_half instead (what the split avoids). Returns dh in fp32 (not rounded)."""
    t = h.dtype
    hf, qf = h.float(), q.float()
    z = hf * rinv[:, None]
    qhi = _round(qf, t)
    qlo = _round(qf - qhi, t)
    if t not in HALF:
        gx = (hf @ qf) * rinv[:, None] if feature else (qf * rinv[None, :]) @ hf
    elif single:
        gx = _round(z, t) @ qhi if feature else qhi @ _round(z, t)
    elif feature:  # h @ [qhi | qlo], both parts summed and row-scaled in the epilogue
        gx = rinv[:, None] * ((hf @ qhi) + (hf @ qlo))
    else:  # [qhi | qhi | qlo] @ [zhi; zlo; zhi]
        zhi = _round(z, t)
        zlo = _round(z - zhi, t)
        gx = qhi @ zhi + qhi @ zlo + qlo @ zhi
    s, t = _coef(coef)
    g = scale * s * (gx - (v.float() if v.numel() else 0.0))
    clamped = ~(rinv < 1.0 / torch.tensor(reference.EPS, dtype=torch.float32))
    dot = torch.where(clamped, scale * t, (z * g).sum(1))
    return rinv[:, None] * (g - z * dot[:, None])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("feature,shape", [(True, (300, 97)), (False, (61, 200))])
def test_split_product_emulation_error(gen, dtype, feature, shape):
    """Collapsed half features (nearly parallel rows, the Jacobian cancels most of gx): the split
    product stays at the floor of rounding dh; a single half product does not."""
    h = features(*shape, gen, collapsed=True).to(dtype)
    q = small_side_q(h.double(), feature)
    v = torch.zeros(0, dtype=torch.float32)
    want = grad64(torch.tensor(1.0), h, q, v, feature, 1.0)
    rinv = 1.0 / h.float().pow(2).sum(1).sqrt().clamp_min(reference.EPS)
    split = emulate_grad(torch.tensor(1.0), h, rinv, q.float(), v, feature, 1.0)
    single = emulate_grad(torch.tensor(1.0), h, rinv, q.float(), v, feature, 1.0, single=True)
    tol = CUDA_STAGE_TOLERANCES[dtype]["grad"]
    floor = rel_err(want.to(dtype), want)
    assert rel_err(split, want) <= (2e-4 if dtype == torch.bfloat16 else 3e-5)  # before rounding
    assert rel_err(split.to(dtype), want) <= min(tol, 1.1 * floor)
    assert rel_err(single.to(dtype), want) > 5 * tol  # the test can tell the two apart


@pytest.mark.parametrize("feature,shape", [(True, (300, 97)), (False, (61, 200))])
def test_float32_reordered_product_emulation_error(gen, feature, shape):
    """float32 h: the ops multiply h itself (diag(rinv)·(h q), or (q·diag(rinv))·h) instead of z;
    on collapsed features the emulated result stays within float32's gradient tolerance."""
    h = features(*shape, gen, collapsed=True).float()
    q = small_side_q(h.double(), feature)
    v = 0.1 * torch.randn(shape[1], generator=gen, dtype=torch.float64)
    want = grad64(torch.tensor(1.0), h, q.float().double(), v.float().double(), feature, 1.0)
    rinv = 1.0 / h.pow(2).sum(1).sqrt().clamp_min(reference.EPS)
    got = emulate_grad(torch.tensor(1.0), h, rinv, q.float(), v.float(), feature, 1.0)
    assert rel_err(got, want) <= CUDA_STAGE_TOLERANCES[torch.float32]["grad"] / 10


def emulate_gram(h, feature):
    """EMULATION of cuda_gram: rinv in acc (the sum of squares of each row scaled by the power
    of two of its largest |entry|, as row_normalize_kernel and ``reference.row_norms``), the
    Gram on z rounded to its operand type (float16 for both half types, else h's dtype)."""
    acc = cuda_backend.acc_dtype(h.dtype)
    ha = h.to(acc)
    rinv = 1.0 / reference.row_norms(ha).clamp_min(reference.EPS)
    z = (ha * rinv[:, None]).to(torch.float16 if h.dtype in HALF else h.dtype).to(acc)
    g = z.T @ z if feature else z @ z.T
    return (g + g.T) / 2, rinv


@pytest.fixture
def emulated_ops(monkeypatch):
    """torch.ops.mmae_fast.cuda_gram / cuda_grad for CPU tensors (the emulations above) plus the
    backend's fakes, so the Python half of the backend runs without the extension."""
    if BUILT:
        pytest.skip("the extension is built: the real ops are tested on the GPU instead")
    lib = torch.library.Library("mmae_fast", "FRAGMENT")
    lib.define(cuda_backend.GRAM_SCHEMA)
    lib.define(cuda_backend.GRAD_SCHEMA)
    lib.impl("cuda_gram", emulate_gram, "CPU")
    lib.impl("cuda_grad", lambda coef, h, rinv, q, v, feature, scale: emulate_grad(
        coef, h, rinv, q, v, feature, scale).to(h.dtype) if h.dtype != torch.float64 else
        _grad_float64(coef, h, rinv, q, v, feature, scale), "CPU")
    cuda_backend.register_fakes()
    monkeypatch.setattr(cuda_backend, "_check", lambda h, fn: None)
    yield lib
    lib._destroy()


def _grad_float64(coef, h, rinv, q, v, feature, scale):
    return stages.grad(coef, h, rinv, q, v, feature, scale)


@pytest.mark.parametrize("shape", [(29, 11), (7, 13), (1, 5)])
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("estimator,degree", [("exact", 0), ("series", 9), ("taylor", 4)])
def test_tcr_through_staged_matches_reference(emulated_ops, gen, shape, centering, estimator, degree):
    """staged.tcr(backend="cuda") -> the shared staged op on (emulated) cuda_gram / cuda_grad: colsum, v,
    q and its pre-scaling as the contract defines them, against reference.tcr in float64."""
    m, d = shape
    mu = min(2.0, 0.7 * d / m) if estimator == "taylor" else 2.0
    h = features(m, d, gen).requires_grad_(True)
    got = staged.tcr(h, backend="cuda", mu=mu, centering=centering, estimator=estimator,
                     degree=degree)
    want = reference.tcr(h, mu, centering=centering, estimator=estimator, degree=degree or None)
    (g_got,), (g_want,) = torch.autograd.grad(got, h), torch.autograd.grad(want, h)
    if m == 1:  # one unit row (or its centred 0): R constant, gradient 0
        assert abs(float(got.detach()) - float(want.detach())) < 1e-12 and float(g_got.abs().max()) < 1e-10
        return
    assert_close(got, want, torch.float64)
    assert_close(g_got, g_want, torch.float64, kind="grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(29, 11), (11, 29)])
@pytest.mark.parametrize("centering", [False, True])
@pytest.mark.parametrize("estimator", ["exact", "series"])
def test_tcr_through_staged_each_dtype(emulated_ops, gen, dtype, shape, centering, estimator):
    """The staged op on the emulated ops in every input dtype (half: the rounded Gram operand
    and the split backward, as on the GPU): value and gradient vs float64 on the same rounded
    input within the kernel backends' end-to-end tolerances."""
    h = features(*shape, gen).to(dtype)
    x = h.clone().requires_grad_(True)
    got = staged.tcr(x, backend="cuda", mu=2.0, centering=centering, estimator=estimator)
    (got * 1024.0).backward()  # an AMP-style loss scale (fp16 gradients would be subnormal)
    ref_x = h.double().clone().requires_grad_(True)
    degree = reference.default_degree(estimator, mmae_fast.series.kappa(2.0, *shape))
    want = reference.tcr(ref_x, 2.0, centering=centering, estimator=estimator,
                         degree=degree or None)
    (want * 1024.0).backward()
    vtol, gtol = STAGED_BACKEND[dtype]
    assert rel_err(got, want) <= vtol
    assert rel_err(x.grad, ref_x.grad.to(dtype)) <= gtol


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(200, 64), (64, 200)])
def test_half_inputs_within_the_contract_through_staged(emulated_ops, dtype, shape):
    """Collapsed half rows, both Gram sides: R within 1e-4 of float64 on the same rounded input
    (the Gram's operand is float16 for bfloat16 too; a bfloat16 operand misses this)."""
    worst = 0.0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        m, d = shape
        x = torch.randn(m, d, generator=g, dtype=torch.float64)
        h = ((torch.randn(m, 8, generator=g, dtype=torch.float64)
              @ torch.randn(8, d, generator=g, dtype=torch.float64)) + 1e-3 * x).to(dtype)
        value = staged.tcr(h, backend="cuda", mu=2.0, centering=False, estimator="exact")
        worst = max(worst, rel_err(value, reference.tcr(h.double(), 2.0)))
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(29, 11), (11, 29)])
def test_rows_at_the_norm_floor_through_staged(emulated_ops, gen, dtype, shape):
    """Rows with 0 < ||h_i|| <= EPS are not projected: the epilogue must remove Q's radial
    shift from them (``grad = [s, t]``); a zero row beside it."""
    h = features(*shape, gen)
    h[3] = 0.5 * reference.EPS * h[3] / h[3].norm()
    h[4] = 0.0
    h = h.to(dtype)
    for centering in (False, True):
        x = h.clone().requires_grad_(True)
        staged.tcr(x, backend="cuda", mu=2.0, centering=centering, estimator="exact").backward()
        ref_x = h.double().clone().requires_grad_(True)
        reference.tcr(ref_x, 2.0, centering=centering).backward()
        gtol = STAGED_BACKEND[dtype][1]
        assert rel_err(x.grad[3], ref_x.grad[3].to(dtype)) <= gtol, "the floor row"
        assert rel_err(x.grad[5:], ref_x.grad[5:].to(dtype)) <= gtol


@pytest.mark.parametrize("case", extremes.CASES, ids=extremes.case_id)
@pytest.mark.parametrize("shape", [(29, 11), (11, 29)])
def test_features_of_any_size_through_staged(emulated_ops, case, shape):
    """Rows of 1e20 / 1e30 (1e200 in float64; float16: 6e4) beside rows just above the floor:
    the staged op on the emulated ops against the eigenvalue formula and its closed-form
    gradient (row by row at the rows' own scale)."""
    dtype, scale, floor_rows = case
    h = extremes.at_scale(extremes.views(*shape)[0], dtype, scale, floor_rows)
    x = h.clone().requires_grad_(True)
    value = staged.tcr(x, backend="cuda", mu=2.0, centering=False, estimator="exact")
    value.backward()
    vtol, gtol = STAGED_BACKEND[dtype]
    expected = torch.tensor(ind.tcr_exact(h.double(), 2.0), dtype=torch.float64)
    assert rel_err(value, expected) <= vtol
    err, floor = extremes.tcr_grad_error(x.grad, h, 2.0)
    assert err <= max(gtol, 2.0 * floor)


@pytest.mark.parametrize("estimator", ["exact", "series", "taylor"])
@pytest.mark.parametrize("centering", [False, True])
def test_staged_cuda_compiles_fullgraph(emulated_ops, gen, estimator, centering):
    """tcr_loss-style staged.tcr(backend="cuda") under torch.compile(fullgraph=True) (aot_eager,
    through the ops' fakes) at two batch sizes: values and gradients as eager."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x: staged.tcr(x, backend="cuda", mu=0.5, centering=centering,
                                            estimator=estimator),
                       fullgraph=True, backend="aot_eager")
    for m in (40, 47):
        h = features(m, 24, gen).float()
        x, y = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
        got = fn(x)
        got.backward()
        want = staged.tcr(y, backend="cuda", mu=0.5, centering=centering, estimator=estimator)
        want.backward()
        assert rel_err(got, want) <= 1e-6 and rel_err(x.grad, y.grad) <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", [True, False])
def test_fakes_match_emulated_ops_under_compile(emulated_ops, gen, dtype, feature):
    """fullgraph torch.compile (aot_eager) through the fakes; outputs as the eager ops'."""
    torch._dynamo.reset()
    h = features(13, 9, gen).to(dtype)
    acc = cuda_backend.acc_dtype(dtype)
    n = 9 if feature else 13
    q = small_side_q(h.double(), feature).to(acc)
    v = torch.randn(9, generator=gen, dtype=torch.float64).to(acc)

    def step(x):
        g, rinv = cuda_backend.gram(x, feature)
        return g, rinv, cuda_backend.grad(torch.tensor(2.0), x, rinv, q, v, feature, 0.5)

    got = torch.compile(step, backend="aot_eager", fullgraph=True)(h)
    want = step(h)
    for a, b in zip(got, want):
        assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype)
        torch.testing.assert_close(a, b)
    assert got[0].shape == (n, n) and got[1].shape == (13,)


# ----------------------------------------------------------------------------- GPU: the real ops
def _on_gpu(x, dtype=None):
    return x.to("cuda", dtype) if dtype is not None else x.to("cuda")


@gpu
@requires_gpu
def test_schemas_match_the_extension():
    assert str(torch.ops.mmae_fast.cuda_gram.default._schema) == "mmae_fast::" + cuda_backend.GRAM_SCHEMA
    assert str(torch.ops.mmae_fast.cuda_grad.default._schema) == "mmae_fast::" + cuda_backend.GRAD_SCHEMA
    assert cuda_backend._C.eps == reference.EPS


@gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("feature", [True, False])
def test_gram_against_float64(gen, dtype, shape, feature, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    h = _on_gpu(features(*shape, gen, zero_row=True), dtype)
    g, rinv = cuda_backend.gram(h, feature)
    want_g, want_rinv = gram64(h, feature)
    acc = cuda_backend.acc_dtype(dtype)
    n = shape[1] if feature else shape[0]
    tol = CUDA_STAGE_TOLERANCES[dtype]
    assert g.dtype == rinv.dtype == acc and g.is_cuda
    assert g.shape == (n, n) and g.is_contiguous() and torch.equal(g, g.T)
    assert rinv.shape == (shape[0],)
    assert rel_err(g, want_g) <= tol["gram"], rel_err(g, want_g)
    assert rel_err(rinv, want_rinv) <= tol["stats"]


@gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("feature", [True, False])
@pytest.mark.parametrize("with_v", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_grad_against_float64(gen, dtype, shape, feature, with_v, chunk_rows, monkeypatch):
    """chunk_rows 7: the feature side's product in 7-row chunks (MMAE_FAST_CUDA_GRAD_CHUNK_ROWS;
    the default: 32 MiB of product per chunk), with grad = [s, t] (Q's scale and shift)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    if chunk_rows is not None:
        monkeypatch.setenv("MMAE_FAST_CUDA_GRAD_CHUNK_ROWS", str(chunk_rows))
    m, d = shape
    h64 = features(m, d, gen, zero_row=True)
    h = _on_gpu(h64, dtype)
    acc = cuda_backend.acc_dtype(dtype)
    q = small_side_q(h.double().cpu(), feature)
    v = (0.1 * torch.randn(d, generator=gen, dtype=torch.float64) if with_v
         else torch.zeros(0, dtype=torch.float64))
    grad_out = torch.tensor(0.75 if chunk_rows is None else [0.75, 0.3], dtype=torch.float64)
    _, rinv = cuda_backend.gram(h, feature)
    dh = cuda_backend.grad(_on_gpu(grad_out, torch.float32), h, rinv, _on_gpu(q, acc),
                           _on_gpu(v, acc), feature, 1.5)
    want = grad64(grad_out, h, q.to(acc).double(), v.to(acc).double(), feature, 1.5)
    assert dh.dtype == dtype and dh.shape == (m, d) and dh.is_contiguous()
    tol = CUDA_STAGE_TOLERANCES[dtype]["grad"]
    rows = [i for i in range(m) if i != 1 or m <= 2]
    assert torch.isfinite(dh[rows]).all()
    if m == 1:  # one row: the projection leaves dh ~ 0, compare with the size it cancelled from
        err = float((dh.double().cpu() - want).norm())
        assert err <= tol * grad_scale(grad_out, h, q, v, feature, 1.5), err
        return
    assert rel_err(dh[rows], want[rows]) <= tol, rel_err(dh[rows], want[rows])
    if m > 2:  # the zero row: rinv_i gx_i = -1e12 scale grad v (no projection); inf in float16
        if with_v and dtype != torch.float16:
            assert rel_err(dh[1], want[1]) <= tol
        elif not with_v:
            assert float(dh[1].abs().max()) == 0.0


@gpu
@requires_gpu
@pytest.mark.parametrize("case", extremes.CASES, ids=extremes.case_id)
@pytest.mark.parametrize("feature", [True, False])
def test_stages_at_extreme_scales(case, feature, monkeypatch):
    """row_normalize_kernel's norm does not overflow: rows of 1e20 / 1e30 (1e200 in float64;
    float16: 6e4) beside rows just above the floor. G, rinv (row by row) and dh (at the rows'
    own scale) against the float64 contract."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    dtype, scale, floor_rows = case
    h = _on_gpu(extremes.at_scale(extremes.views(300, 129)[0], dtype, scale, floor_rows))
    acc = cuda_backend.acc_dtype(dtype)
    tol = CUDA_STAGE_TOLERANCES[dtype]
    g, rinv = cuda_backend.gram(h, feature)
    want_g, want_rinv = gram64(h, feature)
    assert rel_err(g, want_g) <= tol["gram"]
    assert float((rinv.double().cpu() / want_rinv - 1.0).abs().max()) <= tol["stats"]
    q = small_side_q(h.double().cpu(), feature)
    coef = torch.tensor([0.75, 0.3], dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.float64)
    dh = cuda_backend.grad(_on_gpu(coef, torch.float32), h, rinv, _on_gpu(q, acc),
                           _on_gpu(empty, acc), feature, 1.5)
    want = grad64(coef, h, q.to(acc).double(), empty, feature, 1.5)
    norms = 1.0 / want_rinv[:, None]
    floor = rel_err(want.to(dtype).double() * norms, want * norms)
    assert rel_err(dh.double().cpu() * norms, want * norms) <= max(tol["grad"], 2.0 * floor)


@gpu
@requires_gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("feature,shape", [(True, (300, 97)), (False, (61, 200))])
def test_grad_collapsed_half_features_match_emulation(gen, dtype, feature, shape):
    """Nearly parallel rows: the split product keeps dh at its rounding floor (a single half
    product would miss the tolerance by > 5x, test_split_product_emulation_error)."""
    h = features(*shape, gen, collapsed=True).to(dtype)
    q = small_side_q(h.double(), feature)
    empty = torch.zeros(0)
    want = grad64(torch.tensor(1.0), h, q.float().double(), empty, feature, 1.0)
    _, rinv = cuda_backend.gram(_on_gpu(h), feature)
    dh = cuda_backend.grad(_on_gpu(torch.tensor(1.0)), _on_gpu(h), rinv, _on_gpu(q.float()),
                           _on_gpu(empty), feature, 1.0)
    assert rel_err(dh, want) <= min(CUDA_STAGE_TOLERANCES[dtype]["grad"],
                                    1.1 * rel_err(want.to(dtype), want))


@gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fakes_match_real_outputs(gen, dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode
    h = _on_gpu(features(21, 10, gen), dtype)
    acc = cuda_backend.acc_dtype(dtype)
    for feature in (True, False):
        n = 10 if feature else 21
        args = (_on_gpu(torch.tensor(1.0)), h, None, _on_gpu(torch.eye(n), acc),
                _on_gpu(torch.zeros(10), acc), feature, 1.0)
        real = cuda_backend.gram(h, feature)
        real_dh = torch.ops.mmae_fast.cuda_grad(args[0], h, real[1], *args[3:])
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fh = mode.from_tensor(h)
            fake = torch.ops.mmae_fast.cuda_gram(fh, feature)
            fake_dh = torch.ops.mmae_fast.cuda_grad(args[0], fh, fake[1], *args[3:])
        for a, b in zip(list(fake) + [fake_dh], list(real) + [real_dh]):
            assert (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device)


@gpu
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("feature", [True, False])
def test_the_kernels_ran(gen, dtype, feature):
    """The profiler sees this extension's kernels (not a fallback) and no host sync is needed:
    the ops are captured in a CUDA graph and replayed."""
    h = _on_gpu(features(40, 24, gen), dtype)
    n = 24 if feature else 40
    acc = cuda_backend.acc_dtype(dtype)
    q = _on_gpu(small_side_q(h.double().cpu(), feature), acc)
    v = _on_gpu(torch.zeros(24), acc)
    one = _on_gpu(torch.tensor(1.0))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _, rinv = cuda_backend.gram(h, feature)
        dh = cuda_backend.grad(one, h, rinv, q, v, feature, 1.0)
        torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    for kernel in ("row_normalize_kernel", "symmetrize_kernel",
                   "grad_epilogue_kernel") + (("split_hi_lo_kernel",) if dtype in HALF else ()):
        assert kernel in names, kernel
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        cuda_backend.grad(one, h, cuda_backend.gram(h, feature)[1], q, v, feature, 1.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cuda_backend.grad(one, h, cuda_backend.gram(h, feature)[1], q, v, feature, 1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, dh) and n > 0


@gpu
@requires_gpu
def test_compiled_ops_fullgraph(gen):
    torch._dynamo.reset()
    h = _on_gpu(features(33, 17, gen), torch.bfloat16)
    q = _on_gpu(small_side_q(h.double().cpu(), True), torch.float32)
    v = _on_gpu(torch.zeros(0))

    def step(x):
        g, rinv = cuda_backend.gram(x, True)
        return g, rinv, cuda_backend.grad(torch.ones((), device=x.device), x, rinv, q, v, True, 1.0)

    got = torch.compile(step, fullgraph=True)(h)
    for a, b in zip(got, step(h)):
        torch.testing.assert_close(a, b)


@gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator,degree", [("exact", 0), ("series", 9)])
@pytest.mark.parametrize("shape,centering", [((300, 129), True), ((65, 257), False), ((65, 257), True)])
def test_tcr_loss_cuda_matches_reference(gen, dtype, estimator, degree, shape, centering, monkeypatch):
    """End to end (tcr_loss -> staged op -> these ops): value and gradient against reference.tcr."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    h = _on_gpu(features(*shape, gen), dtype).requires_grad_(True)
    got = mmae_fast.tcr_loss(h, 2.0, centering=centering, estimator=estimator,
                             order=degree or None, backend="cuda")
    (g_got,) = torch.autograd.grad(got, h)
    h64 = h.detach().double().requires_grad_(True)
    want = reference.tcr(h64, 2.0, centering=centering, estimator=estimator, degree=degree or None)
    (g_want,) = torch.autograd.grad(want, h64)
    assert got.dtype == cuda_backend.acc_dtype(dtype)
    assert_close(got, want, dtype)
    assert_close(g_got, g_want, dtype, kind="grad")


@gpu
@requires_gpu
def test_auto_prefers_cuda(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    z = torch.randn(16, 8, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    assert backends.resolve("auto", z) is cuda_backend
