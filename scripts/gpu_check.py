#!/usr/bin/env python3
"""``make gpu-check``: everything the project learns on a GPU, in one command with a deadline.

Stages, in order, each with a share of the total budget (``--budget``, default 420 s):

    env      GPU, driver, torch / CUDA / triton versions (a fresh Python process)
    build    TORCH_CUDA_ARCH_LIST=<this GPU's major.minor> MAX_JOBS=16
             python -m pip install --no-build-isolation --no-deps -e .
             then, in a fresh process, ``mmae_fast.available_backends()`` must list cuda, triton
    tests    MMAE_FAST_REQUIRE_GPU=1 python -m pytest -q (the whole suite; a GPU test that
             skips fails), log in the results folder
    entropy  bench/entropy.py on (1024,1024,μ3) (4096,768,μ3) (16384,768,μ1) (65536,1024,μ1),
             bf16, fwd+bwd, eager + CUDA-graph timing: official, cholesky, ours (reference,
             triton, cuda × exact, series); then triton and cuda with the products-only
             small side (``--small-products tf32x3``); then the torch.compile baselines,
             shape by shape while time is left
    kernels  bench/kernel_table.py: torch.profiler kernel table of ours at the same shapes
    train    bench/train.py: ViT-B/16 b256 eager, ViT-L/16 b128 eager, ViT-B/16 b256 compiled
             (few steps; each run while time is left)
    report   bench/plot.py: plots and the generated tables of bench/README.md

Deadlines are cumulative: stage k must end by ``budget · (share_1 + ... + share_k)`` after the
start, so time a stage leaves unused goes to the next ones. A stage whose window is shorter
than its minimum is skipped and says so; a stage runs as subprocesses killed at the window's
end; a failing stage is recorded and the next one still runs. After every stage the summary
(``gpu-check-<time>.json`` and ``.md``) is rewritten, so what finished is always on disk; a short
table is printed last. Exit status: 0 when every stage that applies passed, else 1.

    python3 scripts/gpu_check.py                      # on the GPU machine (make gpu-check)
    python3 scripts/gpu_check.py --device cpu --smoke # CI: tiny shapes, eager, a temp folder

Standard library and the repository's own scripts only (torch is imported by the subprocesses).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "mmae_fast.gpu_check"
SCHEMA_VERSION = 1
FOCUSED = ("1024x1024@3", "4096x768@3", "16384x768@1", "65536x1024@1")
SMOKE_SHAPES = ("48x40@3", "96x40@1")
REQUIRED_BACKENDS = ("cuda", "triton")
#: (model, batch, compile mode) of the trainer runs, most important first
TRAIN_RUNS = (("vit-b16", 256, "eager"), ("vit-l16", 128, "eager"), ("vit-b16", 256, "compiled"))
OK, FAILED, ERROR, TIMEOUT, SKIPPED = "ok", "failed", "error", "timeout", "skipped"
PARTIAL = "partial"  # ran, but the budget cut some of its cases or runs


@dataclasses.dataclass
class Stage:
    """One step of the check: ``fn(ctx, seconds) -> result dict`` within ``seconds``."""
    name: str
    share: float          # fraction of the budget (normalised over the stages)
    min_s: float          # skipped when its window is shorter than this
    fn: Callable
    gpu_only: bool = False
    what: str = ""


@dataclasses.dataclass
class Context:
    """What the stages share: arguments, the results folder, the environment found."""
    args: argparse.Namespace
    python: str
    out_root: Path
    stamp: str
    env: dict = dataclasses.field(default_factory=dict)
    results: list = dataclasses.field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    inprocess: bool = False  # run the bench scripts' main() here (the smoke: no torch imports)
    started_epoch: float = dataclasses.field(default_factory=time.time)

    def bench(self, script: str, argv: list[str], timeout: float, log: Path) -> dict:
        """Run ``bench/<script>.py argv``: a subprocess killed after ``timeout`` s, or with
        ``inprocess`` its ``main(argv)`` in this process (no timeout; output to ``log``)."""
        if not self.inprocess:
            return run_logged([self.python, str(ROOT / "bench" / f"{script}.py"), *argv],
                              timeout, log)
        import contextlib
        import importlib

        start = time.monotonic()
        torch = sys.modules.get("torch")  # a bench may set the thread count: restore it after
        threads = torch.get_num_threads() if torch else None
        with log.open("a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            print(f"$ (in process) bench/{script}.py {shlex.join(argv)}", flush=True)
            try:
                rc = importlib.import_module(f"bench.{script}").main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - recorded like a failing subprocess
                traceback.print_exc()
                rc = 1
            finally:
                if threads is not None:
                    sys.modules["torch"].set_num_threads(threads)
        return {"rc": rc, "seconds": round(time.monotonic() - start, 1), "timed_out": False,
                "log": str(log)}

    @property
    def device(self) -> str:
        return self.args.device

    @property
    def smoke(self) -> bool:
        return self.args.smoke

    @property
    def folder(self) -> Path:
        """``<out>/<device slug>/`` (the slug the benches use), created."""
        folder = self.out_root / self.env.get("device_slug", f"{self.device}-unknown")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}-{self.stamp}"


# ----------------------------------------------------------------------------- subprocesses
def run_logged(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` in the repository root, stdout + stderr appended to ``log``; kill its process
    group after ``timeout`` s (SIGINT, SIGTERM, SIGKILL). -> rc (None when killed),
    seconds, timed_out, log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = None
            fh.write(f"\n[gpu-check] killed after {timeout:.0f} s (its share of the budget)\n")
    return {"rc": rc, "seconds": round(time.monotonic() - start, 1), "timed_out": timed_out,
            "log": str(log)}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGINT first (pytest then prints its summary so far), SIGTERM, SIGKILL."""
    for sig, wait in ((signal.SIGINT, 8), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def new_files(folder: Path, before: set) -> list[str]:
    return sorted(str(p) for p in folder.glob("*") if p.is_file() and p not in before)


def _snapshot(folder: Path) -> set:
    return set(folder.glob("*"))


# ----------------------------------------------------------------------------- stages
ENV_SNIPPET = """
import json, sys, torch
sys.path.insert(0, {root!r})
from bench import common
dev = torch.device({device!r})
if dev.type == "cuda" and not torch.cuda.is_available():
    print(json.dumps({{"error": "no CUDA device is visible to torch "
                      "(torch.cuda.is_available() is False)"}}))
    raise SystemExit(0)
env = common.environment(dev)
try:
    import mmae_fast
    env["available_backends"] = mmae_fast.available_backends()
except Exception as exc:  # the build stage still needs the capability
    env["available_backends"] = f"import mmae_fast failed: {{type(exc).__name__}}: {{exc}}"
print(json.dumps(env))
"""


def probe_env(ctx: Context, seconds: float) -> dict:
    """The environment dict (``bench.common.environment`` + ``available_backends``), from a
    fresh process (or this one with ``inprocess``); ``{"error": ...}`` when it cannot run."""
    code = ENV_SNIPPET.format(root=str(ROOT), device=ctx.device)
    if ctx.inprocess:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "<gpu-check env probe>", "exec"), {})  # noqa: S102 - our snippet
        return json.loads(buf.getvalue().strip().splitlines()[-1])
    # importing torch + triton on a loaded or cold machine can take a while: at least 90 s
    proc = subprocess.run([ctx.python, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=max(90.0, seconds))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"environment probe failed (rc {proc.returncode}): "
                         f"{' | '.join(proc.stderr.splitlines()[-3:])}"}
    return json.loads(lines[-1])


def stage_env(ctx: Context, seconds: float) -> dict:
    env = probe_env(ctx, seconds)
    if "error" in env:
        return {"status": FAILED, "detail": env["error"]}
    ctx.env = env
    props = env.get("device_properties") or {}
    git = env.get("git") or {}
    detail = (f"{env['device_name']} (capability {props.get('capability', '-')}, "
              f"{props.get('sm_count', '-')} SMs) · driver {env.get('driver')} · torch "
              f"{env['torch']} · CUDA {env.get('cuda')} · triton {env.get('triton')} · "
              f"commit {(git.get('commit') or 'unknown')[:10]}"
              f"{' (dirty)' if git.get('dirty') else ''} · backends "
              f"{env.get('available_backends')}")
    return {"status": OK, "detail": detail}


def check_backends(found: list[str], required=REQUIRED_BACKENDS) -> str | None:
    """None when every required backend is in ``found``, else the loud message."""
    missing = [b for b in required if b not in found]
    if not missing:
        return None
    return (f"!!! BUILD CHECK FAILED: backend(s) {', '.join(missing)} missing from "
            f"mmae_fast.available_backends() = {found} (see the build log and "
            f"mmae_fast.backends.availability(name) for the reason)")


BACKENDS_SNIPPET = ("import json, mmae_fast; from mmae_fast import backends; "
                    "print(json.dumps({'available': mmae_fast.available_backends(), 'why': "
                    "{n: backends.availability(n) for n in ('cuda', 'triton')}}))")


def stage_build(ctx: Context, seconds: float) -> dict:
    cap = (ctx.env.get("device_properties") or {}).get("capability")
    if not cap:
        return {"status": FAILED, "detail": "no GPU capability known (the env stage failed)"}
    log = ctx.path("gpu-build").with_suffix(".log")
    env = {"TORCH_CUDA_ARCH_LIST": cap, "MAX_JOBS": os.environ.get("MAX_JOBS", "16")}
    cmd = [ctx.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
    res = run_logged(cmd, seconds - 10, log, env)
    if res["rc"] != 0:
        why = "timed out" if res["timed_out"] else f"rc {res['rc']}"
        return {"status": TIMEOUT if res["timed_out"] else FAILED,
                "detail": f"!!! BUILD FAILED ({why}, TORCH_CUDA_ARCH_LIST={cap}): "
                          f"{' | '.join(tail(log, 3))}", "files": [str(log)]}
    probe = subprocess.run([ctx.python, "-c", BACKENDS_SNIPPET], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    with log.open("a") as fh:
        fh.write(f"\n$ available_backends (fresh process)\n{probe.stdout}{probe.stderr}")
    try:
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": FAILED, "detail": f"!!! import after the build failed: "
                                            f"{' | '.join(probe.stderr.splitlines()[-3:])}",
                "files": [str(log)]}
    message = check_backends(found["available"])
    detail = (f"built for sm_{cap.replace('.', '')} in {res['seconds']} s; "
              f"available_backends() = {found['available']}")
    if message:
        reasons = "; ".join(f"{k}: {v}" for k, v in found["why"].items() if v)
        return {"status": FAILED, "detail": f"{message}; {reasons}", "files": [str(log)]}
    return {"status": OK, "detail": detail, "files": [str(log)]}


def pytest_counts(lines: list[str]) -> dict:
    """``{"passed": 666, "failed": 8, ...}`` from pytest's final summary line; without one (a
    killed run), counted from the ``-v`` lines ``path::test PASSED [ 5%]``."""
    for line in reversed(lines):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)",
                           line)
        if found and (" in " in line or line.startswith("=")):
            return {("error" if k.startswith("error") else k): int(n) for n, k in found}
    counts: dict[str, int] = {}
    for line in lines:
        found = re.match(r"\S+::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", line)
        if found:
            key = {"XFAIL": "xfailed", "XPASS": "xpassed"}.get(found[1], found[1].lower())
            counts[key] = counts.get(key, 0) + 1
    return counts


#: slow CPU-only test files: run last
LAST = ("test_bench.py", "test_gpu_check.py")


def test_files(root: Path = ROOT) -> list[str]:
    """Every ``tests/**/test_*.py``: first those with GPU tests (``requires_cuda``, ``mark.gpu``,
    ``cuda.is_available``), the slow CPU-only bench files last, so a run cut short by its deadline
    has run the GPU tests."""
    def rank(f: Path) -> int:
        if f.name in LAST:
            return 2
        text = f.read_text(errors="replace")
        return 0 if re.search(r"requires_cuda|mark\.gpu|cuda\.is_available", text) else 1
    files = sorted((root / "tests").rglob("test_*.py"))
    return [str(f.relative_to(root)) for f in sorted(files, key=rank)]


def xdist_workers(python: str) -> int:
    """Workers for pytest-xdist when ``python`` has it (the GPU image does), else 0. On an H100
    the GPU suite is bound by Triton's JIT compiles (CPU work: ~100 tests in 85 s on one
    process), which parallelise over the machine's cores."""
    try:
        found = subprocess.run([python, "-c", "import xdist"], capture_output=True,
                               timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        found = False
    return min(8, os.cpu_count() or 1) if found else 0


def stage_tests(ctx: Context, seconds: float) -> dict:
    log = ctx.path("gpu-tests").with_suffix(".log")
    workers = xdist_workers(ctx.python)
    cmd = [ctx.python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--durations=15",
           *(["-n", str(workers)] if workers > 1 else []), *test_files()]
    res = run_logged(cmd, seconds - 5, log, {"MMAE_FAST_REQUIRE_GPU": "1"})
    lines = tail(log, 100000)
    counts = pytest_counts(lines)
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no summary line"
    status = TIMEOUT if res["timed_out"] else (OK if res["rc"] == 0 else FAILED)
    return {"status": status, "detail": f"{summary} in {res['seconds']} s", "counts": counts,
            "failures": failures[:40], "files": [str(log)]}


def row_counts(files: list[str]) -> dict:
    """Rows of the new result files by status, and how many the time limit cut."""
    counts = {"rows": 0, "ok": 0, "skipped": 0, "error": 0, "time_limit": 0}
    for f in files:
        if not f.endswith(".json"):
            continue
        try:
            rows = json.loads(Path(f).read_text()).get("results", [])
        except (OSError, ValueError):
            continue
        for r in rows:
            counts["rows"] += 1
            counts[r.get("status", "error") if r.get("status") in counts else "error"] += 1
            counts["time_limit"] += str(r.get("reason") or "").startswith("time limit")
    return counts


def _bench_result(res: dict, folder: Path, before: set, what: str) -> dict:
    files = new_files(folder, before)
    counts = row_counts(files)
    status = TIMEOUT if res["timed_out"] else (OK if res["rc"] == 0 else FAILED)
    if status == OK and counts["time_limit"]:
        status = PARTIAL
    detail = (f"{what}: rc {res['rc']} in {res['seconds']} s, {counts['ok']}/{counts['rows']} "
              f"rows ok, {counts['error']} error, {counts['skipped']} skipped"
              + (f" ({counts['time_limit']} by the time limit)" if counts["time_limit"] else ""))
    return {"status": status, "detail": detail, "files": files, "rows": counts}


def _merge(parts: list[dict]) -> dict:
    """One stage result from several runs: the worst status (``partial`` when some ran and
    others were cut), all details."""
    order = [OK, PARTIAL, SKIPPED, TIMEOUT, FAILED, ERROR]
    status = max((p["status"] for p in parts), key=order.index) if parts else SKIPPED
    if status == SKIPPED and any(p["status"] in (OK, PARTIAL) for p in parts):
        status = PARTIAL
    return {"status": status, "detail": "; ".join(p["detail"] for p in parts),
            "files": [f for p in parts for f in p.get("files", [])]}


def stage_entropy(ctx: Context, seconds: float) -> dict:
    end = ctx.clock() + seconds
    folder, log = ctx.folder, ctx.path("gpu-check-entropy").with_suffix(".log")
    common = ["--device", ctx.device, "--dtype", "bf16", "--mode", "fwd+bwd", "--estimator",
              "exact", "series", "--no-progress", "--out", str(ctx.out_root)]
    if ctx.smoke:
        runs = [("eager providers", ["--shapes", *SMOKE_SHAPES, "--providers", "official",
                                     "cholesky", "reference", "--timing", "eager", "--reps", "2",
                                     "--warmup", "1", "--threads", "1", "--tag", "smoke"], 0.5, 5),
                ("products-only small side", ["--shapes", *SMOKE_SHAPES, "--providers",
                                              "reference", "--small-products", "float32",
                                              "--timing", "eager", "--reps", "2", "--warmup",
                                              "1", "--threads", "1", "--tag", "smoke-float32"],
                 1.0, 5)]
    else:  # (what, arguments, fraction of the time left, margin: start-up + one case + write)
        runs = [("eager providers, eager + graph timing",
                 ["--shapes", *FOCUSED, "--providers", "official", "cholesky", "triton", "cuda",
                  "--timing", "eager,graph", "--tag", "gpucheck"], 0.5, 25),
                ("products-only small side (tf32x3)",
                 ["--shapes", *FOCUSED, "--providers", "triton", "cuda", "--small-products",
                  "tf32x3", "--timing", "eager,graph", "--tag", "gpucheck-tf32x3"], 0.5, 20),
                ("torch.compile baselines",
                 ["--shapes", *FOCUSED, "--providers", "official-compile", "cholesky-compile",
                  "--timing", "eager,graph", "--tag", "gpucheck-compiled"], 1.0, 20)]
    parts = []
    for what, extra, fraction, margin in runs:
        left = end - ctx.clock()
        window = left * fraction
        if window < 15 and not ctx.smoke:
            parts.append({"status": SKIPPED, "detail": f"{what}: skipped, {left:.0f} s left"})
            continue
        before = _snapshot(folder)
        limit = max(1.0, window - margin)  # start no case after this
        res = ctx.bench("entropy", [*common, *extra, "--time-limit", f"{limit:.0f}"], window,
                        log)
        parts.append(_bench_result(res, folder, before, what))
    out = _merge(parts)
    out["files"].append(str(log))
    return out


def stage_kernels(ctx: Context, seconds: float) -> dict:
    folder, log = ctx.folder, ctx.path("gpu-check-kernels").with_suffix(".log")
    if ctx.smoke:
        extra = ["--shapes", *SMOKE_SHAPES, "--providers", "reference", "--calls", "2",
                 "--warmup", "1", "--tag", "smoke"]
    else:
        extra = ["--shapes", *FOCUSED, "--providers", "cuda", "triton", "--calls", "5",
                 "--warmup", "2", "--tag", "gpucheck"]
    before = _snapshot(folder)
    limit = max(1.0, seconds - (5 if ctx.smoke else 12))
    res = ctx.bench("kernel_table", ["--device", ctx.device, "--out", str(ctx.out_root),
                                     "--time-limit", f"{limit:.0f}", *extra], seconds - 2, log)
    out = _bench_result(res, folder, before, "kernel table")
    out["files"].append(str(log))
    return out


def stage_train(ctx: Context, seconds: float) -> dict:
    end = ctx.clock() + seconds
    folder, log = ctx.folder, ctx.path("gpu-check-train").with_suffix(".log")
    common = ["--device", ctx.device, "--no-progress", "--out", str(ctx.out_root)]
    if ctx.smoke:
        runs = [("tiny", ["--quick", "--img-size", "16", "--steps", "2", "--warmup", "1",
                          "--threads", "1", "--tag", "smoke"])]
    else:
        runs = [(f"{model} b{batch} {mode}",
                 ["--models", model, "--batch", str(batch), "--compile", mode, "--steps", "5",
                  "--warmup", "2", "--tag", "gpucheck"]) for model, batch, mode in TRAIN_RUNS]
    parts = []
    for what, extra in runs:
        left = end - ctx.clock()
        if left < 20 and not ctx.smoke:
            parts.append({"status": SKIPPED, "detail": f"{what}: skipped, {left:.0f} s left"})
            continue
        before = _snapshot(folder)
        # start-up + one configuration: a compiled one compiles for ~30 s
        limit = max(1.0, left - (5 if ctx.smoke else 45 if "compiled" in what else 15))
        res = ctx.bench("train", [*common, *extra, "--time-limit", f"{limit:.0f}"], left, log)
        parts.append(_bench_result(res, folder, before, what))
    out = _merge(parts)
    out["files"].append(str(log))
    return out


def stage_report(ctx: Context, seconds: float) -> dict:
    log = ctx.path("gpu-check-report").with_suffix(".log")
    argv = []  # every folder of bench/results, and bench/README.md
    if ctx.smoke or ctx.out_root != (ROOT / "bench" / "results").resolve():
        argv = [str(ctx.folder), "--readme", str(ctx.out_root / "README.md")]  # elsewhere: there
    res = ctx.bench("plot", argv, seconds - 1, log)
    status = TIMEOUT if res["timed_out"] else (OK if res["rc"] == 0 else FAILED)
    return {"status": status, "detail": f"plots and tables: rc {res['rc']} in {res['seconds']} s"
                                        f" ({' | '.join(tail(log, 2))})", "files": [str(log)]}


STAGES = (
    Stage("env", 0.02, 1, stage_env, what="GPU, driver, versions"),
    Stage("build", 0.24, 40, stage_build, gpu_only=True, what="extension for this GPU's arch"),
    Stage("tests", 0.24, 30, stage_tests, gpu_only=True, what="whole test suite on the GPU"),
    Stage("entropy", 0.21, 20, stage_entropy, what="regulariser sweep, eager + graph"),
    Stage("kernels", 0.08, 10, stage_kernels, what="torch.profiler kernel table"),
    Stage("train", 0.16, 25, stage_train, what="trainer throughput"),
    Stage("report", 0.05, 3, stage_report, what="plots, bench/README.md tables"),
)


# ----------------------------------------------------------------------------- driver
def run_stages(ctx: Context, stages, budget: float, write: Callable[[], None] | None = None,
               echo: Callable[[str], None] = print) -> list[dict]:
    """Run ``stages`` within ``budget`` seconds (cumulative deadlines, see the module doc);
    append one result per stage to ``ctx.results`` and call ``write`` after each."""
    total = sum(s.share for s in stages) or 1.0
    start, cumulative = ctx.clock(), 0.0
    for i, stage in enumerate(stages, 1):
        cumulative += stage.share / total
        now = ctx.clock() - start
        window = budget * cumulative - now
        head = f"[{i}/{len(stages)}] {stage.name}"
        result = {"stage": stage.name, "what": stage.what, "allotted_s": round(window, 1),
                  "started_at_s": round(now, 1)}
        if stage.gpu_only and ctx.device != "cuda":
            result |= {"status": SKIPPED, "skip": "device", "seconds": 0.0,
                       "detail": f"skipped: GPU-only stage (--device {ctx.device})"}
        elif stage.name in ctx.args.skip:
            result |= {"status": SKIPPED, "skip": "requested", "seconds": 0.0,
                       "detail": "skipped: --skip " + stage.name}
        elif window < stage.min_s:
            result |= {"status": SKIPPED, "skip": "budget", "seconds": 0.0,
                       "detail": f"skipped: would overrun the budget (needs >= {stage.min_s:g} s, "
                                 f"{max(window, 0):.0f} s of the {budget:g} s budget left for it)"}
        else:
            echo(f"== {head}: {stage.what} (window {window:.0f} s) ==")
            t0 = ctx.clock()
            try:
                result |= stage.fn(ctx, window)
            except Exception as exc:  # noqa: BLE001 - a failing stage is a result
                result |= {"status": ERROR, "detail": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()[-4000:]}
            result["seconds"] = round(ctx.clock() - t0, 1)
        result.setdefault("files", [])
        ctx.results.append(result)
        echo(f"-- {head}: {result['status'].upper()} ({result['seconds']} s) {result['detail']}")
        for line in result.get("failures", [])[:15]:
            echo(f"   {line}")
        if write is not None:
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - the next stage still runs
                echo(f"!! could not write the summary: {type(exc).__name__}: {exc}")
    return ctx.results


def passed(results: list[dict]) -> bool:
    """Every stage ran and passed, or did not apply to this device / was skipped on request."""
    return all(r["status"] == OK or (r["status"] == SKIPPED and r.get("skip") in
                                     ("device", "requested")) for r in results)


def summary_payload(ctx: Context, budget: float, elapsed: float) -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "meta": ctx.env or {"device": ctx.device},
            "config": {"budget_s": budget, "device": ctx.device, "smoke": ctx.smoke,
                       "skip": sorted(ctx.args.skip), "out": str(ctx.out_root),
                       "argv": sys.argv, "python": ctx.python},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1), "passed": passed(ctx.results),
            "complete": len(ctx.results) == len(STAGES), "stages": ctx.results}


def summary_table(payload: dict) -> str:
    so_far = "" if payload.get("complete", True) else \
        f" so far ({len(payload['stages'])} of {len(STAGES)} stages)"
    lines = [f"gpu-check {'PASSED' if payload['passed'] else 'FAILED'}{so_far} in "
             f"{payload['elapsed_s']} s of {payload['config']['budget_s']:g} s "
             f"({payload['meta'].get('device_name', payload['config']['device'])})", "",
             "| stage | status | s | window s | detail |", "|---|---|---|---|---|"]
    for r in payload["stages"]:
        detail = r["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['allotted_s']} | "
                     f"{detail[:300]} |")
    return "\n".join(lines) + "\n"


def export(ctx: Context, dest: Path, since: float) -> list[str]:
    """Copy what this run wrote (files of the results folder changed since ``since``, epoch s)
    and the README with the generated tables to ``dest``, keeping paths relative to the
    repository (``bench/results/<device>/...``, ``bench/README.md``); for a machine that only
    returns what lands in one folder."""
    readme = ROOT / "bench" / "README.md"
    if ctx.smoke or ctx.out_root != (ROOT / "bench" / "results").resolve():
        readme = ctx.out_root / "README.md"  # where stage_report wrote it
    copied = []
    for src in [*sorted(ctx.folder.rglob("*")), readme]:
        if not src.is_file() or src.stat().st_mtime < since:
            continue
        try:
            rel = src.resolve().relative_to(ROOT)
        except ValueError:
            rel = Path("results") / src.resolve().relative_to(ctx.out_root)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
        copied.append(str(rel))
    return copied


def write_summary(ctx: Context, budget: float, start: float) -> tuple[Path, Path]:
    payload = summary_payload(ctx, budget, ctx.clock() - start)
    json_path = ctx.path("gpu-check").with_suffix(".json")
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    md_path.write_text(summary_table(payload))
    if ctx.args.export:
        export(ctx, Path(ctx.args.export), ctx.started_epoch)
    return json_path, md_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=420.0, help="total seconds (default 420)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, eager only, few repetitions (CI; implies a temp --out)")
    p.add_argument("--out", help="results root (default: bench/results; --smoke: a new "
                                 "temporary folder)")
    p.add_argument("--export", metavar="DIR",
                   help="after every stage, copy what this run wrote (and the README with the "
                        "generated tables) to DIR, paths relative to the repository, e.g. $OUT "
                        "on a machine that returns only one folder")
    p.add_argument("--skip", nargs="*", default=[], choices=[s.name for s in STAGES],
                   help="stages not to run (recorded as skipped)")
    p.add_argument("--python", default=sys.executable,
                   help="the Python the stages run (default: this one)")
    p.add_argument("--inprocess", action=argparse.BooleanOptionalAction, default=None,
                   help="run the bench scripts in this process (default: with --smoke; no "
                        "per-stage timeout then) instead of as subprocesses")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error("--budget must be > 0 seconds")
    if args.device == "cpu" and not args.smoke:
        p.error("--device cpu runs only as the smoke test: add --smoke")
    args.skip = set(args.skip)
    if args.inprocess is None:
        args.inprocess = args.smoke
    if args.inprocess and args.device == "cuda":
        p.error("--inprocess is for the CPU smoke; on a GPU every stage runs as a subprocess "
                "(timeouts, a fresh CUDA context per stage)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else (
        Path(tempfile.mkdtemp(prefix="gpu-check-smoke-")) if args.smoke
        else ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, args.python, out.resolve(),
                  _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                  inprocess=args.inprocess)
    if args.inprocess and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    start = ctx.clock()
    print(f"gpu-check: device {args.device}{' (smoke)' if args.smoke else ''}, budget "
          f"{args.budget:g} s, results under {out}/<device>/", flush=True)
    run_stages(ctx, STAGES, args.budget, write=lambda: write_summary(ctx, args.budget, start),
               echo=lambda s: print(s, flush=True))
    json_path, md_path = write_summary(ctx, args.budget, start)
    print(f"\nwrote {json_path}\nwrote {md_path}\n")
    print(summary_table(json.loads(json_path.read_text())), flush=True)
    return 0 if passed(ctx.results) else 1


if __name__ == "__main__":
    sys.exit(main())
