"""Accuracy of the small side's products-only forms in each tensor-core format, emulated on the
CPU (``mmae_fast/ops/tcr/rounding.py``): no timing, the errors a GPU would make.

Per (kappa, n, input kind, format), against numpy-free float64 eigenvalues of the same Gram:

* ``moments``: the exact estimator's log-determinant from Y-weighted moments
  (``mmae_fast/ops/tcr/moments.py``), relative error;
* ``plain_traces``: the same polynomial from plain traces ``Σ p_k tr T_k(M)`` of a basis stored
  in the format (what the Y weighting avoids), relative error;
* ``cholesky``: ``2 Σ log diag chol(I + Y)`` in float32 (the factorisation it replaces);
* ``complement``: the gradient's ``2c·U`` from ``doubling.complement`` after the radial shift,
  relative Frobenius error; ``float32_inverse``: the same matrix from a float32 inverse
  (``I - inv32(I + Y)``); ``float32_complement``: from the cpu backend's float32 form
  (``mmae_fast/ops/tcr/cpu.py``, ``float32_complement`` of the float64 factor).

Inputs: anisotropic rows (scales 0.1 … 3), ``collapsed`` (one direction plus 1e-2 noise),
``centred`` (rows minus their mean), rounded to float32 before the float64 Gram.

    python bench/small_accuracy.py                      # kappa 2 4 65 257, n 101 255 1023
    python bench/small_accuracy.py --n 101 --kappa 4    # one case

Writes ``<out>/<cpu slug>/small-accuracy-<time>.json`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import common
from mmae_fast import series
from mmae_fast.mae import errors
from mmae_fast.ops.tcr import cpu, doubling, moments, rounding, small_side

SCHEMA = "mmae_fast.bench.small_accuracy"
KINDS = ("anisotropic", "collapsed", "centred")
FORMATS = ("float32", "tf32x3", "bf16x3")
CSV_FIELDS = ("kappa", "n", "m", "kind", "format", "degree", "products", "steps", "logdet",
              "moments", "plain_traces", "cholesky", "complement", "float32_inverse",
              "float32_complement")
F64 = torch.float64


def gram(kappa: float, n: int, kind: str, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """``(Y, logdet(I + Y))``: Y = c·G (n, n) float64 of 2n float32 rows of width n, with
    ``mu`` such that ``1 + mu·m/d = kappa``."""
    m, d = 2 * n, n
    h = torch.randn(m, d, generator=gen, dtype=F64) * torch.linspace(0.1, 3.0, d, dtype=F64)
    if kind == "collapsed":
        h = h[:, :1] * torch.randn(1, d, generator=gen, dtype=F64) + 1e-2 * h
    z = torch.nn.functional.normalize(h.float().double(), dim=1)
    if kind == "centred":
        z = z - z.mean(dim=0)
    y = z.mT @ z * ((kappa - 1.0) / m)
    lam = torch.linalg.eigvalsh(y).clamp_min(0.0)
    return y, float(torch.log1p(lam).sum())


def plain_traces(y: torch.Tensor, kappa: float, degree: int, fmt: str) -> float:
    """``Σ p_k tr T_k(M)`` with ``T_k = 2 M T_(k-1) - T_(k-2)`` stored in float32 (M rounded)."""
    p = series.chebyshev_coefficients(kappa, degree)
    m = (y * (2.0 / (kappa - 1.0))).float()
    m.diagonal().sub_(1.0)
    prev, cur = torch.eye(y.shape[0]), m
    total = p[0] * y.shape[0] + p[1] * float(cur.double().trace())
    for k in range(2, degree + 1):
        prev, cur = cur, rounding.product(m, cur, fmt).mul_(2.0).sub_(prev)
        total += p[k] * float(cur.double().trace())
    return total


def shifted(u: torch.Tensor) -> torch.Tensor:
    """``u - tr(u)/n·I`` in float64 (the matrix after the radial shift)."""
    u = u.double().clone()
    u.diagonal().sub_(u.diagonal().sum() / u.shape[0])
    return u


def row(kappa: float, n: int, kind: str, fmt: str, gen: torch.Generator) -> dict:
    y, want = gram(kappa, n, kind, gen)
    degree = moments.exact_degree(kappa)
    steps = doubling.complement_steps_for(kappa, small_side.COMPLEMENT_TARGET)
    mm = small_side.product_function(fmt, y.device)
    rel = lambda v: abs(float(v) - want) / abs(want)  # noqa: E731
    a = y.clone()
    a.diagonal().add_(1.0)
    w_ref = shifted(torch.linalg.solve(a, y))
    u, _ = doubling.complement(y.float(), kappa, steps, mm)
    inv32 = torch.linalg.inv(a.float()).double()
    w32 = -inv32
    w32.diagonal().add_(1.0)
    chol = torch.linalg.cholesky(a.float())
    w_form = cpu.float32_complement(torch.linalg.cholesky(a)).double()
    return {"kappa": kappa, "n": n, "m": 2 * n, "kind": kind, "format": fmt, "degree": degree,
            "products": moments.plan(degree).products, "steps": steps, "logdet": want,
            "moments": rel(moments.logdet(y.float(), kappa, degree, mm)),
            "plain_traces": rel(plain_traces(y, kappa, degree, fmt)),
            "cholesky": rel(2.0 * chol.diagonal().double().log().sum()),
            "complement": float((shifted(u) - w_ref).norm() / w_ref.norm()),
            "float32_inverse": float((shifted(w32) - w_ref).norm() / w_ref.norm()),
            "float32_complement": float((shifted(w_form) - w_ref).norm() / w_ref.norm())}


def parse_args(argv=None):
    p = errors.OneLineParser(prog="mmae-bench small_accuracy", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kappa", type=float, nargs="+", default=[2.0, 4.0, 65.0, 257.0])
    p.add_argument("--n", type=int, nargs="+", default=[101, 255, 1023])
    p.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(common.REPO_ROOT / "bench" / "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    common.check_limits(p, args, (("threads", 1),))
    for k in args.kappa:
        if not k > 1.0:
            p.error(f"--kappa must be > 1, got {k:g}")
    for n in args.n:
        if n < 2:
            p.error(f"--n must be >= 2, got {n}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cases = [(k, n, kind, fmt) for k in args.kappa for n in args.n for kind in args.kind
             for fmt in args.format]
    rows = []
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cases), desc="small-side accuracy", unit="case", dynamic_ncols=True)
    for i, (k, n, kind, fmt) in enumerate(cases):
        gen = torch.Generator().manual_seed(args.seed + i // len(args.format))  # same input per format
        rows.append(row(k, n, kind, fmt, gen))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    stem = "small-accuracy" + (f"-{args.tag}" if args.tag else "") + f"-{common.timestamp()}"
    payload = {"schema": SCHEMA, "schema_version": common.SCHEMA_VERSION,
               "meta": common.environment(device), "config": vars(args), "complete": True}
    json_path, csv_path = common.write_results(common.result_dir(args.out, device), stem,
                                               payload, rows, CSV_FIELDS)
    print(f"wrote {json_path}\nwrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
