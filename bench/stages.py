"""Per-stage timing of the staged TCR op (docs/staged.md): where a fwd+bwd call's time goes.

    python -m bench.stages [--shapes 1024x1024@3,4096x768@3] [--dtype bfloat16] [--reps 20]

For each backend (cuda, triton) x estimator (exact, series) x shape, CUDA events around each of:
stage 1 (``<backend>_gram``), stage 2 (``small_side``, replayed from its CUDA graph and eager),
stage 3 (``<backend>_grad``), and the whole ``tcr_loss`` fwd+bwd call (eager per call, and as
one captured CUDA graph). Writes ``stages-<time>.json/.csv`` under
``bench/results/<device>/``; prints a table. GPU only.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from bench import common


def _shape(text: str):
    dims, mu = text.split("@")
    m, d = (int(v) for v in dims.split("x"))
    return m, d, float(mu)


def _features(m, d, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    scale = (torch.arange(d, dtype=torch.float32) + 1.0) ** -0.5
    h = torch.randn(m, d, generator=g) * scale + 0.7 * torch.randn(1, d, generator=g)
    return h.to(device=device, dtype=dtype)


def run_case(backend, estimator, m, d, mu, dtype, device, reps):
    import mmae_fast
    from mmae_fast import backends, reference, series

    mod = backends._MODULES[backend]
    feature = d <= m
    h = _features(m, d, dtype, device)
    degree = reference.default_degree(estimator, series.kappa(mu, m, d))
    g, rinv = mod.gram(h, feature)
    colsum = g.new_empty((0,))
    args = (g, colsum, None, mu, m, d, feature, False, estimator, degree, 1e-4, True)  # one rank
    _, q, v, qinfo = torch.ops.mmae_fast.small_side(*args)
    one = torch.ones((), device=device)
    row = {"backend": backend, "estimator": estimator, "m": m, "d": d, "mu": mu,
           "dtype": str(dtype).removeprefix("torch."), "degree": degree}

    def timed(name, fn, graph=False):
        try:
            times = (common.time_graph(lambda _: fn(), None, device, warmup=3, reps=reps) if graph
                     else common.time_calls(lambda _: fn(), [None], device, warmup=3, reps=reps))
            row[name + "_ms"] = common.summary(times)["median_ms"]
            row[name + "_times"] = times
        except Exception as exc:  # noqa: BLE001 - record, go on
            row[name + "_ms"] = None
            row[name + "_error"] = f"{type(exc).__name__}: {exc}"[:300]

    timed("gram", lambda: mod.gram(h, feature))
    timed("small_graph", lambda: torch.ops.mmae_fast.small_side(*args))
    os.environ["MMAE_FAST_SMALL_SIDE_GRAPH"] = "0"
    timed("small_eager", lambda: torch.ops.mmae_fast.small_side(*args))
    os.environ.pop("MMAE_FAST_SMALL_SIDE_GRAPH")
    timed("grad", lambda: mod.grad(one * qinfo, h, rinv, q, v, feature, 1.0))
    x = h.clone().requires_grad_(True)

    def fwd_bwd():
        x.grad = None
        mmae_fast.tcr_loss(x, mu, estimator=estimator, backend=backend).backward()

    timed("call", fwd_bwd)
    timed("call_graph", fwd_bwd, graph=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024x1024@3,4096x768@3,16384x768@1,65536x1024@1")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--backends", default="cuda,triton")
    parser.add_argument("--estimators", default="exact,series")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.stages needs a CUDA device", file=sys.stderr)
        return 2
    import mmae_fast

    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    rows = []
    available = mmae_fast.available_backends()
    for text in args.shapes.split(","):
        m, d, mu = _shape(text)
        for backend in args.backends.split(","):
            if backend not in available:
                print(f"skip {backend}: not available")
                continue
            for estimator in args.estimators.split(","):
                row = run_case(backend, estimator, m, d, mu, dtype, device, args.reps)
                rows.append(row)
                cols = ("gram", "small_graph", "small_eager", "grad", "call", "call_graph")
                print(f"{m}x{d} mu{mu:g} {backend:6s} {estimator:6s} D={row['degree']:<3d} "
                      + " ".join(f"{c}={row.get(c + '_ms') or float('nan'):.3f}" for c in cols),
                      flush=True)
    payload = {"meta": common.environment(device), "args": vars(args)}
    out = common.result_dir(args.out, device)
    fields = ["backend", "estimator", "m", "d", "mu", "dtype", "degree", "gram_ms",
              "small_graph_ms", "small_eager_ms", "grad_ms", "call_ms", "call_graph_ms"]
    paths = common.write_results(out, f"stages-{common.timestamp()}", payload, rows, fields)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
