"""A cost model of the staged TCR op usable without a GPU: per stage, a predicted time from the
counted work — products (size, precision), O(n²) passes and reductions, launches — and the
rates of a device. Every figure it prints is a **prediction**, labelled as such.

Rates:

* ``h100``: measured, bench/results/cuda-nvidia-h100-80gb-hbm3/primitives-20261126T1456Z.txt
  (n×n products, Cholesky, triangular solve, inverse, small element-wise ops, µs per call, CUDA
  events) and the calibration of entropy-20261126T145235Z.json (8192² GEMM TFLOP/s, copy GB/s);
* ``a100``: public rates for an A100-80GB (GEMMul8's published results): 1024³
  products fp64 167 µs, fp32 169 µs, tf32 50 µs, int8 27 µs; peak bf16 312 TFLOP/s and 2.0 TB/s
  (NVIDIA's data sheet). Factorisations and small passes were not measured there: they are the
  H100 times times the fp64 product ratio 167/44 (factorisations) or the bandwidth ratio
  (passes) — an assumption, printed as such.

Per-launch cost: ``launch_us`` (eager: the one-element op of the primitives file, 12 µs) for the
eagerly timed stages (gram, grad), ``graph_launch_us`` (an assumption, 3 µs) inside the CUDA
graph of the small side. Products of size n scale as n³ from the nearest measured size (for
tensor-core formats not below the fastest measured one: at n ≤ 1024 they are launch-bound).

    python bench/cost_model.py                 # prediction vs the stored H100 stage table
    python bench/cost_model.py --device a100   # the same stages predicted on an A100

``compare(stages_csv)`` gives, per row of a stored ``bench/stages.py`` table, predicted and
measured times and the relative error (tests/tooling/test_cost_model.py checks its bound).

The products-only small side (``MMAE_FAST_SMALL_PRODUCTS``, ``small_side._products_side``):
``products_side_work`` counts its n×n×n products from the package's own plans
(``moments.plan``, ``doubling.complement_steps_for``, ``small_side._s_weights`` /
``_weights``; tests/tooling/test_cost_model.py counts the calls the code makes) and the O(n²)
passes and small launches of its code; each product is one launch of a product kernel with the
element-wise recurrence in its epilogue (``mmae_fast/ops/tcr/triton/``), timed as
``product_us`` of its format (tf32x3: three TF32 products). ``products_small_side_us`` turns the
counts into µs; ``main`` prints it beside the float64 side for the target shapes on both
devices, with the whole op and the small-side target ``SMALL_TARGET_US`` (all predictions).
The stored output: ``bench/results/model/`` (``python bench/cost_model.py > FILE``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H100_DIR = ROOT / "bench" / "results" / "cuda-nvidia-h100-80gb-hbm3"
H100_STAGES = H100_DIR / "stages-20261126T145300Z.csv"


@dataclasses.dataclass(frozen=True)
class Rates:
    """One device's rates. product_us[(n, fmt)]: an n×n×n product; factor_us[(name, n)]:
    chol64, trsm64, cinv64, chol32 at n; pass_us_per_mib: a memory-bound pass; launch_us:
    eager cost of one small op; gemm_tflops[fmt]: large-GEMM rate (m×d side); copy_gbps."""
    name: str
    source: str
    product_us: dict
    factor_us: dict
    pass_us_per_mib: float
    launch_us: float
    graph_launch_us: float
    gemm_tflops: dict
    copy_gbps: float


H100 = Rates(
    name="h100", source="measured: primitives-20261126T1456Z.txt, entropy-20261126T145235Z.json",
    product_us={(768, "fp64"): 27, (1024, "fp64"): 44, (768, "fp32"): 39, (1024, "fp32"): 58,
                (768, "tf32"): 19, (1024, "tf32"): 18, (768, "bf16"): 17, (1024, "bf16"): 19},
    factor_us={("chol64", 768): 337, ("chol64", 1024): 447, ("trsm64", 768): 372,
               ("trsm64", 1024): 505, ("cinv64", 768): 625, ("cinv64", 1024): 842,
               ("chol32", 768): 268, ("chol32", 1024): 358},
    # axpy at n = 1024 in float64: 16 µs for 3 x 8 MiB (read two, write one), minus a launch
    pass_us_per_mib=(16 - 12) / 24.0, launch_us=12.0, graph_launch_us=3.0,
    gemm_tflops={"bf16": 796.7, "fp32": 52.0}, copy_gbps=3010.0)

_A100_FACTOR = 167.0 / 44.0  # the fp64 product ratio, applied to the factorisations
A100 = Rates(
    name="a100", source="public: GEMMul8's published results, NVIDIA data sheet; factorisations "
                        "and passes scaled from the H100 (assumption)",
    product_us={(1024, "fp64"): 167, (1024, "fp32"): 169, (1024, "tf32"): 50,
                (1024, "bf16"): 50},  # bf16 not in the public set: the tf32 time (an assumption)
    factor_us={(k, n): v * _A100_FACTOR for (k, n), v in H100.factor_us.items()},
    pass_us_per_mib=H100.pass_us_per_mib * 3010.0 / 2039.0, launch_us=12.0, graph_launch_us=3.0,
    gemm_tflops={"bf16": 312.0, "fp32": 19.5}, copy_gbps=2039.0)

DEVICES = {"h100": H100, "a100": A100}
#: a split product (x = hi + lo, three products, lo·lo dropped) in its base format
SPLIT = {"tf32x3": ("tf32", 3), "bf16x3": ("bf16", 3)}


def product_us(rates: Rates, n: int, fmt: str) -> float:
    """One n×n×n product in ``fmt`` (a split format: three products of its base)."""
    if fmt in SPLIT:
        base, count = SPLIT[fmt]
        return count * product_us(rates, n, base)
    sizes = sorted(s for s, f in rates.product_us if f == fmt)
    ref = min(sizes, key=lambda s: abs(math.log(s / n)))
    t = rates.product_us[(ref, fmt)] * (n / ref) ** 3
    floor = min(rates.product_us[(size, fmt)] for size in sizes)  # launch-bound: the fastest
    return max(t, floor) if fmt in ("tf32", "bf16") else t


def factor_us(rates: Rates, name: str, n: int) -> float:
    sizes = sorted(s for k, s in rates.factor_us if k == name)
    ref = min(sizes, key=lambda s: abs(math.log(s / n)))
    return rates.factor_us[(name, ref)] * (n / ref) ** 3


def pass_us(rates: Rates, n: int, bytes_per: int = 8, arrays: int = 3, graph: bool = True) -> float:
    """One O(n²) element-wise pass or reduction over ``arrays`` n×n arrays, plus its launch."""
    mib = arrays * n * n * bytes_per / 2 ** 20
    return rates.pass_us_per_mib * mib + (rates.graph_launch_us if graph else rates.launch_us)


def md_side_us(rates: Rates, m: int, d: int, fmt: str, width: int, launches: int) -> float:
    """An m×d×width GEMM on the feature side (gram: width n, grad: the split product 2n) plus
    reading/writing the rows (bf16: 2 bytes) and ``launches`` eager launches."""
    n = min(m, d)
    flops = 2.0 * m * d * width
    bytes_ = 3 * m * d * 2 + 4 * n * n
    return (flops / (rates.gemm_tflops[fmt] * 1e6) + bytes_ / (rates.copy_gbps * 1e3)
            + launches * rates.launch_us)


#: Launches of the gram stage (row statistics, the product) and of the grad stage (the
#: coefficient product, the split GEMM, the projection), both backends.
GRAM_LAUNCHES, GRAD_LAUNCHES = 2, 3
#: The O(n²) passes of the current small side outside its products and factorisations
#: (mmae_fast/ops/tcr/small_side.py: the float64 copy, scale and diagonal shift, the log-diagonal
#: sum, the NaN guard, the radial shift, qscale's max, the division and the cast back).
SMALL_PASSES = 10


def small_side_us(rates: Rates, n: int, estimator: str, degree: int) -> dict:
    """The small side as it is (float64, one CUDA graph): {part: µs}."""
    if estimator == "exact":
        parts = {"chol64": factor_us(rates, "chol64", n), "trsm64": factor_us(rates, "trsm64", n),
                 "products": product_us(rates, n, "fp64")}
    else:
        q = max(1, math.ceil(degree / 2))
        # basis T_2..T_q, the derivative's product; the fused combinations read the q+1 basis
        parts = {"products": (q - 1 + 1) * product_us(rates, n, "fp64"),
                 "combine": 2 * pass_us(rates, n, arrays=q + 1)}
    parts["passes"] = SMALL_PASSES * pass_us(rates, n)
    return parts


def doubling_small_side_us(rates: Rates, n: int, kappa: float, fmt: str, target: float = 1e-7,
                           fused_passes: int = 4) -> dict:
    """The doubling small side: the inverse by 2(K-1) doubling products in ``fmt``
    (mmae_fast/ops/tcr/doubling.py), the log-determinant from the float64 Cholesky (what the
    1e-5 contract allows), element-wise work in ``fused_passes`` passes (epilogues)."""
    from mmae_fast.ops.tcr import doubling

    steps = doubling.steps_for(kappa, target)
    return {"steps": steps, "products": 2 * (steps - 1) * product_us(rates, n, fmt),
            "chol64": factor_us(rates, "chol64", n),
            "passes": fused_passes * pass_us(rates, n, bytes_per=4)}


def md_stages_us(rates: Rates, m: int, d: int) -> tuple[float, float]:
    """``(gram, grad)`` µs of the m×d side (bf16 operands), the same for either small side."""
    n = min(m, d)
    return (md_side_us(rates, m, d, "bf16", n, GRAM_LAUNCHES),
            md_side_us(rates, m, d, "bf16", 2 * n, GRAD_LAUNCHES))


@dataclasses.dataclass(frozen=True)
class Pass:
    """``launches`` O(n²) passes of the products-only small side outside its products, each
    over ``arrays`` n×n arrays of ``bytes_per`` bytes (read and written)."""
    what: str
    launches: int
    arrays: int
    bytes_per: int = 4


def products_side_work(kappa: float, estimator: str, degree: int,
                       need_grad: bool = True) -> dict:
    """The work of ``small_side._products_side`` and ``small_side``'s tail at (kappa, degree):
    {"products": n×n×n products (each one launch, its element-wise recurrence in the epilogue),
    "passes": [Pass, ...] (the O(n²) element-wise ops and reductions between them), "small":
    launches over O(n) or O(1) numbers (diagonals, the host-weight dots, the scalars)}.

    Products: ``small_side.product_count`` (the package's plans). Passes as the code writes
    them: ``y = c·G``; exact: ``T_0``, ``T_1``, the stacked baby basis, its float64 copy and its
    moments ``<Y, T_k>``, per giant its float64 copy and one moment GEMV, the complement's
    ``U_1``;
    series / Taylor: the first basis matrices, the stack, the Frobenius products of the
    high traces, the two derivative combinations; with the gradient the float64 cast, the
    radial shift's max, the division and the cast back (``small_side.small_side``)."""
    from mmae_fast.ops.tcr import moments, small_side

    passes = [Pass("y = c·G", 1, 2)]
    small = 2  # the value's negation and cast
    products = small_side.product_count(estimator, kappa, degree, need_grad)
    if estimator == "exact":
        p = moments.plan(moments.exact_degree(kappa))
        passes += [Pass("T_0 = I, T_1 = beta·Y - I", 2, 2),
                   Pass("stack T_0..T_s", 1, 2 * (p.s + 1)),
                   Pass("the stack in float64", 1, 3 * (p.s + 1)),  # 4-byte reads, 8-byte writes
                   Pass("Y in float64, <Y, T_0..T_s>", 2, p.s + 4, 8),
                   Pass("H_j in float64 per giant", p.giants, 3),
                   Pass("<H_j, T_1..T_s> per giant", p.giants, p.s + 1, 8)]
        small += 1 + p.giants  # the weights' dot, tr H_j
        if need_grad:
            passes.append(Pass("U_1 = w_0·alpha²·Y", 1, 2))
    else:
        if estimator == "series":  # a list of S_k, stacked after the basis
            w = small_side._s_weights(float(kappa), int(degree), -1.0)
            outer = any(w.w_outer)
            highs = [Pass("stack S_0..S_q", 1, 2 * (w.q + 1)),
                     Pass("<S_j, S_l>", 1, 2 * len(w.pairs))]
        else:  # the powers written into one buffer
            w = small_side._weights("taylor", 0.0, int(degree), -1.0)
            outer = w.has_outer
            highs = [Pass("<Y^a, Y^a>", 1, len(w.w_self)),
                     Pass("<Y^a, Y^(a+1)>", 1, 2 * len(w.w_cross))]
        passes.append(Pass("B_0, B_1", 2, 2))
        passes += [h for h in highs if h.arrays]
        small += 2  # the diagonal sums, the weights' dot
        if need_grad:
            passes.append(Pass("Σ w_inner B_k", 1, w.q + 2))
            if outer:
                passes.append(Pass("Σ w_outer B_r", 1, w.q + 2))
    if need_grad:
        passes += [Pass("float64 cast", 1, 2, 8), Pass("max |Q'|", 1, 1, 8),
                   Pass("Q'/qscale", 1, 2, 8), Pass("cast back", 1, 2, 6)]
        small += 5  # tr, the diagonal shift, the clamp, qinfo's stack and cast
    return {"products": products, "passes": [x for x in passes if x.launches], "small": small}


def symmetric_fraction(n: int) -> float:
    """The share of an n×n product's output tiles the symmetric kernel computes,
    ``nt(nt + 1)/2 / nt²`` with ``nt = ceil(n / block)`` and the block of
    ``mmae_fast/ops/tcr/triton/small_kernel.py``'s rule (``choose``) on a GPU."""
    from mmae_fast.ops.tcr.triton import small_kernel

    block = 64 if n >= small_kernel.LARGE_N else 32
    nt = -(-n // block)
    return nt * (nt + 1) / 2 / (nt * nt)


def products_small_side_us(rates: Rates, n: int, kappa: float, estimator: str, degree: int,
                           fmt: str = "tf32x3", need_grad: bool = True) -> dict:
    """The predicted products-only small side (one CUDA graph) at n: ``products_side_work``'s
    counts, products of ``fmt`` (``product_us``; tf32x3 times ``symmetric_fraction``, not below
    one TF32 product), passes (``pass_us``) and small launches (``graph_launch_us``). {"products", "launches", "passes", "small", "products_us",
    "passes_us", "small_us", "us", "label"}."""
    work = products_side_work(kappa, estimator, degree, need_grad)
    each = product_us(rates, n, fmt)
    if fmt == "tf32x3":  # the Triton kernel's symmetric mode: the tiles on and above the diagonal
        each = max(product_us(rates, n, "tf32"), symmetric_fraction(n) * each)
    prod = work["products"] * each
    passes = sum(x.launches * pass_us(rates, n, bytes_per=x.bytes_per, arrays=x.arrays)
                 for x in work["passes"])
    small = work["small"] * rates.graph_launch_us
    n_passes = sum(x.launches for x in work["passes"])
    return {"products": work["products"], "passes": n_passes, "small": work["small"],
            "launches": work["products"] + n_passes + work["small"], "products_us": prod,
            "passes_us": passes, "small_us": small, "us": prod + passes + small,
            "label": f"prediction ({rates.name} rates, {fmt} products)"}


def predict_row(rates: Rates, row: dict) -> dict:
    """Predicted gram / small (graph) / grad / call ms of one stage-table row."""
    m, d, degree = int(row["m"]), int(row["d"]), int(row["degree"])
    n = min(m, d)
    gram, grad = md_stages_us(rates, m, d)
    small = sum(small_side_us(rates, n, row["estimator"], degree).values())
    return {"gram_ms": gram / 1e3, "small_graph_ms": small / 1e3, "grad_ms": grad / 1e3,
            "call_graph_ms": (gram + small + grad) / 1e3}


def compare(path: Path = H100_STAGES, rates: Rates = H100) -> list[dict]:
    """Per row of a stored stage table: the case, and per stage (predicted, measured, rel_err)."""
    out = []
    with open(path) as fh:
        rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
    for row in rows:
        pred = predict_row(rates, row)
        entry = {k: row[k] for k in ("backend", "estimator", "m", "d", "degree")}
        for key, p in pred.items():
            meas = float(row[key])
            entry[key] = (p, meas, abs(p - meas) / meas)
        out.append(entry)
    return out


#: The project's target for the small side: at most 80 µs at n = 1024, κ 4 (fwd+bwd).
SMALL_TARGET_US, TARGET_N, TARGET_KAPPA = 80.0, 1024, 4.0
#: The target shapes (m, d, mu): κ 4 and 17 of the stored stage table, κ 65 and 257 at n = 1024.
TARGET_SHAPES = ((1024, 1024, 3.0), (4096, 768, 3.0), (65536, 1024, 1.0), (65536, 1024, 4.0))
H100_ENTROPY = H100_DIR / "entropy-20261126T145235Z.csv"


def official_measured_ms(path: Path = H100_ENTROPY) -> dict:
    """{(m, d, mu): median ms} of the official eager loss (bf16, fwd+bwd) in a stored
    ``bench/entropy.py`` CSV: measured, not predicted (the model has no LU rate)."""
    with open(path, newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        return {(int(r["m"]), int(r["d"]), float(r["mu"])): float(r["median_ms"]) for r in rows
                if r["provider"] == "official" and r["dtype"] == "bf16"
                and r["mode"] == "fwd+bwd" and r["status"] == "ok"}


def target_rows(fmt: str = "tf32x3") -> list[dict]:
    """Per target shape, estimator ("exact", "series") and device: the predicted small side on
    the float64 side (``small_side_us``) and on the products side (``products_small_side_us``),
    and the whole op (m×d side + small side) with each; fwd+bwd, series at its default degree."""
    from mmae_fast import reference, series

    out = []
    for m, d, mu in TARGET_SHAPES:
        n, kappa = min(m, d), series.kappa(mu, m, d)
        for estimator in ("exact", "series"):
            degree = reference.default_degree(estimator, kappa, reference.SERIES_TOL)
            for rates in (H100, A100):
                f64 = sum(small_side_us(rates, n, estimator, degree).values())
                prod = products_small_side_us(rates, n, kappa, estimator, degree, fmt)
                gram, grad = md_stages_us(rates, m, d)
                out.append({"m": m, "d": d, "mu": mu, "n": n, "kappa": kappa,
                            "estimator": estimator, "degree": degree, "device": rates.name,
                            "float64_us": f64, "products": prod, "op_float64_us": gram + f64 + grad,
                            "op_products_us": gram + prod["us"] + grad})
    return out


def print_targets(fmt: str = "tf32x3") -> None:
    """The target-shape table, the official loss where measured, and the small-side target."""
    official = official_measured_ms()
    print(f"# PREDICTION: the small side, float64 side (Cholesky / float64 products, "
          f"{SMALL_PASSES} passes) against the products-only side ({fmt}: one launch per product, "
          f"plus passes and small launches), fwd+bwd; op = gram + small side + grad; official: "
          f"MEASURED on the H100 ({H100_ENTROPY.name}), not predicted")
    print("m d mu kappa n estimator degree device | float64 side us | products side: products "
          "launches us | op float64 ms | op products ms | official ms")
    rows = target_rows(fmt)
    for r in rows:
        meas = official.get((r["m"], r["d"], r["mu"])) if r["device"] == "h100" else None
        p = r["products"]
        print(f"{r['m']} {r['d']} {r['mu']:g} {r['kappa']:g} {r['n']} {r['estimator']} "
              f"{r['degree']} {r['device']} | {r['float64_us']:.0f} | {p['products']} "
              f"{p['launches']} {p['us']:.0f} | {r['op_float64_us'] / 1e3:.3f} | "
              f"{r['op_products_us'] / 1e3:.3f} | "
              + (f"{meas:.3f} (measured)" if meas is not None else "-"))
    for r in rows:
        if r["n"] != TARGET_N or r["kappa"] != TARGET_KAPPA:
            continue
        p = r["products"]
        best = min(r["float64_us"], p["us"])
        rest = p["passes_us"] + p["small_us"]
        room = (SMALL_TARGET_US - rest) / p["products"]
        need = (f"would need <= {room:.1f} us per product" if room > 0 else
                f"{p['passes']} passes and {p['small']} small launches alone: {rest:.0f} us")
        print(f"# TARGET small side <= {SMALL_TARGET_US:g} us at n = {TARGET_N}, kappa "
              f"{TARGET_KAPPA:g}: {r['device']} {r['estimator']}: predicted float64 side "
              f"{r['float64_us']:.0f} us, products side {p['us']:.0f} us ({p['products']} "
              f"{fmt} products {p['products_us']:.0f} us): "
              f"{'met' if best <= SMALL_TARGET_US else 'NOT MET'} (PREDICTION; products side: "
              f"{need}; the model's {fmt} product {p['products_us'] / p['products']:.0f} us "
              f"in the symmetric kernel)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=tuple(DEVICES), default="h100")
    p.add_argument("--stages", type=Path, default=H100_STAGES,
                   help="a bench/stages.py CSV to compare with (default: the stored H100 one)")
    args = p.parse_args(argv)
    rates = DEVICES[args.device]
    if not args.stages.is_file():
        print(f"cost_model: --stages {args.stages} is not a file", file=sys.stderr)
        return 2
    print(f"# PREDICTION, rates of {rates.name} ({rates.source})")
    rows = compare(args.stages, rates)
    keys = ("gram_ms", "small_graph_ms", "grad_ms", "call_graph_ms")
    measured_on = "" if rates is H100 else " (measured on the H100: not this device)"
    print(f"# predicted / measured{measured_on} ms, relative error")
    print("backend estimator m d degree | " + " | ".join(keys))
    for r in rows:
        cells = [f"{r[k][0]:.3f}/{r[k][1]:.3f} ({r[k][2]:.0%})" for k in keys]
        print(f"{r['backend']} {r['estimator']} {r['m']} {r['d']} {r['degree']} | "
              + " | ".join(cells))
    if rates is H100:
        for k in keys:
            errs = [r[k][2] for r in rows]
            print(f"# {k}: mean relative error {sum(errs) / len(errs):.0%}, worst {max(errs):.0%}")
    print("# PREDICTION: the doubling small side (2(K-1) products, float64 Cholesky for the "
          "log-determinant, 4 fused passes), n = 1024")
    for kappa in (4.0, 65.0, 257.0):
        for fmt in ("fp64", "tf32x3", "bf16x3"):
            parts = doubling_small_side_us(rates, 1024, kappa, fmt)
            total = parts["products"] + parts["chol64"] + parts["passes"]
            print(f"kappa {kappa:g} {fmt}: K = {parts['steps']}, products "
                  f"{parts['products']:.0f} us + chol64 {parts['chol64']:.0f} us + passes "
                  f"{parts['passes']:.0f} us = {total / 1e3:.3f} ms")
    print_targets()
    return 0


if __name__ == "__main__":
    sys.exit(main())
