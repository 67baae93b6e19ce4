"""Mutation check (``make mutants``): plant typical bugs in a temporary copy of the repository and
report which tests catch each one. Exit status 1 if a mutant survives (no targeted test fails);
a test file that fails on the unmutated copy is reported and left out of the runs. Stdlib only
(the mutants of csrc/cpu/ are compiled in a subprocess by torch's extension loader); the
checkout is never modified. The list of mutants and what each one models: tests/README.md.

Each mutant is a (file, old string, new string) patch of the old string's first occurrence; if
the old string is no longer in the file
(the code was rewritten), the mutant is reported "n/a" and does not count as a survivor.

    python scripts/mutants.py [--only NAME ...] [--timeout SECONDS] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VALUES_TCR = "tests/library/test_values_tcr.py"
VALUES_METRICS = "tests/library/test_values_metrics.py"
REFERENCE = "tests/library/test_reference.py"
FUNCTIONAL = "tests/library/test_functional.py"
DISTRIBUTED = "tests/library/test_distributed.py"
BACKENDS = "tests/library/test_values_backends.py"
TRITON = "tests/ops/test_triton_backend.py"
README = "tests/tooling/test_readme.py"
STAGED = "tests/ops/test_staged.py"
STAGED_BACKENDS = "tests/ops/test_staged_backends.py"
CKPT_INTEGRITY = "tests/train/test_train_checkpoint_integrity.py"
RESUME_ARGS = "tests/train/test_train_resume_args.py"
EVAL_INTEGRITY = "tests/eval/test_eval_checkpoint_integrity.py"
STAGED_UNIFORMITY = "tests/ops/test_staged_uniformity.py"
DISTRIBUTED_LOSSES = "tests/library/test_distributed_losses.py"
NN = "tests/library/test_nn.py"
TRAIN_DDP = "tests/train/test_train_ddp.py"
EXTREMES = "tests/library/test_values_extremes.py"
CPU_BACKEND = "tests/ops/test_cpu_backend.py"
DOUBLING = "tests/ops/test_doubling.py"
SMALL_PRODUCTS = "tests/ops/test_small_products.py"
SMALL_KERNEL = "tests/ops/test_small_kernel.py"
CPU_NATIVE = "tests/ops/test_cpu_native.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str  # constant | sign | dropped term | swapped argument | wrong side | ignored argument ...
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("tcr-c-mu-over-m", "constant", "mmae_fast/reference.py",
           "y = (mu / d) * g", "y = (mu / m) * g", (VALUES_TCR, FUNCTIONAL, REFERENCE)),
    Mutant("staged-c-mu-over-m", "constant in the staged / distributed path",
           "mmae_fast/ops/tcr/small_side.py", "c=float(mu) / d", "c=float(mu) / m",
           (DISTRIBUTED, BACKENDS)),
    Mutant("distributed-local-count", "dropped term: the row count is not all-reduced",
           "mmae_fast/ops/tcr/op.py", "colsum, count = buf[d * d: -1], buf[-1]",
           "colsum = buf[d * d: -1]", (DISTRIBUTED,)),
    Mutant("distributed-ignores-grad-semantics", "wrapper ignores an argument (gradient scale)",
           "mmae_fast/distributed.py", 'scale = float(k) if grad_semantics == "exact" else 1.0',
           "scale = 1.0", (DISTRIBUTED,)),
    Mutant("chebyshev-coefficient-sign", "sign of one series coefficient", "mmae_fast/series.py",
           "return tuple(float(x) for x in p)",
           "return tuple(float(-x if k == 1 else x) for k, x in enumerate(p))",
           (VALUES_TCR, REFERENCE, FUNCTIONAL)),
    Mutant("taylor-coefficient-sign", "sign of the Taylor coefficients", "mmae_fast/series.py",
           "(-1.0) ** (k + 1) / k", "(-1.0) ** k / k", (VALUES_TCR, VALUES_METRICS, REFERENCE)),
    Mutant("centering-dropped", "dropped term", "mmae_fast/reference.py",
           "return center(z) if centering else z", "return z", (VALUES_TCR, FUNCTIONAL, REFERENCE)),
    Mutant("mce-centering-dropped", "dropped term (J in MCE's Q)", "mmae_fast/reference.py",
           "normalized_features(h1.to(dt), centering=True)", "normalized_features(h1.to(dt))",
           (VALUES_METRICS, REFERENCE)),
    Mutant("mec-z1-for-z2", "swapped argument (MEC's d > m branch)", "mmae_fast/reference.py",
           "c = z2.mT @ z1 if d <= m else z1 @ z2.mT", "c = z2.mT @ z1 if d <= m else z1 @ z1.mT",
           (VALUES_METRICS, REFERENCE)),
    Mutant("joint-entropy-feature-gram", "wrong side of the Gram", "mmae_fast/reference.py",
           'k1 = gram(normalized_features(h1), "sample")', "k1 = gram(normalized_features(h1))",
           (VALUES_METRICS, REFERENCE)),
    Mutant("uniformity-mean-over-m", "constant (1/m instead of 1/m²)", "mmae_fast/reference.py",
           "return gram(z).square().sum() / z.shape[0] ** 2",
           "return gram(z).square().sum() / z.shape[0]", (VALUES_METRICS, REFERENCE)),
    Mutant("effective-rank-of-renyi-2", "wrong formula (exp H_2 for exp H_1)",
           "mmae_fast/reference.py", "return renyi_entropy(h, 1.0).exp()",
           "return renyi_entropy(h, 2.0).exp()", (VALUES_METRICS, FUNCTIONAL)),
    Mutant("entropy-ignores-alpha", "wrapper ignores an argument", "mmae_fast/functional.py",
           "return reference.renyi_entropy(z, alpha)", "return reference.renyi_entropy(z, 1.0)",
           (README, VALUES_METRICS, FUNCTIONAL)),
    Mutant("mec-ignores-eps-sq", "wrapper ignores an argument", "mmae_fast/functional.py",
           "return reference.mec(z1, z2, eps_sq=eps_sq, order=order)",
           "return reference.mec(z1, z2, eps_sq=0.06, order=order)", (VALUES_METRICS, FUNCTIONAL)),
    Mutant("series-ignores-tol", "wrapper ignores an argument", "mmae_fast/functional.py",
           "series.kappa(mu, m, d), tol)", "series.kappa(mu, m, d), 1e-4)",
           (VALUES_TCR, FUNCTIONAL)),
    Mutant("triton-falls-back-to-reference", "fallback routing (whole backend)",
           "mmae_fast/ops/tcr/registry.py",
           '"triton": "mmae_fast.ops.tcr.triton.backend"', '"triton": "mmae_fast.ops.tcr.stages"',
           (BACKENDS, TRITON)),
    Mutant("triton-gram-falls-back-to-torch", "fallback routing (one kernel stage)",
           "mmae_fast/ops/tcr/triton/backend.py",
           "return torch.ops.mmae_fast.triton_gram(h, bool(feature))",
           "from .. import stages; return stages.gram(h, feature)",
           (BACKENDS, TRITON)),
    Mutant("floor-row-keeps-shift", "dropped term (rows at the norm floor keep Q's shift)",
           "mmae_fast/ops/tcr/stages.py",
           "kept = gx - z * coef[1] if coef.numel() == 2 else gx", "kept = gx", (STAGED,)),
    Mutant("triton-floor-row-keeps-shift", "dropped term in a kernel epilogue",
           "mmae_fast/ops/tcr/triton/grad_kernel.py",
           "kept = gx - z * (tl.load(coef_ptr + 1).to(tl.float32) * scale)", "kept = gx",
           (STAGED_BACKENDS,)),
    Mutant("float32-floor-detection", "precision (clamped rows detected in float64 arithmetic)",
           "mmae_fast/ops/tcr/stages.py", "project = (rinv < _inv_floor(acc))[:, None]",
           "project = (rinv.double() * reference.EPS < 1.0)[:, None]", (STAGED,)),
    Mutant("small-side-in-float32", "precision (the series evaluated in float32)",
           "mmae_fast/ops/tcr/small_side.py", "F64 = torch.float64", "F64 = torch.float32",
           (STAGED,)),
    Mutant("no-radial-shift", "dropped term (Q not shifted: half backward products lose bits)",
           "mmae_fast/ops/tcr/small_side.py", "q.diagonal().add_(alpha)", "q.diagonal().add_(0 * alpha)",
           (STAGED,)),
    Mutant("basis-reads-uninitialised", "uninitialised read (beta = -0.0 into an empty slot)",
           "mmae_fast/ops/tcr/small_side.py", "torch.mm(first, buf[k - 1], out=buf[k])",
           "buf[k].copy_(first @ buf[k - 1] + (-0.0) * buf[k])", (STAGED_BACKENDS,)),
    Mutant("graph-key-drops-constants", "cache key (a replayed graph keeps the first 1/m)",
           "mmae_fast/ops/tcr/graph_cache.py",
           "for x in inputs), constants", "for x in inputs), constants.estimator", (STAGED,)),
    Mutant("gram-operand-in-bf16", "precision (bf16 rows as the Gram's operand: 4.6e-4 off)",
           "mmae_fast/ops/tcr/triton/tiles.py", "        y = x.to(tl.float16)",
           "        y = x.to(like_ptr.dtype.element_ty)", (STAGED_BACKENDS,)),
    Mutant("row-norm-overflows", "overflow (the plain sum of squares of the rows)",
           "mmae_fast/reference.py",
           "return torch.linalg.vector_norm(x * torch.ldexp(one, -k)[:, None], dim=1) * torch.ldexp(one, k)",
           "return torch.linalg.vector_norm(x, dim=1)", (EXTREMES,)),
    Mutant("entropy-power-traces-at-large-alpha", "underflow (tr(K^alpha) by GEMMs to alpha 100)",
           "mmae_fast/reference.py", "MAX_POWER_TRACE_ALPHA = 8", "MAX_POWER_TRACE_ALPHA = 100",
           (EXTREMES,)),
    Mutant("entropy-of-nan-is-zero", "non-finite input reported as a finite entropy",
           "mmae_fast/reference.py", "torch.full_like(value, math.nan)", "torch.zeros_like(value)",
           (EXTREMES,)),
    Mutant("host-copy-in-small-side", "host-to-device copy (t[0] = 1.0 syncs, breaks capture)",
           "mmae_fast/ops/tcr/small_side.py", "qinfo[:1].fill_(1.0)", "qinfo[0] = 1.0", (STAGED,)),
    Mutant("checksum-not-verified", "dropped check: a checkpoint's checksum is never compared",
           "mmae_fast/mae/checkpoint.py", "    verify(state, path)\n    return state",
           "    return state", (CKPT_INTEGRITY,)),
    Mutant("non-finite-checkpoint-resumed", "dropped check: a NaN / inf state is resumed",
           "mmae_fast/train/resume.py", "    if bad:\n        raise ValueError(f\"--resume",
           "    if False:\n        raise ValueError(f\"--resume", (CKPT_INTEGRITY,)),
    Mutant("resume-ignores-optimisation-flags", "dropped check: a changed --lr / --lamb resumes",
           "mmae_fast/train/resume.py", "for key in FIXED + OPTIMISATION:", "for key in FIXED:",
           (RESUME_ARGS,)),
    Mutant("eval-resume-ignores-encoder", "dropped check: a probe resumes on another encoder",
           "mmae_fast/eval/common.py", "if was is not None and now is not None and was != now:",
           "if False:", (EVAL_INTEGRITY,)),
    Mutant("staged-uniformity-mean-over-m", "constant (1/m instead of 1/m² on the staged path)",
           "mmae_fast/ops/tcr/small_side.py", "else torch.full((), 1.0 / float(k.rows) ** 2",
           "else torch.full((), 1.0 / float(k.rows)", (STAGED_UNIFORMITY,)),
    Mutant("staged-uniformity-count-not-squared", "constant (1/M with a group, not 1/M²)",
           "mmae_fast/ops/tcr/small_side.py", "1.0 / count.to(F64).square()",
           "1.0 / count.to(F64)", (STAGED_UNIFORMITY, DISTRIBUTED_LOSSES)),
    Mutant("staged-uniformity-gradient-p", "constant (Q from P, not 2P = 4G/M²)",
           "mmae_fast/ops/tcr/small_side.py", "q = g64 * (4.0 * inv_m2)",
           "q = g64 * (2.0 * inv_m2)", (STAGED_UNIFORMITY,)),
    Mutant("distributed-losses-ignore-grad-semantics", "wrapper ignores an argument (the K)",
           "mmae_fast/distributed.py",
           'return float(group_size(group)) if grad_semantics == "exact" else 1.0',
           "return 1.0", (DISTRIBUTED_LOSSES,)),
    Mutant("distributed-entropy-local-gram", "dropped term (the entropy's Gram not all-reduced)",
           "mmae_fast/distributed.py",
           "s = _AllReduceSum.apply(z.mT @ z, group, _grad_scale(group, grad_semantics))",
           "s = z.mT @ z", (DISTRIBUTED_LOSSES,)),
    Mutant("distributed-mce-local-centring", "dropped term (MCE over ranks without the centring)",
           "mmae_fast/distributed.py", "    if centering:\n        c = c - torch.outer(s1, s2)",
           "    if False:\n        c = c - torch.outer(s1, s2)", (DISTRIBUTED_LOSSES,)),
    Mutant("module-ignores-distributed", "ignored argument (distributed=True: one process)",
           "mmae_fast/distributed.py", "        return dist.group.WORLD\n    return None",
           "        return None\n    return None", (DISTRIBUTED_LOSSES,)),
    Mutant("module-drops-a-setting", "ignored argument (TCRLoss drops centering)",
           "mmae_fast/nn.py", "centering=self.centering, estimator=self.estimator,",
           "centering=False, estimator=self.estimator,", (NN,)),
    Mutant("trainer-uniformity-one-rank", "dropped term (--reg uniformity without the group)",
           "mmae_fast/train/regularisers.py", "cls, group=group, grad_semantics=",
           "cls, group=None, grad_semantics=", (TRAIN_DDP,)),
    Mutant("cpu-floor-row-keeps-shift", "dropped term (the cpu stage 3's floor rows keep the shift)",
           "mmae_fast/ops/tcr/cpu.py", "floor = rinv * coef[1] if coef.numel() == 2 else 0.0",
           "floor = 0.0 * rinv * coef[1] if coef.numel() == 2 else 0.0", (CPU_BACKEND,)),
    Mutant("float32-complement-drops-square", "dropped term (W = M + Mᵀ without -MᵀM)",
           "mmae_fast/ops/tcr/cpu.py", "return (m + m.mT).sub_(lower_gram(m))",
           "return (m + m.mT)", (CPU_BACKEND,)),
    Mutant("shift-and-scale-keeps-mean", "dropped term (Q of a·w + b·I without w's mean diagonal removed)",
           "mmae_fast/ops/tcr/small_side.py", "    d.diagonal().add_(neg_wbar)\n",
           "    d.diagonal().add_(0.0 * neg_wbar)\n", (SMALL_PRODUCTS, CPU_BACKEND)),
    Mutant("lower-gram-drops-block", "dropped term (the blocked mᵀm without M21ᵀM21)",
           "mmae_fast/ops/tcr/cpu.py",
           "torch.addmm(torch.mm(m21.mT, m21), m11.mT, m11, out=out[:h, :h])",
           "torch.mm(m11.mT, m11, out=out[:h, :h])", (CPU_BACKEND,)),
    Mutant("doubling-unweighted", "constant (plain Newton-Schulz weights w = 1)",
           "mmae_fast/ops/tcr/doubling.py", "out.append(1.0 if tau > 1e150 else",
           "out.append(1.0 if tau > -1.0 else", (DOUBLING,)),
    Mutant("moments-giant-sign", "sign (the giant steps' Chebyshev recurrence adds H_(j-1))",
           "mmae_fast/ops/tcr/moments.py", "mm(basis[s], giant).mul_(2.0).sub_(previous)",
           "mm(basis[s], giant).mul_(2.0).add_(previous)", (SMALL_PRODUCTS,)),
    Mutant("s-basis-sign", "sign (the S basis' ±2βY term of the wrong parity)",
           "mmae_fast/ops/tcr/small_side.py", "alpha=2.0 * beta * (-1.0 if k % 2 == 0 else 1.0)",
           "alpha=2.0 * beta * (1.0 if k % 2 == 0 else -1.0)", (SMALL_PRODUCTS,)),
    Mutant("complement-drops-identity", "dropped term (2P without its -2c·beta·I part)",
           "mmae_fast/ops/tcr/small_side.py", "q.diagonal().sub_(2.0 * k.c * beta)",
           "q.diagonal().sub_(0.0 * k.c * beta)", (SMALL_PRODUCTS,)),
    Mutant("small-kernel-gamma-everywhere", "wrong term in a kernel epilogue (gamma·11ᵀ for gamma·I)",
           "mmae_fast/ops/tcr/triton/small_kernel.py", "out = tl.where(diag, out + gamma, out)",
           "out = out + gamma", (SMALL_KERNEL,)),
    Mutant("small-kernel-mirror-once", "dropped factor (the symmetric mode's off-diagonal "
           "tiles counted once in <OUT, F>)", "mmae_fast/ops/tcr/triton/small_kernel.py",
           "tile = tile * 2.0", "tile = tile * 1.0", (SMALL_KERNEL,)),
    Mutant("small-kernel-diagonal-unmasked", "mask dropped (the padded diagonal of an edge tile "
           "enters the trace)", "mmae_fast/ops/tcr/triton/small_kernel.py",
           "diag = (rows[:, None] == cols[None, :]) & msk", "diag = rows[:, None] == cols[None, :]",
           (SMALL_KERNEL,)),
    Mutant("s-basis-drops-2s", "dropped term (the S basis' recurrence without its -2 S_(k-1))",
           "mmae_fast/ops/tcr/small_side.py",
           ".mul_(2.0 * beta).sub_(basis[k - 1], alpha=2.0).sub_(basis[k - 2])",
           ".mul_(2.0 * beta).sub_(basis[k - 2])", (SMALL_PRODUCTS,)),
    Mutant("products-float64-ignores-inverse", "ignored argument (float64 input with the "
           "products switch set runs the Cholesky inverse whatever MMAE_FAST_EXACT_INVERSE says)",
           "mmae_fast/ops/tcr/small_side.py", 'inverse="doubling" if doubled else "cholesky"',
           'inverse="doubling" if doubled and not tensor_side else "cholesky"',
           (SMALL_PRODUCTS,)),
    Mutant("native-norm-unscaled", "dropped factor (the native row norm squares the unscaled "
           "entries: rows of 1e30 overflow)", "csrc/cpu/tcr_cpu.cpp",
           "const acc_t s = static_cast<acc_t>(x[j]) * scale;",
           "const acc_t s = static_cast<acc_t>(x[j]);", (CPU_NATIVE,)),
    Mutant("native-floor-rows-projected", "off by one (the native stage 3 projects the rows at "
           "the floor)", "csrc/cpu/tcr_cpu.cpp", "if (rp[i] < floor_rinv) {",
           "if (rp[i] <= floor_rinv) {", (CPU_NATIVE,)),
    Mutant("native-exact-side-no-shift", "dropped term (the native exact side's Q without the "
           "radial shift alpha)", "csrc/cpu/tcr_cpu.cpp",
           "const double alpha = trace / -static_cast<double>(n);", "const double alpha = 0.0;",
           (CPU_NATIVE,)),
]


def copy_repo(dest: Path) -> None:
    """Copy the tracked and untracked-not-ignored files of the checkout (its working tree as it
    is now) to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = ROOT / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


#: the CPU extension's file in a copy, named as ``pip install`` names it (imported by
#: mmae_fast/ops/tcr/cpu_native.py)
NATIVE_LIB = Path("mmae_fast") / ("_cpu" + sysconfig.get_config_var("EXT_SUFFIX"))


def build_native(copy: Path) -> None:
    """Compile the copy's csrc/cpu/*.cpp (as setup.py does) into ``NATIVE_LIB``: the mutants of
    the C++ sources run their tests on the native stages; every other mutant runs without it."""
    build = copy / "build-native"
    build.mkdir(exist_ok=True)
    code = ("import glob, sys; from torch.utils.cpp_extension import load; "
            "load(name='_cpu', sources=sorted(glob.glob('csrc/cpu/*.cpp')), "
            "extra_cflags=['-O3', '-fopenmp'], extra_ldflags=['-fopenmp'], "
            "build_directory=sys.argv[1], is_python_module=False)")
    subprocess.run([sys.executable, "-c", code, str(build)], cwd=copy, check=True,
                   capture_output=True)
    shutil.copy2(build / "_cpu.so", copy / NATIVE_LIB)


def run_tests(copy: Path, tests, timeout: float) -> tuple[str, str, float]:
    """pytest ``tests`` in ``copy`` (-x -q): ("pass" | "fail" | "timeout", first failure, s)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf",
           "-W", "ignore::pytest.PytestUnraisableExceptionWarning", *tests]
    start = time.time()
    try:
        out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - start
    elapsed = time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, flags=re.M)
    if out.returncode == 0:
        return "pass", "", elapsed
    if out.returncode == 5:  # no tests collected
        return "pass", "(no tests ran)", elapsed
    return "fail", failed[0] if failed else out.stdout.strip().splitlines()[-1], elapsed


def check_import(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy))
    where = subprocess.run([sys.executable, "-c", "import mmae_fast; print(mmae_fast.__file__)"],
                           cwd=copy, env=env, check=True, capture_output=True, text=True).stdout
    if not Path(where.strip()).resolve().is_relative_to(copy.resolve()):
        sys.exit(f"the copy imports mmae_fast from {where.strip()}, not from {copy}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    mutants = [mu for mu in MUTANTS if not args.only or mu.name in args.only]
    if args.list:
        for mu in mutants:
            print(f"{mu.name:32s} {mu.kind:55s} {mu.path}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="mmae-mutants-"))
    copy = tmp / "repo"
    try:
        copy_repo(copy)
        check_import(copy)
        targets = sorted({t for mu in mutants for t in mu.tests if (copy / t).exists()})
        broken = set()
        native_targets = {t for mu in mutants if mu.path.endswith(".cpp") for t in mu.tests}
        for test in targets:  # a file failing without a mutant cannot judge one: left out
            if test in native_targets:
                build_native(copy)
            status, first, secs = run_tests(copy, [test], args.timeout)
            (copy / NATIVE_LIB).unlink(missing_ok=True)
            print(f"baseline {test}: {status} in {secs:.0f} s {first}", flush=True)
            if status != "pass":
                broken.add(test)
        rows = []
        for mu in mutants:
            target = copy / mu.path
            original = target.read_text()
            tests = [t for t in mu.tests if (copy / t).exists() and t not in broken]
            if original.count(mu.old) == 0:
                rows.append((mu, "n/a", "old string not found (code rewritten)", 0.0))
            elif not tests:
                rows.append((mu, "SURVIVED", "no passing test file targets it", 0.0))
            else:
                target.write_text(original.replace(mu.old, mu.new, 1))  # first occurrence
                try:
                    if mu.path.endswith(".cpp"):
                        build_native(copy)
                    status, first, secs = run_tests(copy, tests, args.timeout)
                finally:
                    target.write_text(original)
                    (copy / NATIVE_LIB).unlink(missing_ok=True)
                verdict = {"fail": "caught", "pass": "SURVIVED", "timeout": "timeout"}[status]
                rows.append((mu, verdict, first, secs))
            print(f"{mu.name}: {rows[-1][1]} {rows[-1][2]}", flush=True)
    finally:
        if args.keep:
            print(f"copy kept at {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| mutant | kind | file | verdict | first failing test | s |")
    print("|---|---|---|---|---|---|")
    for mu, verdict, first, secs in rows:
        print(f"| {mu.name} | {mu.kind} | {mu.path} | {verdict} | {first} | {secs:.0f} |")
    caught = sum(r[1] == "caught" for r in rows)
    applicable = sum(r[1] != "n/a" for r in rows)
    print(f"\n{caught} of {applicable} applicable mutants caught "
          f"({len(rows) - applicable} not applicable)")
    return 0 if caught == applicable else 1


if __name__ == "__main__":
    sys.exit(main())
