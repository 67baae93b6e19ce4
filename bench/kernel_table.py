"""Where the time of one regulariser call goes: a per-provider kernel table from torch.profiler.

For each of our providers (``mmae_fast.tcr_loss(x, mu, estimator=..., backend=...)``) at each
shape, after warm-up:

* ``cpu_enqueue_ms``: host time of one call without synchronising (``perf_counter``, median of
  ``--calls``; on a GPU the time Python and the launches take, unless the call synchronises);
* under ``torch.profiler`` (``--calls`` calls, each in a ``record_function`` range):
  ``kernels_per_call`` (GPU items: kernels, memcpy, memset), ``gpu_ms_per_call`` (their summed
  durations / calls), ``cpu_profiled_ms_per_call`` (the ranges' host time, with profiler
  overhead) and ``top`` — the five largest items by GPU time per call, with launches per call.

On the CPU (the smoke run) the "kernels" are the leaf operators the profiler records on the host.

    python bench/kernel_table.py --device cuda --shapes 1024x1024@3 65536x1024@1
    python bench/kernel_table.py --device cpu --shapes 64x32@1 --providers reference

Writes ``<out>/<device slug>/kernels-<time>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import common, entropy

SCHEMA = "mmae_fast.bench.kernels"
ANNOTATION = "mmae_fast.tcr_call"
TOP = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--shapes", nargs="+", type=entropy.parse_shape, metavar="MxD[@MU]",
                   default=[entropy.parse_shape(s) for s in ("1024x1024@3", "4096x768@3",
                                                             "16384x768@1", "65536x1024@1")])
    p.add_argument("--mu", type=float, default=1.0, help="mu of shapes given without @MU")
    p.add_argument("--providers", nargs="+", choices=entropy.OURS,
                   help="default: cuda triton (CPU: reference)")
    p.add_argument("--estimator", nargs="+", choices=entropy.ESTIMATORS,
                   default=["exact", "series"])
    p.add_argument("--dtype", choices=list(common.DTYPES), default="bf16")
    p.add_argument("--mode", choices=entropy.MODES, default="fwd+bwd")
    p.add_argument("--tol", type=float, default=1e-4, help="series tolerance")
    p.add_argument("--calls", type=int, default=10, help="profiled (and host-timed) calls")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no case after S seconds; the rest are written as skipped")
    p.add_argument("--out", default=str(common.REPO_ROOT / "bench" / "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.calls < 1:
        p.error("--calls must be >= 1")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.providers is None:
        args.providers = ["cuda", "triton"] if args.device == "cuda" else ["reference"]
    args.shapes = [(m, d, args.mu if mu is None else mu) for m, d, mu in args.shapes]
    return args


def _duration_ms(event) -> float:
    return event.time_range.elapsed_us() / 1e3


def device_items(events, device: torch.device) -> list:
    """The profiler events that are the device's work: GPU kernels / memcpy / memset on CUDA
    (user annotations excluded); on the CPU the leaf operators inside our annotation."""
    if device.type == "cuda":
        return [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                and not getattr(e, "is_user_annotation", False) and e.name != ANNOTATION]
    inside = []
    for top in (e for e in events if e.name == ANNOTATION
                and e.device_type == torch.autograd.DeviceType.CPU):
        stack = list(top.cpu_children)
        while stack:
            e = stack.pop()
            if e.cpu_children:
                stack += e.cpu_children
            else:
                inside.append(e)
    return inside


def profile_case(call, x, device: torch.device, calls: int, warmup: int) -> dict:
    """The kernel-table fields of ``call(x)`` (see the module doc)."""
    for _ in range(warmup):
        call(x)
    common.synchronize(device)
    host = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call(x)
        host.append((time.perf_counter() - t0) * 1e3)
        common.synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            with torch.profiler.record_function(ANNOTATION):
                call(x)
        common.synchronize(device)
    events = prof.events()
    ranges = [_duration_ms(e) for e in events if e.name == ANNOTATION
              and e.device_type == torch.autograd.DeviceType.CPU]
    items = device_items(events, device)
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in items:
        by_name[e.name].append(_duration_ms(e))
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:TOP]
    return {"kernels_per_call": len(items) / calls,
            "gpu_ms_per_call": sum(map(sum, by_name.values())) / calls,
            "cpu_enqueue_ms": statistics.median(host), "cpu_enqueue_times_ms": host,
            "cpu_profiled_ms_per_call": statistics.median(ranges) if ranges else None,
            "top": [{"name": name, "ms_per_call": sum(t) / calls, "launches_per_call":
                     len(t) / calls} for name, t in top]}


def run(args) -> tuple[Path, Path]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    meta = common.environment(device)
    rows, start = [], time.monotonic()
    payload = {"schema": SCHEMA, "schema_version": common.SCHEMA_VERSION, "meta": meta,
               "config": {k: v for k, v in vars(args).items() if k != "out"}, "results": rows}
    folder = common.result_dir(args.out, device)
    stem = "kernels" + (f"-{args.tag}" if args.tag else "") + f"-{common.timestamp()}"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"

    def write(complete: bool) -> None:
        """(Re)write both files: after every case (a killed run keeps what finished), at the end."""
        json_path.write_text(json.dumps(payload | {"complete": complete}, indent=1) + "\n")
        md_path.write_text(markdown(payload))

    for m, d, mu in args.shapes:
        gen = torch.Generator().manual_seed(args.seed)
        x = entropy.features(m, d, "anisotropic", gen).to(device, common.DTYPES[args.dtype])
        x.requires_grad_(args.mode == "fwd+bwd")
        for provider in args.providers:
            for estimator in args.estimator:
                case = entropy.Case(provider, estimator, m, d, args.dtype, args.mode, mu)
                row = {"provider": provider, "estimator": estimator, "m": m, "d": d, "mu": mu,
                       "dtype": args.dtype, "mode": args.mode, "calls": args.calls,
                       "status": "ok", "reason": None}
                if args.time_limit is not None and time.monotonic() - start > args.time_limit:
                    rows.append(row | {"status": "skipped", "reason": f"time limit: "
                                       f"--time-limit {args.time_limit:g} s was reached"})
                    continue
                reason = entropy.unavailable(case, x)
                if reason is not None:
                    rows.append(row | {"status": "skipped", "reason": reason})
                    continue
                call = entropy.make_call(entropy.loss_fn(case, mu, args.tol), args.mode)
                try:
                    row.update(profile_case(call, x, device, args.calls, args.warmup))
                except Exception as exc:  # noqa: BLE001 - a failing provider is a result
                    row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
                rows.append(row)
                print(format_row(row), flush=True)
                write(False)
        del x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write(True)
    return json_path, md_path


def format_row(row: dict) -> str:
    head = f"{row['provider']}·{row['estimator']} {row['m']}x{row['d']} μ{row['mu']:g}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} ({row['reason']})"
    return (f"{head}: {row['kernels_per_call']:.3g} kernels, GPU {row['gpu_ms_per_call']:.3g} ms,"
            f" CPU enqueue {row['cpu_enqueue_ms']:.3g} ms per call")


def markdown(payload: dict) -> str:
    """The kernel table as markdown: one line per case, its five largest items below it."""
    meta = payload["meta"]
    git = meta.get("git") or {}
    out = [f"# Kernel table — {meta['device_name']}\n",
           f"torch {meta['torch']} · CUDA {meta.get('cuda')} · triton {meta.get('triton')} · "
           f"commit {(git.get('commit') or 'unknown')[:10]}{' (dirty)' if git.get('dirty') else ''}"
           f" · {meta['date']} · {payload['config']['dtype']}, {payload['config']['mode']}, "
           f"{payload['config']['calls']} profiled calls\n",
           *(["On the CPU the \"kernels\" are the host's leaf operators and their time.\n"]
             if meta.get("device") == "cpu" else []),
           "| provider | m × d, μ | kernels / call | GPU ms / call | CPU enqueue ms / call | "
           "five largest (ms / call × launches / call) |",
           "|---|---|---|---|---|---|"]
    for r in payload["results"]:
        shape = f"{r['m']}×{r['d']}, {r['mu']:g}"
        name = f"{r['provider']}·{r['estimator']}"
        if r["status"] != "ok":
            out.append(f"| {name} | {shape} | {r['status']}: {r['reason']} | | | |")
            continue
        top = "<br>".join(f"`{t['name'][:90]}` {t['ms_per_call']:.3g} × "
                          f"{t['launches_per_call']:.3g}" for t in r["top"])
        out.append(f"| {name} | {shape} | {r['kernels_per_call']:.3g} | "
                   f"{r['gpu_ms_per_call']:.3g} | {r['cpu_enqueue_ms']:.3g} | {top} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    json_path, md_path = run(parse_args(argv))
    print(f"wrote {json_path}\nwrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
