"""The roofline floor of the TCR regulariser: a cost model and the machine rates it is divided by.

``tcr_cost`` is the one place the FLOP and byte counts are written down. For features (m, d),
``N = min(m, d)`` (the Gram is built on the smaller side), element size ``s`` bytes::

    forward   gram   2·m·d·N                     (Z -> ZᵀZ or ZZᵀ, counted as a full GEMM,
                                                  at the input dtype's matrix rate)
              small  exact:  N³/3                (Cholesky of I + cG)
                     series: (ceil(D/2) - 1)·2N³ (matrix products T_2..T_ceil(D/2); the other
                     taylor: (ceil(p/2) - 1)·2N³  traces come from Frobenius products, O(N²))
    backward  gram   2·m·d·N                     (dZ = -2c·Z·P'(cG), or P'(cG)·Z)
              small  exact:  2N³/3               (the inverse from the Cholesky factor)
                     series / taylor: 2N³        (one product: P' has degree D-1 <= 2·ceil(D/2)-1,
                                                  so P' = A + T_h·B with A, B combinations of the
                                                  matrices the forward already built)
    bytes     fwd:   m·d·s + 8·N²·(3 per small product, 2 for Cholesky/inverse, 1 for G)
              fwd+bwd: 3·m·d·s (read Z twice, write dZ) + the small-side traffic of both passes

The O(m·d) work of normalising and of the chain rule through it is left out (memory-bound, and
counted in the bytes). The small side runs at the float64 rate with 8-byte elements (every
backend computes it in float64: ``mmae_fast/ops/tcr/small_side.py``). The floor is
``max(gram/rate[dtype] + small/rate[fp64], bytes/bandwidth)``; launch
latency is measured beside it but not added. A kernel that exploits the Gram's symmetry (SYRK,
half the ``gram`` FLOPs) may beat this floor: the fraction is then above 1.
"""
from __future__ import annotations

import math

import torch

from . import common

#: the small side's dtype (float64 on every backend) and the rates calibrate() measures
SMALL_SIDE = "fp64"
RATE_DTYPES = {**common.DTYPES, SMALL_SIDE: torch.float64}


def small_products(estimator: str, degree: int) -> int:
    """Number of N x N matrix products the forward pass of ``estimator`` needs."""
    if estimator in ("exact", "uniformity"):
        return 0
    return max(0, math.ceil(degree / 2) - 1)


def tcr_cost(m: int, d: int, estimator: str, degree: int, mode: str, itemsize: int) -> dict:
    """FLOPs (split by the rate they run at) and bytes of one TCR call; see the module doc."""
    n = min(m, d)
    passes = 2 if mode == "fwd+bwd" else 1
    gram = 2.0 * m * d * n * passes
    k = small_products(estimator, degree)
    if estimator == "uniformity":  # the small side is element-wise: ||G||², Q = 4G/M² + alpha·I
        small_fwd, small_bwd = 2.0 * n * n, 2.0 * n * n
        small_bytes_fwd, small_bytes_bwd = 4.0 * n * n, 4.0 * n * n * 2
    elif estimator == "exact":
        small_fwd, small_bwd = n**3 / 3.0, 2.0 * n**3 / 3.0
        small_bytes_fwd, small_bytes_bwd = 8.0 * n * n * (1 + 2), 8.0 * n * n * 2
    else:
        small_fwd, small_bwd = 2.0 * n**3 * k, 2.0 * n**3
        small_bytes_fwd, small_bytes_bwd = 8.0 * n * n * (1 + 3 * k), 8.0 * n * n * 3
    small = small_fwd + (small_bwd if passes == 2 else 0.0)
    bytes_ = (3.0 if passes == 2 else 1.0) * m * d * itemsize + small_bytes_fwd + (
        small_bytes_bwd if passes == 2 else 0.0)
    return {"gram_flops": gram, "small_flops": small, "bytes": bytes_}


def floor_ms(cost: dict, dtype: str, calib: dict) -> float | None:
    """``max(gram/rate[dtype] + small/rate[fp64], bytes/bandwidth)`` in milliseconds."""
    rates, bw = calib.get("gemm_tflops", {}), calib.get("copy_gbps")
    if not rates.get(dtype) or not rates.get(SMALL_SIDE) or not bw:
        return None
    compute = cost["gram_flops"] / (rates[dtype] * 1e12) + cost["small_flops"] / (
        rates[SMALL_SIDE] * 1e12)
    memory = cost["bytes"] / (bw * 1e9)
    return 1e3 * max(compute, memory)


def calibrate(device: torch.device, dtypes, *, gemm_n: int, copy_mib: int, reps: int) -> dict:
    """Measure, in this run, the square GEMM rate per dtype (TFLOP/s), the copy bandwidth
    (GB/s, read + write) and the latency of a one-element op (µs).

    The floor uses the best repetition (the highest rate seen: a floor must not be beaten by
    a lucky run); the medians are stored beside it ("..._median") to show the spread.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    out = {"gemm_n": gemm_n, "copy_mib": copy_mib, "reps": reps, "gemm_tflops": {},
           "gemm_tflops_median": {}}
    for name in sorted(set(dtypes) | {SMALL_SIDE}):
        dt = RATE_DTYPES[name]
        a = torch.randn(gemm_n, gemm_n, generator=gen).to(device, dt)
        b = torch.randn(gemm_n, gemm_n, generator=gen).to(device, dt)
        s = common.summary(common.time_calls(lambda x: x @ b, [a], device, warmup=3, reps=reps))
        out["gemm_tflops"][name] = 2.0 * gemm_n**3 / (s["min_ms"] * 1e-3) / 1e12
        out["gemm_tflops_median"][name] = 2.0 * gemm_n**3 / (s["median_ms"] * 1e-3) / 1e12
    src = torch.empty((copy_mib << 20) // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    s = common.summary(common.time_calls(dst.copy_, [src], device, warmup=3, reps=reps))
    moved = 2.0 * src.numel() * 4  # read + write
    out["copy_gbps"] = moved / (s["min_ms"] * 1e-3) / 1e9
    out["copy_gbps_median"] = moved / (s["median_ms"] * 1e-3) / 1e9
    one = torch.zeros(1, device=device)
    s = common.summary(common.time_calls(lambda x: x.add_(1.0), [one], device, warmup=5,
                                         reps=max(reps, 20)))
    out["launch_us"] = s["median_ms"] * 1e3
    return out
