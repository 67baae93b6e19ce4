"""bench/demo_seeds.py: one row per (seed, run) with every column of the demo's summary, the
spread (min, max, max - min) per run and column, and the metadata of the run, in JSON and CSV.
The demo itself is replaced by a stub that writes a known summary.json (its own test runs it)."""
import csv
import json
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import demo_seeds  # noqa: E402


def _stub_demo(argv):
    seed, out = int(argv[argv.index("--seed") + 1]), argv[argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    runs = [{"name": name, "steps": 1500, "n_train": 1442, "n_test": 355,
             "linear_acc": 0.9 + 0.01 * seed + bonus, "knn_acc": 0.8 + 0.02 * seed,
             "eff_rank": 3.0 + 10 * bonus + seed, "loss_mae": 0.25 - 0.01 * seed,
             "train_s": 60.0 + seed, "wall_s": 61.0 + seed}
            for name, bonus in (("reg=tcr", 0.005), ("reg=none", 0.0))]
    json.dump({"args": {"seed": seed, "out": out, "steps": 1500}, "jobs": 2, "wall_s": 70.0,
               "runs": runs}, open(os.path.join(out, "summary.json"), "w"))
    return 0


def test_rows_spread_and_metadata(tmp_path, monkeypatch):
    from mmae_fast.train import demo
    monkeypatch.setattr(demo, "main", _stub_demo)
    assert demo_seeds.main(["--seeds", "0", "2", "--work", str(tmp_path / "w"),
                            "--out", str(tmp_path / "r")]) == 0
    (path,) = (tmp_path / "r").glob("*/demo-seeds-*.json")
    data = json.load(open(path))
    assert data["config"] == {"seeds": [0, 2], "demo": {"steps": 1500, "jobs": 2}}
    assert "commit" in data["meta"]["git"] and data["meta"]["torch"]
    assert [(r["seed"], r["name"]) for r in data["results"]] == [
        (0, "reg=tcr"), (0, "reg=none"), (2, "reg=tcr"), (2, "reg=none")]
    spread = {(s["name"], s["column"]): s for s in data["spread"]}
    knn = spread[("reg=none", "knn_acc")]
    assert (knn["min"], knn["max"], knn["seeds"]) == (0.8, 0.8 + 0.02 * 2, 2)
    assert knn["range"] == pytest.approx(0.04)
    assert spread[("reg=tcr", "eff_rank")]["max"] == pytest.approx(5.05)
    rows = list(csv.DictReader(line for line in open(path.with_suffix(".csv"))
                               if not line.startswith("#")))
    assert len(rows) == 4 and float(rows[3]["linear_acc"]) == pytest.approx(0.92)


def test_a_failing_demo_is_exit_code_1(tmp_path, monkeypatch, capsys):
    from mmae_fast.train import demo
    monkeypatch.setattr(demo, "main", lambda argv: 1)
    assert demo_seeds.main(["--seeds", "0", "--work", str(tmp_path / "w"),
                            "--out", str(tmp_path / "r")]) == 1
    assert "the demo failed for seed 0" in capsys.readouterr().err
    assert not list((tmp_path / "r").glob("*/*"))
