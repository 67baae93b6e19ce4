"""The small side's tf32x3 product kernel (``mmae_fast/ops/tcr/triton/small_kernel.py``)::

    OUT = alpha·(A @ B) + beta·C + gamma·I,   partials summed = [trace(OUT), <OUT, F>]

against the same formula in float64 torch, for odd n (37, 101, 130: several 32-wide tiles and
partial edge tiles) and every epilogue (plain, the Chebyshev recurrence ``2·M·T - T'``, the
Newton–Schulz step ``2I - A·X``, C with gamma and both reductions, F = A itself).

What runs where: on the CPU the kernel runs in Triton's interpreter, whose tl.dot is a plain
float32 numpy matmul whatever ``input_precision`` says, so these tests check the tiling, the
masks of odd n, the epilogue, the per-program reductions and the launcher — not the TF32
rounding, which ``mmae_fast/ops/tcr/rounding.py`` (``product(a, b, "tf32x3")``) emulates and
tests/ops/test_doubling.py measures; on a GPU the same tests run the compiled tf32x3 kernel.
That it compiles to TF32 tensor-core instructions is checked by ``compile_check``
(tests/ops/test_triton_backend.py::test_kernels_compile_for_sm90). Tolerances:
``tests/tolerances.py::SMALL_KERNEL``.
"""
import math

import pytest
import torch

from tests.tolerances import DOUBLING_FLOOR_FACTOR, SMALL_KERNEL_GPU_FACTOR, rel_err
from tests.tolerances import SMALL_KERNEL as _SMALL_KERNEL

triton = pytest.importorskip("triton")

from mmae_fast.ops.tcr import doubling, rounding  # noqa: E402
from mmae_fast.ops.tcr.triton import backend as triton_backend  # noqa: E402
from mmae_fast.ops.tcr.triton import small_kernel  # noqa: E402

pytestmark = pytest.mark.skipif(triton_backend.availability() is not None,
                                reason=str(triton_backend.availability()))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the bounds of this device: tf32x3 operands on a GPU (SMALL_KERNEL_GPU_FACTOR), float32 here
SMALL_KERNEL = {k: v * (SMALL_KERNEL_GPU_FACTOR if DEVICE == "cuda" else 1.0)
                for k, v in _SMALL_KERNEL.items()}
NS = [37, 101, 130]
#: name -> product keywords ("C", "F", "A": the operand of that name)
EPILOGUES = {
    "plain": {},
    "chebyshev": {"alpha": 2.0, "c": "C", "beta": -1.0, "trace": True},
    "newton-schulz": {"alpha": -1.0, "gamma": 2.0, "frob": "F"},
    "all": {"alpha": 0.75, "c": "C", "beta": 0.5, "gamma": -1.5, "frob": "F", "trace": True},
    "frob-own-operand": {"alpha": 2.0, "c": "C", "beta": -1.0, "frob": "A", "trace": True},
}


def _operands(gen, n):
    """A, B, C, F (n, n) float32 with entries of both signs and an offset (non-zero traces)."""
    a, b, c, f = (torch.randn(n, n, generator=gen) + 0.1 for _ in range(4))
    return {"A": a, "B": b, "C": c, "F": f}


def _expected(ops, kw):
    """OUT, trace(OUT), <OUT, F> and their error scales Σ|OUT_ii|, Σ|OUT·F| in float64."""
    a, b = ops["A"].double(), ops["B"].double()
    n = a.shape[0]
    out = kw.get("alpha", 1.0) * (a @ b) + kw.get("gamma", 0.0) * torch.eye(n, dtype=torch.float64)
    if "c" in kw:
        out = out + kw.get("beta", 0.0) * ops[kw["c"]].double()
    f = ops[kw["frob"]].double() if "frob" in kw else torch.zeros_like(out)
    return out, out.trace(), (out * f).sum(), out.diagonal().abs().sum(), (out * f).abs().sum()


def _run(ops, kw, **extra):
    args = {k: (ops[v].to(DEVICE) if k in ("c", "frob") else v) for k, v in kw.items()}
    return small_kernel.product(ops["A"].to(DEVICE), ops["B"].to(DEVICE), **args, **extra)


def _errors(ops, kw, **extra):
    """(OUT's relative Frobenius error, trace error / Σ|OUT_ii|, <OUT, F> error / Σ|OUT·F|),
    the last two None when not asked for; and the partials."""
    out, part = _run(ops, kw, **extra)
    want, tr, fr, tr_scale, fr_scale = _expected(ops, kw)
    err_tr = err_fr = None
    if part is not None:
        got = small_kernel.sums(part).cpu()
        assert got.dtype == torch.float64
        err_tr = abs(got[0] - tr).item() / tr_scale.item() if kw.get("trace") else None
        err_fr = abs(got[1] - fr).item() / fr_scale.item() if "frob" in kw else None
        if not kw.get("trace"):
            assert torch.all(part[0] == 0), "the trace's slots are written only when asked"
        if "frob" not in kw:
            assert torch.all(part[1] == 0), "the Frobenius slots are written only when asked"
    assert out.dtype == torch.float32 and out.shape == want.shape
    return rel_err(out, want), err_tr, err_fr, part


@pytest.mark.parametrize("name", list(EPILOGUES))
@pytest.mark.parametrize("n", NS)
def test_product_and_reductions_against_float64(gen, n, name):
    """OUT and the summed partials within ``SMALL_KERNEL`` of float64 torch; the partials are
    None exactly when no reduction is asked for."""
    kw = EPILOGUES[name]
    err_out, err_tr, err_fr, part = _errors(_operands(gen, n), kw)
    assert err_out <= SMALL_KERNEL["out"], err_out
    assert (part is None) == (not kw.get("trace") and "frob" not in kw)
    if err_tr is not None:
        assert err_tr <= SMALL_KERNEL["trace"], err_tr
    if err_fr is not None:
        assert err_fr <= SMALL_KERNEL["frob"], err_fr


def test_epilogue_terms_exceed_the_tolerance(gen):
    """Each epilogue term moves OUT and both sums by far more than the tolerances, so a dropped
    or mis-scaled term fails the comparisons above."""
    ops = _operands(gen, 37)
    base = _expected(ops, {"frob": "F"})
    for kw in ({"alpha": 2.0, "frob": "F"}, {"c": "C", "beta": -1.0, "frob": "F"},
               {"gamma": 2.0, "frob": "F"}):
        other = _expected(ops, kw)
        assert rel_err(other[0], base[0]) > 100 * SMALL_KERNEL["out"]
        assert abs(other[1] - base[1]) / other[3] > 100 * SMALL_KERNEL["trace"]
        assert abs(other[2] - base[2]) / other[4] > 100 * SMALL_KERNEL["frob"]


def test_large_tiles_and_config(gen):
    """The 64-wide tiles ``choose`` takes for n >= LARGE_N on a GPU (here n = 130: a 3 x 3 grid
    with partial edges), and the rule itself outside the interpreter."""
    cfg = small_kernel.SmallConfig(64, 32, 4, 3)
    err_out, err_tr, err_fr, part = _errors(_operands(gen, 130), EPILOGUES["all"], config=cfg)
    assert part.shape == (2, 9)
    assert err_out <= SMALL_KERNEL["out"] and err_tr <= SMALL_KERNEL["trace"]
    assert err_fr <= SMALL_KERNEL["frob"]


def test_choose_rule(monkeypatch):
    monkeypatch.setattr(small_kernel, "interpreting", lambda: False)
    assert small_kernel.choose(1023).block == 64 and small_kernel.choose(255).block == 32
    assert all(small_kernel.choose(n).precision == "tf32x3" for n in (37, 1023))


def test_beta_zero_does_not_read_c(gen):
    """beta = 0: c is not read (NaN there leaves OUT = A @ B)."""
    ops = _operands(gen, 37)
    nan = torch.full((37, 37), float("nan"), device=DEVICE)
    a, b = ops["A"].to(DEVICE), ops["B"].to(DEVICE)
    out, _ = small_kernel.product(a, b, c=nan, beta=0.0)
    assert rel_err(out, ops["A"].double() @ ops["B"].double()) <= SMALL_KERNEL["out"]


def test_deterministic(gen):
    """Two launches give the same bits, OUT and partials (no atomics)."""
    ops = _operands(gen, 101)
    first = _run(ops, EPILOGUES["all"])
    second = _run(ops, EPILOGUES["all"])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_mm_drives_the_doubling_inverse(gen):
    """``small_kernel.mm`` as ``doubling.inverse``'s product: the residual follows the a-priori
    bound down to the float32-grade floor ``DOUBLING_FLOOR_FACTOR·kappa·u·sqrt(n)`` (u of
    tf32x3, which also covers the interpreter's float32)."""
    n, kappa = 37, 65.0
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = (q * torch.linspace(1.0, kappa, n, dtype=torch.float64)) @ q.mT
    a = (a + a.mT) / 2
    floor = kappa * rounding.UNIT_ROUNDOFF["tf32x3"] * math.sqrt(n) * DOUBLING_FLOOR_FACTOR
    steps = doubling.steps_for(kappa, 1e-9)
    x = doubling.inverse(a.float().to(DEVICE), kappa, steps, mm=small_kernel.mm)
    resid = torch.linalg.matrix_norm(torch.eye(n, dtype=torch.float64) - a @ x.double().cpu(), ord=2)
    assert resid.item() <= doubling.residual_bound(kappa, steps) + floor
    assert resid.item() < 1e-4, "converged (not the bound of a diverged iteration)"


def _commuting(gen, n):
    """Y (n, n) symmetric and T = Y² - Y, F = Y + I (polynomials in Y: commuting, symmetric),
    float64."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    y = (q * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.3)) @ q.mT
    y = (y + y.mT) / 2
    eye = torch.eye(n, dtype=torch.float64)
    return y, y @ y - y, y + eye


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("block", [32, 64])
def test_symmetric_mode(gen, n, block):
    """``symmetric=True`` on commuting symmetric operands: OUT exactly symmetric and within
    ``SMALL_KERNEL`` of float64 (its mirrored tiles included), the trace and ``<OUT, F>`` with
    the off-diagonal tiles counted twice; ``symmetric_mm`` is that product."""
    y, t, f = _commuting(gen, n)
    want = 2.0 * (y @ t) - t + 0.5 * torch.eye(n, dtype=torch.float64)
    cfg = small_kernel.SmallConfig(block, 32, 4, 3)
    out, part = small_kernel.product(y.float().to(DEVICE), t.float().to(DEVICE), alpha=2.0,
                                     c=t.float().to(DEVICE), beta=-1.0, gamma=0.5,
                                     frob=f.float().to(DEVICE), trace=True, symmetric=True,
                                     config=cfg)
    out = out.cpu()
    assert torch.equal(out, out.mT)
    assert rel_err(out, want) <= SMALL_KERNEL["out"]
    got = small_kernel.sums(part).cpu()
    assert abs(got[0] - want.trace()).item() <= SMALL_KERNEL["trace"] * want.diagonal().abs().sum()
    assert abs(got[1] - (want * f).sum()).item() <= SMALL_KERNEL["frob"] * (want * f).abs().sum()
    plain = small_kernel.symmetric_mm(y.float().to(DEVICE), t.float().to(DEVICE)).cpu()
    assert torch.equal(plain, plain.mT) and rel_err(plain, y @ t) <= SMALL_KERNEL["out"]


def test_symmetric_mode_needs_a_symmetric_product(gen):
    """On operands whose product is not symmetric the mode returns the mirrored upper half, not
    the product: a wrong promise is visible (why the small side passes it only polynomials in
    Y)."""
    ops = _operands(gen, 37)
    out = small_kernel.product(ops["A"].to(DEVICE), ops["B"].to(DEVICE), symmetric=True)[0].cpu()
    want = ops["A"].double() @ ops["B"].double()
    assert rel_err(out, want) > 100 * SMALL_KERNEL["out"]
    upper = torch.triu(torch.ones(37, 37, dtype=torch.bool), diagonal=32)  # beyond tile 0's cols
    assert rel_err(out[upper], want[upper]) <= SMALL_KERNEL["out"]


def _good(n=5):
    return torch.zeros(n, n, device=DEVICE)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"a": torch.zeros(5)}, ValueError, "a must be a square 2-D"),
    ({"b": torch.zeros(5, 4)}, ValueError, "b must be a square 2-D"),
    ({"b": torch.zeros(6, 6)}, ValueError, r"b must have a's shape \(5, 5\)"),
    ({"a": torch.zeros(5, 5, dtype=torch.float64)}, TypeError, r"a must be float32.*a\.float\(\)"),
    ({"c": torch.zeros(5, 5, dtype=torch.float16), "beta": 1.0}, TypeError, "c must be float32"),
    ({"frob": torch.zeros(10, 10)[::2, ::2]}, ValueError, r"frob must be contiguous.*contiguous\(\)"),
    ({"frob": torch.zeros(5, 5, device="meta")}, ValueError, "frob must be on a's device"),
    ({"beta": 1.0}, ValueError, "beta = 1.0 needs c"),
    ({"alpha": torch.tensor(2.0)}, TypeError, "alpha must be a Python float"),
    ({"b": [[0.0]]}, TypeError, "b must be a torch.Tensor"),
])
def test_bad_inputs_are_named(kwargs, exc, match):
    """Each bad argument gets an error naming it (and the fix where there is one)."""
    args = {"a": _good(), "b": _good()}
    args.update({k: (v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v)
                 for k, v in kwargs.items()})
    a, b = args.pop("a"), args.pop("b")
    with pytest.raises(exc, match=match):
        small_kernel.product(a, b, **args)


def test_tf32_check_refuses_a_product_without_tf32_instructions():
    """compile_check's TF32 rule: a tf32x3 product needs >= 3 TF32 tensor-core instructions
    (the real kernel passes: test_kernels_compile_for_sm90)."""
    from mmae_fast.ops.tcr.triton.compile_check import check_tensor_cores

    sig, consts = {"a_ptr": "*fp32"}, {"PREC": "tf32x3"}
    ptx = "\n".join(["wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 ..."] * 3)
    assert check_tensor_cores("k", sig, consts, ptx, 90) == {"wgmma.mma_async": 3}
    for bad in ("fma.rn.f32 ...", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 ...",
                "\n".join(["mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"] * 2)):
        with pytest.raises(RuntimeError, match="needs >= 3 TF32 tensor-core instructions"):
            check_tensor_cores("k", sig, consts, bad, 80)
