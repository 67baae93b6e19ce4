"""The embedded demo: tiny-ViT M-MAE (``--reg tcr``) vs plain MAE (``--reg none``) on digits, CPU.

    python -m mmae_fast.train.demo            # about 70 s on 2 idle cores; writes runs/demo/

Both runs train the ``tiny`` preset on sklearn's bundled digits with the same seed, data order
and masks (they differ only in the regulariser), side by side in two processes (one thread
each), then probe the frozen CLS features (linear probe, kNN, effective rank) and print a table.
Outputs per run under ``runs/demo/<reg>/``: metrics.jsonl, curves.png, checkpoint-last.pt,
encoder.safetensors; ``runs/demo/summary.json`` and ``runs/demo/compare.png`` for both.
"""
from __future__ import annotations

import json
import os
import sys
import time

from ..mae import errors

#: the demo's training recipe (every flag is an mmae-train flag). lamb 0.1 is 10x the ImageNet
#: value: at width 64 and batch 128 R moves less than at ViT scale (docs/training.md; the
#: official 1e-2 also raises the effective rank here, less visibly).
RECIPE = ["--model", "tiny", "--data", "digits", "--batch", "128", "--lr", "1.5e-3",
          "--warmup-steps", "50", "--log-every", "20", "--rank-every", "100", "--device", "cpu",
          "--no-progress"]
DEFAULT_STEPS = 1500
DEFAULT_LAMB, DEFAULT_MU = 0.1, 1.0


def _run(reg: str, steps: int, lamb: float, mu: float, out: str, probe_epochs: int,
         threads: int, seed: int) -> dict:
    """Train one run and evaluate it (runs in a worker process)."""
    import torch
    torch.set_num_threads(threads)
    from .. import train
    from ..eval import monitor
    t0 = time.perf_counter()
    args = train.parse_args(RECIPE + ["--reg", reg, "--lamb", str(lamb), "--mu", str(mu),
                                      "--steps", str(steps), "--seed", str(seed),
                                      "--output-dir", os.path.join(out, reg), "--overwrite"])
    res = train.train(args)
    t_train = time.perf_counter() - t0
    ev = monitor.evaluate_model(res["model"], probe_epochs=probe_epochs, seed=seed)
    return ev | {"name": f"reg={reg}", "reg": reg, "train_s": t_train,
                 "wall_s": time.perf_counter() - t0, "loss_mae": res["metrics"]["loss_mae"],
                 "steps": steps, "run_dir": res["run_dir"]}


def compare_plot(out: str, regs) -> str:
    """Effective rank and L_MAE of the runs against the step, in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .outputs import read_metrics
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for reg in regs:
        rows = read_metrics(os.path.join(out, reg, "metrics.jsonl"))
        for ax, key in zip(axes, ("loss_mae", "eff_rank")):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot(*zip(*pts), label=f"reg={reg}")
    for ax, title in zip(axes, ("L_MAE (train)", "effective rank of CLS (train batch)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "compare.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_all(regs, jobs: int, kw: dict) -> list[dict]:
    """``_run`` of each regulariser: side by side in ``jobs`` > 1 processes, else in turn."""
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as ex:
            futures = [ex.submit(_run, reg, threads=1, **kw) for reg in regs]
            return [f.result() for f in futures]
    return [_run(reg, threads=os.cpu_count() or 1, **kw) for reg in regs]


TABLE = [("name", "run", "s"), ("linear_acc", "linear-probe acc", ".3f"),
         ("knn_acc", "kNN acc", ".3f"), ("eff_rank", "eff. rank (test)", ".2f"),
         ("loss_mae", "final L_MAE", ".3f"), ("train_s", "train s", ".1f"),
         ("wall_s", "run wall s", ".1f")]


def main(argv=None) -> int:
    p = errors.OneLineParser(prog="mmae-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--lamb", type=float, default=DEFAULT_LAMB, help="weight of R for --reg tcr")
    p.add_argument("--mu", type=float, default=DEFAULT_MU)
    p.add_argument("--out", default=os.path.join("runs", "demo"))
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--jobs", type=int, help="parallel runs (default: 2 if 2+ cores, else 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if not 0 <= args.lamb < float("inf"):
        p.error(f"--lamb must be a finite number >= 0, got {args.lamb}")
    if not 0 < args.mu < float("inf"):
        p.error(f"--mu must be a finite number > 0, got {args.mu}")
    if args.probe_epochs < 1:
        p.error(f"--probe-epochs must be >= 1, got {args.probe_epochs}")
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        errors.writable_dir(args.out, "--out")
    except ValueError as exc:
        p.error(str(exc))
    jobs = args.jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    regs = ("tcr", "none")
    t0 = time.perf_counter()
    print(f"mmae_fast demo: tiny ViT MAE on digits, {args.steps} steps x 128 images, "
          f"--reg tcr (lamb {args.lamb}, mu {args.mu}) vs --reg none, {jobs} process(es)",
          flush=True)
    kw = dict(steps=args.steps, lamb=args.lamb, mu=args.mu, out=args.out,
              probe_epochs=args.probe_epochs, seed=args.seed)
    from .loop import Diverged
    try:
        rows = _run_all(regs, jobs, kw)
    except ValueError as exc:  # a run's own one-line error (its output directory, ...)
        p.error(str(exc))
    except Diverged as exc:
        print(f"mmae-demo: {exc}", file=sys.stderr)
        return 1
    from ..eval.monitor import format_table
    wall = time.perf_counter() - t0
    png = compare_plot(args.out, regs)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "jobs": jobs, "wall_s": wall, "runs": rows}, f, indent=1)
    print(format_table(rows, TABLE))
    print(f"total wall {wall:.1f}s; outputs in {args.out}/ (summary.json, compare.png, "
          f"<reg>/metrics.jsonl, curves.png, checkpoint-last.pt, encoder.safetensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
