"""Microbenchmark of the TCR regulariser ``R = -logdet(I + mu/d · ZᵀZ)``: ours against baselines
(``--loss uniformity``: U-MAE's uniformity ``||ZᵀZ||_F²/m²`` instead, see below).

Sweeps m (batch), d (feature width), input dtype, estimator and mode (fwd, fwd+bwd) over

* baselines (``mmae_fast.baselines``), eager and under ``torch.compile`` ("-compile"):
  ``official`` (the official M-MAE loss: normalise, ZᵀZ in fp16 under autocast, LU logdet in
  fp32), ``cholesky`` (eager ``cholesky_ex`` half-logdet), ``taylor-eager`` (MEC-style order 4);
  a baseline runs only when its estimator (exact, exact, taylor) is in the sweep;
* ours: ``mmae_fast.tcr_loss`` with backend ``reference``, ``triton``, ``cuda`` and each
  estimator. A provider that cannot run here is recorded as skipped with the reason.

Per case: every repetition's time (median reported), the relative error of the value against
the exact float64 reference (and against the float64 reference of the same estimator, i.e. the
arithmetic error alone), in fwd+bwd the gradient's relative error, peak extra GPU memory, and
the roofline floor (``bench.roofline``) with the achieved fraction ``floor / median``.

Timing (``--timing``, default ``eager,graph`` on CUDA, ``eager`` on the CPU): ``eager`` is one
pair of CUDA events around every Python call (``bench.common.time_calls``); ``graph`` captures
the call once as a CUDA graph after warm-up and times each replay (``bench.common.time_graph``:
GPU time without Python). A provider that cannot be captured keeps its eager row, with
``graph_status`` "error" and the reason.

``--interleave`` (default on the CPU, ``--no-interleave`` off; off on CUDA): the cases of one
(m, d, dtype, mu, mode) are each prepared (checked call, warm-up, peak memory), then their eager
repetitions run round-robin, one call of each per round, the order reversed every other round
(``bench.common.time_round_robin``), so a load that changes during the run (other jobs on a
shared CPU) reaches every provider alike. A case that fails in a timed call is an error row
and leaves the rounds; each row keeps its own times.

``--shapes 1024x1024@3 4096x768@3 ...`` runs exactly those (m, d, mu) instead of the m × d grid;
``--time-limit S`` starts no case after S seconds: the rest are written as skipped, with the reason.

    python bench/entropy.py --quick                      # small CPU sweep, under a minute
    python bench/entropy.py --device cuda                # the full sweep (defaults)
    python bench/entropy.py --device cuda --dtype bf16 --providers official cholesky cuda
    python bench/entropy.py --device cuda --shapes 1024x1024@3 65536x1024@1 --timing graph

``--loss uniformity`` sweeps ``mmae_fast.uniformity_loss`` on each backend (estimator
"uniformity": the staged op's one Gram and element-wise small side on the kernel backends)
against the eager baseline ``umae-eager`` (``mmae_fast.baselines.umae_uniformity``: the m×m
similarity, U-MAE's way), with errors against the float64 ``reference.uniformity``.

    python bench/entropy.py --quick --loss uniformity

Writes ``<out>/<device slug>/entropy-<time>.json`` and ``.csv`` (default out: bench/results;
``uniformity-<time>.*`` with ``--loss uniformity``).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch._dynamo

from bench import common, roofline
from mmae_fast import backends, baselines, reference, series, tcr_loss, uniformity_loss
from mmae_fast.mae import errors
from mmae_fast.ops.tcr import small_side as _small

SCHEMA = "mmae_fast.bench.entropy"
ESTIMATORS = ("exact", "series", "taylor")
MODES = ("fwd", "fwd+bwd")
TIMINGS = ("eager", "graph")
OURS = ("reference", "cpu", "triton", "cuda")
#: baseline provider -> the estimator it computes
BASELINE_ESTIMATOR = {"official": "exact", "cholesky": "exact", "taylor-eager": "taylor",
                      "umae-eager": "uniformity"}
LOSSES = ("tcr", "uniformity")
PROVIDERS = tuple(p for b in BASELINE_ESTIMATOR for p in (b, f"{b}-compile")) + OURS
#: provider order and labels are shared with bench/plot.py
FULL = dict(m=[1024, 4096, 16384, 65536], d=[768, 1024, 1280], dtype=["bf16", "fp16", "fp32"])
QUICK = dict(m=[256, 1024, 4096], d=[256], dtype=["fp32", "bf16"])
CSV_FIELDS = ("provider", "backend", "compiled", "estimator", "degree", "m", "d", "dtype", "mode",
              "mu", "status", "reason", "median_ms", "min_ms", "iqr_ms", "reps", "rotation",
              "value", "ref_exact", "rel_err", "rel_err_same_estimator", "grad_rel_err",
              "peak_mem_bytes", "gram_flops", "small_flops", "bytes", "floor_ms",
              "roofline_fraction", "times_ms", "graph_status", "graph_reason",
              "graph_median_ms", "graph_min_ms", "graph_iqr_ms", "graph_reps",
              "graph_times_ms")
GRAPH_FIELDS = ("graph_median_ms", "graph_min_ms", "graph_iqr_ms")


@dataclasses.dataclass(frozen=True)
class Case:
    provider: str
    estimator: str
    m: int
    d: int
    dtype: str
    mode: str
    mu: float = 1.0


def parse_shape(text: str) -> tuple[int, int, float | None]:
    """``"4096x768@3"`` -> ``(4096, 768, 3.0)``; ``"4096x768"`` -> ``(4096, 768, None)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*(?:@\s*([0-9.eE+-]+))?\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise argparse.ArgumentTypeError(
            f"--shapes: {text!r} is not MxD or MxD@MU (e.g. 4096x768@3)")
    mu = float(match[3]) if match[3] else None
    if mu is not None and not mu > 0:
        raise argparse.ArgumentTypeError(f"--shapes: mu must be > 0 in {text!r}")
    return int(match[1]), int(match[2]), mu


def parse_timing(text: str) -> list[str]:
    """``"eager,graph"`` -> ``["eager", "graph"]``."""
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in TIMINGS]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"--timing: {text!r}; use a comma-separated subset of {', '.join(TIMINGS)}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = errors.OneLineParser(prog="mmae-bench entropy", description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"small CPU sweep (m={QUICK['m']}, d={QUICK['d']}, "
                        f"dtype={QUICK['dtype']}, eager providers, few reps)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present, "
                                                  "cpu with --quick)")
    p.add_argument("--m", type=int, nargs="+", help=f"batch sizes (default {FULL['m']})")
    p.add_argument("--d", type=int, nargs="+", help=f"feature widths (default {FULL['d']})")
    p.add_argument("--dtype", nargs="+", choices=list(common.DTYPES), help="input dtypes")
    p.add_argument("--estimator", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    p.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--providers", nargs="+", choices=PROVIDERS,
                   help="default: all (--quick: the eager ones)")
    p.add_argument("--loss", choices=LOSSES, default="tcr",
                   help="tcr (the estimators of --estimator) or uniformity (U-MAE's loss)")
    p.add_argument("--mu", type=float, default=1.0, help="TCR mu (official: 1 ViT-B, 3 ViT-L)")
    p.add_argument("--shapes", nargs="+", type=parse_shape, metavar="MxD[@MU]",
                   help="exactly these (m, d, mu) instead of the --m x --d grid "
                        "(mu defaults to --mu)")
    p.add_argument("--timing", type=parse_timing,
                   help="eager and/or graph, comma-separated (default: eager,graph on CUDA, "
                        "eager on the CPU)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="time the repetitions of the providers (and estimators) of one shape, "
                        "dtype and mode round-robin, one call of each per round, after each "
                        "case's warm-up and checked call, so a machine load that changes "
                        "during the run reaches every provider alike and their ratios hold; "
                        "--no-interleave times each case's repetitions in a row (default: on "
                        "for --device cpu, where other jobs share the cores; off on CUDA, "
                        "where the GPU is held alone and one provider called back to back is "
                        "how a training step calls it). Graph replays are timed per case.")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no case after S seconds; the rest are written as skipped")
    p.add_argument("--tol", type=float, default=1e-4, help="series tolerance (degree from it)")
    p.add_argument("--reps", type=int, help="timed repetitions (default 30 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 5 GPU, 2 CPU)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "bench" / "results"),
                   help="results root; files go to <out>/<device slug>/")
    p.add_argument("--tag", default="", help="appended to the result file name")
    p.add_argument("--features", choices=("anisotropic", "gaussian"), default="anisotropic",
                   help="synthetic input distribution (see features())")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); on a "
                                                "shared machine 1 gives steadier timings")
    p.add_argument("--small-products", choices=_small.PRODUCTS, default=None,
                   help="stage 2's n×n arithmetic for our providers (sets "
                        f"{_small.PRODUCTS_ENV}; default: the environment's, else float32 "
                        f"for series and Taylor on the CPU and float64 otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.device is None:
        args.device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here; use --device cpu (or --quick)")
    preset = QUICK if args.quick else FULL
    for key, val in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    cpu = args.device == "cpu"
    args.reps = args.reps if args.reps is not None else (3 if args.quick else 5 if cpu else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2 if cpu else 5)
    if args.loss == "uniformity":
        args.estimator = ["uniformity"]
    if args.providers is None:
        args.providers = [p for p in PROVIDERS if not (args.quick and p.endswith("-compile"))]
    if args.timing is None:
        args.timing = ["eager"] if cpu else ["eager", "graph"]
    if args.interleave is None:
        args.interleave = cpu
    if args.shapes:
        args.shapes = [(m, d, args.mu if mu is None else mu) for m, d, mu in args.shapes]
        args.m = sorted({s[0] for s in args.shapes})
        args.d = sorted({s[1] for s in args.shapes})
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One usage line (exit 2) for a value no case could run with."""
    for name in ("m", "d"):
        bad = [v for v in getattr(args, name) or () if v < 1]
        if bad:
            p.error(f"--{name} values must be >= 1, got {bad[0]}")
    if not 0 < args.mu < float("inf"):
        p.error(f"--mu must be a finite number > 0, got {args.mu}")
    if not 0 < args.tol < 1:
        p.error(f"--tol is the series' relative error target: give 0 < tol < 1 (e.g. 1e-4), "
                f"got {args.tol}")
    common.check_limits(p, args, (("reps", 1), ("warmup", 0), ("threads", 1)))


# ----------------------------------------------------------------------------- providers
def degree_of(estimator: str, mu: float, m: int, d: int, tol: float) -> int:
    """The polynomial degree ``tcr_loss`` uses by default (0 for exact)."""
    return reference.default_degree(estimator, series.kappa(mu, m, d), tol)


_COMPILED: dict[str, Callable] = {}


def loss_fn(case: Case, mu: float, tol: float) -> Callable:
    """``h -> R`` for the case's provider."""
    base = case.provider.removesuffix("-compile")
    if base in baselines.UNIFORMITY_BASELINES:
        fn = baselines.UNIFORMITY_BASELINES[base]
        if case.provider.endswith("-compile"):
            fn = _COMPILED.setdefault(base, torch.compile(fn))
        return fn
    if case.estimator == "uniformity":
        return lambda h: uniformity_loss(h, backend=case.provider)
    if base in BASELINE_ESTIMATOR:
        fn = baselines.BASELINES[base]
        if case.provider.endswith("-compile"):
            fn = _COMPILED.setdefault(base, torch.compile(fn))
        return lambda h: fn(h, mu)
    return lambda h: tcr_loss(h, mu, estimator=case.estimator, tol=tol, backend=case.provider)


def unavailable(case: Case, x: torch.Tensor) -> str | None:
    """Why the case's provider cannot run on input ``x``, or None."""
    if case.provider in OURS:
        try:
            backends.resolve(case.provider, x)
        except (RuntimeError, ValueError) as exc:
            return str(exc)
    return None


def make_call(loss: Callable, mode: str) -> Callable:
    """One benchmarked call: the forward, or the forward and the gradient w.r.t. the input."""
    if mode == "fwd":
        def call(h):
            with torch.no_grad():
                return loss(h), None
    else:
        def call(h):
            value = loss(h)
            return value, torch.autograd.grad(value, h)[0]
    return call


# ----------------------------------------------------------------------------- sweep
def shapes(args) -> list[tuple[int, int, float]]:
    """(m, d, mu) in sweep order: ``--shapes`` as given, else d-major over the grid."""
    if getattr(args, "shapes", None):
        return list(args.shapes)
    return [(m, d, args.mu) for d in args.d for m in args.m]


def cases(args) -> list[Case]:
    out = []
    for dtype in args.dtype:
        for m, d, mu in shapes(args):
            for mode in args.mode:
                for provider in args.providers:
                    base = BASELINE_ESTIMATOR.get(provider.removesuffix("-compile"))
                    for e in args.estimator if base is None else [base]:
                        if e in args.estimator:
                            out.append(Case(provider, e, m, d, dtype, mode, mu))
    return out


def features(m: int, d: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Synthetic features (m, d), float32 on the CPU.

    "gaussian": i.i.d. N(0, 1), whose Gram is well conditioned (flatters truncated series).
    "anisotropic": column k scaled by (k+1)^-1/2 plus one shared random direction of the same
    energy (rows have cosine similarity about 1/2): a decaying spectrum with one dominant
    eigenvalue near m/2, the shape that makes Taylor diverge once mu·m/(2d) > 1.
    """
    x = torch.randn(m, d, generator=gen)
    if kind == "gaussian":
        return x
    scale = torch.arange(1, d + 1, dtype=torch.float32).rsqrt()
    shared = torch.randn(d, generator=gen) * scale
    return x * scale + shared


class Inputs:
    """The rotated input pool and the float64 references of one (m, d, dtype)."""

    def __init__(self, m: int, d: int, dtype: str, device: torch.device, seed: int, mu: float,
                 kind: str):
        dt = common.DTYPES[dtype]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        n = common.rotation_count(m * d * torch.finfo(dt).bits // 8, device)
        first = features(m, d, kind, gen).to(device, dt)
        # the copies differ by a row permutation: same values, different memory
        self.pool = [first] + [first[torch.randperm(m, generator=gen).to(device)]
                               for _ in range(n - 1)]
        self.grad_pool = [x.clone().requires_grad_(True) for x in self.pool]
        self.mu, self._refs = mu, {}

    def reference(self, estimator: str, degree: int, grad: bool):
        """float64 value (and gradient) of ``reference.tcr`` on the first input."""
        key = (estimator, degree, grad)
        if key not in self._refs:
            h = self.pool[0].detach().double().requires_grad_(grad)
            value = (reference.uniformity(h) if estimator == "uniformity" else
                     reference.tcr(h, self.mu, estimator=estimator, degree=degree or None))
            g = torch.autograd.grad(value, h)[0] if grad else None
            self._refs[key] = (value.detach(), g)
        return self._refs[key]


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative (Frobenius) error in float64."""
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def base_row(case: Case, args, calib: dict, rotation: int | None) -> dict:
    """The case's row before it runs: identity, cost model and floor, empty results."""
    degree = degree_of(case.estimator, case.mu, case.m, case.d, args.tol)
    compiled = case.provider.endswith("-compile")
    backend = case.provider if case.provider in OURS else "baseline"
    graph = "graph" in args.timing
    row = dict(dataclasses.asdict(case), backend=backend, compiled=compiled, degree=degree,
               status="ok", reason=None, times_ms=[], reps=0, rotation=rotation,
               **common.summary([]), value=None, ref_exact=None, rel_err=None,
               rel_err_same_estimator=None, grad_rel_err=None, peak_mem_bytes=None,
               roofline_fraction=None, graph_status="skipped" if graph else None,
               graph_reason=None, graph_times_ms=[], graph_reps=0,
               **dict.fromkeys(GRAPH_FIELDS))
    itemsize = torch.finfo(common.DTYPES[case.dtype]).bits // 8
    cost = roofline.tcr_cost(case.m, case.d, case.estimator, degree, case.mode, itemsize)
    row.update(cost, floor_ms=roofline.floor_ms(cost, case.dtype, calib))
    return row


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclasses.dataclass
class Prepared:
    """A case after its untimed calls. ``row`` is its base row (``base_row``), final when
    ``call`` is None (skipped or failed); else ``results`` holds the value, errors and peak
    memory and ``call(pool[i])`` is the call to time."""
    row: dict
    call: Callable | None = None
    pool: list | None = None
    results: dict = dataclasses.field(default_factory=dict)


def failed(row: dict, exc: Exception, device: torch.device) -> dict:
    """The case's row as an error: a failing provider is a result, not a crash."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row | {"status": "error", "reason": _error(exc),
                  "graph_reason": "the eager call failed" if row["graph_status"] else None}


def prepare(case: Case, inputs: Inputs, args, device: torch.device, calib: dict) -> Prepared:
    """Everything before the timed repetitions: availability, the call whose value and
    gradient are checked against the float64 references, the warm-up, the peak memory."""
    row = base_row(case, args, calib, len(inputs.pool))
    reason = unavailable(case, inputs.pool[0])
    if reason is not None:
        return Prepared(row | {"status": "skipped", "reason": reason,
                               "graph_reason": reason if row["graph_status"] else None})
    grad = case.mode == "fwd+bwd"
    pool = inputs.grad_pool if grad else inputs.pool
    call = make_call(loss_fn(case, case.mu, args.tol), case.mode)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Taylor's divergence warning: the error column says it
            value, g = call(pool[0])
            if "eager" in args.timing:
                common.warm_up(call, pool, device, args.warmup)
            peak = common.peak_memory(call, pool[0], device)
    except Exception as exc:  # noqa: BLE001 - a failing provider is a result, not a crash
        return Prepared(failed(row, exc, device))
    ref_exact, g_exact = inputs.reference(
        "uniformity" if case.estimator == "uniformity" else "exact", 0, grad)
    ref_same, _ = inputs.reference(case.estimator, row["degree"], False)
    return Prepared(row, call, pool, dict(
        peak_mem_bytes=peak, value=float(value.detach()), ref_exact=float(ref_exact),
        rel_err=rel(value, ref_exact), rel_err_same_estimator=rel(value, ref_same),
        grad_rel_err=rel(g, g_exact) if grad else None))


def finish(prep: Prepared, times: list[float], args, device: torch.device) -> dict:
    """The row of a prepared case from its eager times (ms): summary, roofline fraction and,
    with ``--timing graph``, the graph replays."""
    stats = common.summary(times)
    row = prep.row | prep.results | stats | {"times_ms": times, "reps": len(times)}
    if row["floor_ms"] is not None and stats["median_ms"]:
        row["roofline_fraction"] = row["floor_ms"] / stats["median_ms"]
    if "graph" in args.timing:
        row.update(graph_row(prep.call, prep.pool[0], args, device))
    return row


def time_group(group: list[Prepared], args, device: torch.device) -> list[dict]:
    """The rows of prepared cases that share one input pool: the eager repetitions of those
    that ran, timed round-robin (``common.time_round_robin``; one case: its repetitions in a
    row), then each row finished; a case failing in a timed call is an error row, the others
    go on."""
    live = [p for p in group if p.call is not None]
    times, errs = [[] for _ in live], [None] * len(live)
    if live and "eager" in args.timing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times, errs = common.time_round_robin([p.call for p in live], live[0].pool, device,
                                                  reps=args.reps, start=args.warmup)
    for prep, t, err in zip(live, times, errs):
        prep.row = failed(prep.row, err, device) if err is not None else finish(
            prep, t, args, device)
    return [p.row for p in group]


def groups(todo: list[Case], interleave: bool) -> list[list[Case]]:
    """The cases timed together: with ``interleave`` those of one (m, d, dtype, mu, mode), which
    share one input pool (consecutive in ``cases()``), else each case alone."""
    if not interleave:
        return [[c] for c in todo]
    return [list(g) for _, g in itertools.groupby(todo, lambda c: (c.m, c.d, c.dtype, c.mu,
                                                                    c.mode))]


def graph_row(call: Callable, x: torch.Tensor, args, device: torch.device) -> dict:
    """The ``graph_*`` fields: the call captured as a CUDA graph, each replay timed; a provider
    that cannot be captured (or a CPU run) gives the reason instead."""
    if device.type != "cuda":
        return {"graph_status": "skipped", "graph_reason": "CUDA graphs need a CUDA device"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = common.time_graph(call, x, device, warmup=max(2, args.warmup),
                                      reps=args.reps)
    except Exception as exc:  # noqa: BLE001 - not capturable is a result
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception as sticky:  # noqa: BLE001
            return {"graph_status": "error",
                    "graph_reason": f"{_error(exc)}; then the device failed: {_error(sticky)}"}
        return {"graph_status": "error", "graph_reason": _error(exc)}
    stats = common.summary(times)
    return {"graph_status": "ok", "graph_reason": None, "graph_times_ms": times,
            "graph_reps": len(times), **{f"graph_{k}": v for k, v in stats.items()}}


def run(args) -> tuple[Path, Path]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu (or --quick)")
    for name in ("cache_size_limit", "recompile_limit"):  # one compiled fn serves every shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.small_products:
        os.environ[_small.PRODUCTS_ENV] = args.small_products
    meta = common.environment(device) | {
        "small_products": _small.products_choice(device.type, "exact"),
        "small_products_series": _small.products_choice(device.type, "series")}
    cpu = device.type == "cpu"
    calib = roofline.calibrate(device, args.dtype, gemm_n=512 if args.quick else (
        1024 if cpu else 8192), copy_mib=32 if cpu else 1024, reps=10 if cpu else 20)
    todo = cases(args)
    rows, inputs, key = [], None, None
    config = {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")}
    payload = {"schema": SCHEMA, "schema_version": common.SCHEMA_VERSION, "meta": meta,
               "config": config, "calibration": calib}
    stem = ("uniformity" if args.loss == "uniformity" else "entropy") + (
        "-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    stem, folder = f"{stem}-{common.timestamp()}", common.result_dir(args.out, device)

    def write(complete: bool):
        """(Re)write the files: after every shape (``complete`` False: a killed run keeps
        what finished) and at the end."""
        return common.write_results(folder, stem, payload | {"complete": complete}, rows,
                                    CSV_FIELDS)

    bar = None if args.no_progress else _tqdm(len(todo))
    start = time.monotonic()
    for group in groups(todo, args.interleave):
        ready = []
        for case in group:
            if args.time_limit is not None and time.monotonic() - start > args.time_limit:
                ready.append(Prepared(base_row(case, args, calib, None) | {
                    "status": "skipped", "reason": f"time limit: --time-limit "
                                                   f"{args.time_limit:g} s was reached before "
                                                   f"this case"}))
                continue
            if (case.m, case.d, case.dtype, case.mu) != key:
                if rows:
                    write(False)
                inputs = None  # free the previous pool first
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                key = (case.m, case.d, case.dtype, case.mu)
                inputs = Inputs(case.m, case.d, case.dtype, device, args.seed, case.mu,
                                args.features)
            if bar is not None:
                bar.set_postfix_str(f"{case.provider} {case.estimator} {case.m}x{case.d} "
                                    f"{case.dtype} {case.mode}")
            ready.append(prepare(case, inputs, args, device, calib))
        if bar is not None and len(ready) > 1:
            bar.set_postfix_str(f"{len(ready)} cases round-robin {case.m}x{case.d} "
                                f"{case.dtype} {case.mode}")
        rows += time_group(ready, args, device)
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    return write(True)


def _tqdm(total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc="entropy bench", unit="case", dynamic_ncols=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    saved = os.environ.get(_small.PRODUCTS_ENV)
    try:
        json_path, csv_path = run(args)
    finally:  # an in-process caller (make gpu-check's smoke) keeps its own setting
        if saved is None:
            os.environ.pop(_small.PRODUCTS_ENV, None)
        else:
            os.environ[_small.PRODUCTS_ENV] = saved
    print(f"wrote {json_path}\nwrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
