"""Shared helpers of the benchmarks: environment metadata, timing, result files.

Timing rules (both benches):

* GPU: one pair of CUDA events around every call, synchronised once at the end; the call's
  input rotates through a pool of copies larger than the L2 cache, so no repetition finds its
  input in cache. Warm-up calls (compilation, autotuning, allocator) come first and are dropped.
* CPU: ``time.perf_counter`` around every call, same rotation and warm-up.
* Round-robin (``time_round_robin``): several calls timed one repetition each per round, so a
  machine load that changes during the rounds reaches all of them alike (a shared CPU).
* CUDA graph (``time_graph``): the call captured once, one pair of events around every replay.
* Every repetition is stored; tables and plots use the median.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

#: Version of the result-file layout; bump when a field changes meaning.
SCHEMA_VERSION = 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- environment
def _run(cmd: Sequence[str]) -> str | None:
    """stdout of a command, stripped, or None if it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: torch.device) -> str:
    """Human-readable name of the device the benchmark runs on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(device: torch.device) -> str:
    """Folder name under ``bench/results/``: ``cuda-<gpu>`` or ``cpu-<cpu model>``."""
    return f"{device.type}-{slug(device_name(device))}"


def git_commit() -> dict:
    """The checkout's commit (None before the first commit) and whether the tree differs from
    it (changed or untracked files outside bench/results/). Where git cannot tell (a copy of
    the tree without .git), the environment variables ``MMAE_FAST_GIT_COMMIT`` and
    ``MMAE_FAST_GIT_DIRTY`` (0/1) stand in, and ``source`` says so."""
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--", ".", ":!bench/results"])
    if commit is None and os.environ.get("MMAE_FAST_GIT_COMMIT"):
        dirty = os.environ.get("MMAE_FAST_GIT_DIRTY")
        return {"commit": os.environ["MMAE_FAST_GIT_COMMIT"],
                "dirty": None if dirty is None else dirty == "1",
                "source": "MMAE_FAST_GIT_COMMIT"}
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _cpu_native() -> bool | str:
    """True where the cpu backend runs its native stages (mmae_fast/ops/tcr/cpu_native.py),
    else why not."""
    from mmae_fast.ops.tcr import cpu_native
    if cpu_native.REASON is not None:
        return cpu_native.REASON
    return cpu_native.enabled() or f"{cpu_native.NATIVE_ENV}=0"


def environment(device: torch.device) -> dict:
    """Everything a reader needs to reproduce or discount a result file."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    driver = None
    if device.type == "cuda":
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        driver = driver.splitlines()[0].strip() if driver else None
    props = {}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        props = {"sm_count": p.multi_processor_count, "memory_bytes": p.total_memory,
                 "capability": f"{p.major}.{p.minor}",
                 "l2_cache_bytes": getattr(p, "L2_cache_size", None)}
    return {
        "device": device.type,
        "device_name": device_name(device),
        "device_slug": device_slug(device),
        "device_properties": props,
        "driver": driver,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git": git_commit(),
        "cpu_native": _cpu_native(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotation_count(bytes_per_input: int, device: torch.device, limit: int = 64) -> int:
    """How many input copies to rotate through so that together they exceed the last-level
    cache several times (GPU: 3 x L2; CPU: 64 MiB); between 2 and ``limit``."""
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 << 20
        target = 3 * l2
    else:
        target = 64 << 20
    return max(2, min(limit, math.ceil(target / max(1, bytes_per_input))))


def warm_up(fn: Callable, inputs: Sequence, device: torch.device, calls: int) -> None:
    """``calls`` untimed calls ``fn(inputs[i % len(inputs)])``, then a synchronisation."""
    for i in range(calls):
        fn(inputs[i % len(inputs)])
    synchronize(device)


def time_calls(fn: Callable, inputs: Sequence, device: torch.device, *, warmup: int,
               reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls ``fn(inputs[i % len(inputs)])`` after ``warmup``
    untimed calls (CUDA events on a GPU, ``perf_counter`` on the CPU)."""
    warm_up(fn, inputs, device, warmup)
    (times,), (error,) = time_round_robin([fn], inputs, device, reps=reps, start=warmup)
    if error is not None:
        raise error
    return times


def time_round_robin(fns: Sequence[Callable], inputs: Sequence, device: torch.device, *,
                     reps: int, start: int = 0) -> tuple[list[list[float]],
                                                         list[Exception | None]]:
    """Milliseconds of ``reps`` calls of each of ``fns``, one call of each per round: in the
    order given on even rounds, reversed on odd ones (no function always follows the same one).
    The k-th call overall reads ``inputs[(start + k) % len(inputs)]``, so consecutive calls never
    read the same copy. CUDA events around every call on a GPU (one synchronisation at the
    end), ``perf_counter`` on the CPU.

    Returns ``(times, errors)``, one entry per function: a function that raises is left out of
    the remaining rounds, its exception in ``errors`` (None for the others) and no times.
    """
    cuda = device.type == "cuda"
    spans: list[list] = [[] for _ in fns]
    errors: list[Exception | None] = [None] * len(fns)
    k = start
    for r in range(reps):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            if errors[i] is not None:
                continue
            x = inputs[k % len(inputs)]
            k += 1
            try:
                if cuda:
                    begin = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    begin.record()
                    fns[i](x)
                    end.record()
                    spans[i].append((begin, end))
                else:
                    t0 = time.perf_counter()
                    fns[i](x)
                    spans[i].append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:  # noqa: BLE001 - the caller records it per function
                errors[i] = exc
    synchronize(device)
    times = [[] if err is not None else [b.elapsed_time(e) for b, e in sp] if cuda else sp
             for sp, err in zip(spans, errors)]
    return times, errors


def time_graph(fn: Callable, x, device: torch.device, *, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` replays of ``fn(x)`` captured once as a CUDA graph.

    ``warmup`` calls run first on a side stream (as graph capture requires: allocator, cuBLAS
    workspaces, autotuning, compilation), then one capture. Before every replay a buffer of
    2 x L2 is zeroed outside the timed span, so no replay finds its input in L2 (the graph reads
    the same input every time). Raises if ``fn`` cannot be captured (a host synchronisation,
    a CPU tensor, ...) or when ``device`` is not a CUDA device.
    """
    if device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need a CUDA device, got device {device.type!r}")
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            fn(x)
    current.wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x)
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 << 20
    scrub = torch.empty(2 * l2, dtype=torch.uint8, device=device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    graph.replay()  # the first replay uploads the graph
    for start, end in events:
        scrub.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(device)
    times = [start.elapsed_time(end) for start, end in events]
    del graph
    return times


def peak_memory(fn: Callable, x, device: torch.device) -> int | None:
    """Bytes allocated by one call of ``fn(x)`` above what was allocated before it (GPU only;
    None on the CPU, where PyTorch keeps no such counter)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn(x)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def summary(times: Sequence[float]) -> dict:
    """Median, min and inter-quartile range of repetition times (ms)."""
    if not times:
        return {"median_ms": None, "min_ms": None, "iqr_ms": None}
    qs = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iqr_ms": qs[2] - qs[0]}


# ----------------------------------------------------------------------------- result files
def result_dir(out: str | Path, device: torch.device) -> Path:
    """``<out>/<device slug>/``, created."""
    path = Path(out) / device_slug(device)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_results(directory: Path, stem: str, payload: dict, rows: list[dict],
                  csv_fields: Sequence[str]) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (``payload`` with ``rows`` under "results") and ``<stem>.csv`` (one
    line per row; list fields joined by spaces; the metadata as ``# key: value`` header lines)."""
    json_path, csv_path = directory / f"{stem}.json", directory / f"{stem}.csv"
    json_path.write_text(json.dumps({**payload, "results": rows}, indent=1) + "\n")
    with csv_path.open("w", newline="") as fh:
        meta = payload.get("meta", {})
        for key in ("device_name", "driver", "torch", "cuda", "triton", "date"):
            fh.write(f"# {key}: {meta.get(key)}\n")
        fh.write(f"# git: {meta.get('git')}\n")
        writer = csv.DictWriter(fh, fieldnames=list(csv_fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(f"{t:.6g}" for t in v) if isinstance(v, list) else v
                             for k, v in row.items()})
    return json_path, csv_path


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def load_results(paths: Sequence[str | Path], prefix: str) -> list[dict]:
    """Result payloads from files and folders (folders: every ``<prefix>*.json`` inside)."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob(f"{prefix}*.json")) if p.is_dir() else [p]
    return [json.loads(f.read_text()) | {"_path": str(f)} for f in files]


def check_limits(parser, args, minimums) -> None:
    """The flags every bench script checks alike: each ``(name, low)`` of ``minimums`` at least
    ``low``, ``--time-limit`` >= 0, ``--out`` a writable directory (created); ``parser.error``
    (one line, exit 2) names the flag otherwise."""
    from mmae_fast.mae import errors

    for name, low in minimums:
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    limit = getattr(args, "time_limit", None)  # a script without --time-limit has none
    if limit is not None and not limit >= 0:
        parser.error(f"--time-limit must be >= 0 seconds, got {limit}")
    try:
        errors.writable_dir(args.out, "--out")
    except ValueError as exc:
        parser.error(str(exc))
