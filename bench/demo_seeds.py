"""The demo (``mmae_fast.train.demo``) for several seeds, one after another: a result file with
every value of every run and the spread over the seeds.

    python bench/demo_seeds.py --seeds 0 1 2            # ~1 min per seed on 2 idle cores

Writes ``bench/results/<device>/demo-seeds-<UTC stamp>.json`` and ``.csv`` (git commit,
versions, the demo's arguments, one row per (seed, run), and per run the minimum, maximum and
max − min of each column over the seeds). The demo's own outputs go to ``--work`` (one folder
per seed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import common  # noqa: E402

#: the columns of the demo's table (``mmae_fast.train.demo.TABLE``) plus the split sizes
COLUMNS = ("linear_acc", "knn_acc", "eff_rank", "loss_mae", "train_s", "wall_s")
FIELDS = ("seed", "name", "steps", "n_train", "n_test") + COLUMNS


def spread(rows: list[dict]) -> list[dict]:
    """Per run name: min, max and max − min of every column over the rows (one per seed)."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        for col in COLUMNS:
            vals = [float(r[col]) for r in mine]
            out.append({"name": name, "column": col, "seeds": len(vals), "min": min(vals),
                        "max": max(vals), "range": max(vals) - min(vals)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo_seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="the demo's --steps (default: the demo's own)")
    p.add_argument("--work", default=os.path.join("runs", "demo-seeds"),
                   help="where the demo writes its run folders (one per seed)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    from mmae_fast.train import demo
    device = torch.device("cpu")
    meta = common.environment(device)  # before the runs: the commit and tree that ran
    rows, demo_args = [], None
    for seed in args.seeds:
        out = os.path.join(args.work, f"seed{seed}")
        argv_demo = ["--seed", str(seed), "--out", out]
        if args.steps:
            argv_demo += ["--steps", str(args.steps)]
        if demo.main(argv_demo) != 0:
            print(f"demo_seeds: the demo failed for seed {seed}", file=sys.stderr)
            return 1
        summary = json.load(open(os.path.join(out, "summary.json")))
        demo_args = {k: v for k, v in summary["args"].items() if k not in ("seed", "out")}
        demo_args["jobs"] = summary["jobs"]
        for run in summary["runs"]:
            rows.append({"seed": seed, **{k: run.get(k) for k in FIELDS if k != "seed"},
                         "total_wall_s": summary["wall_s"]})
    meta["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    payload = {"schema": "mmae_fast.bench.demo_seeds", "schema_version": 1,
               "meta": meta, "config": {"seeds": args.seeds,
                                                              "demo": demo_args},
               "spread": spread(rows)}
    json_path, csv_path = common.write_results(common.result_dir(args.out, device),
                                               f"demo-seeds-{common.timestamp()}", payload, rows,
                                               FIELDS)
    for s in payload["spread"]:
        print(f"{s['name']:9s} {s['column']:11s} min {s['min']:.3f}  max {s['max']:.3f}  "
              f"range {s['range']:.3f}")
    print(f"wrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
