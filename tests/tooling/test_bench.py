"""The benchmark's smoke test: ``bench/entropy.py --quick`` on tiny shapes, the result files'
schema, the plots and the README tables; the interleaved timing's call order (fake providers
that record their calls). No timing is asserted (timings are results, not properties)."""
import csv
import json
import math
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import common, entropy, plot, roofline, train  # noqa: E402

M, D = [48, 96], [40]  # m < d and m > d, not powers of two


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run as a user types it (a subprocess), on tiny shapes."""
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, str(ROOT / "bench" / "entropy.py"), "--quick", "--threads", "1",
           "--no-progress", "--out", str(out), "--m", *map(str, M), "--d", *map(str, D)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    (json_path,) = folder.glob("entropy-quick-*.json")
    (csv_path,) = folder.glob("entropy-quick-*.csv")
    return folder, json.loads(json_path.read_text()), csv_path


def test_result_file_schema(quick_run):
    folder, payload, _ = quick_run
    assert payload["schema"] == entropy.SCHEMA and payload["schema_version"] >= 1
    meta = payload["meta"]
    for key in ("device_name", "driver", "torch", "cuda", "triton", "git", "date", "cpu_threads"):
        assert key in meta, key
    assert meta["device"] == "cpu" and folder.name == meta["device_slug"]
    assert folder.name.startswith("cpu-") and meta["cpu_threads"] == 1
    calib = payload["calibration"]
    assert calib["gemm_tflops"]["fp32"] > 0 and calib["copy_gbps"] > 0
    config = payload["config"]
    assert config["m"] == M and config["d"] == D and config["quick"] is True

    rows = payload["results"]
    for row in rows:
        assert set(entropy.CSV_FIELDS) <= set(row), set(entropy.CSV_FIELDS) - set(row)
        assert row["status"] in ("ok", "skipped", "error")
    # every case of the sweep appears exactly once, none silently dropped
    expected = {(c.provider, c.estimator, c.m, c.d, c.dtype, c.mode)
                for c in entropy.cases(entropy.parse_args(
                    ["--quick", "--m", *map(str, M), "--d", *map(str, D)]))}
    got = [(r["provider"], r["estimator"], r["m"], r["d"], r["dtype"], r["mode"]) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    assert {r["provider"] for r in rows} >= {"official", "cholesky", "taylor-eager", "reference",
                                             "cpu", "triton", "cuda"}


def test_rows_are_complete(quick_run):
    _, payload, _ = quick_run
    for row in payload["results"]:
        if row["status"] == "ok":
            assert row["reps"] == len(row["times_ms"]) >= 1
            assert row["median_ms"] == pytest.approx(statistics.median(row["times_ms"]))
            assert math.isfinite(row["value"]) and math.isfinite(row["rel_err"])
            assert row["floor_ms"] > 0 and row["roofline_fraction"] > 0
            assert (row["grad_rel_err"] is None) == (row["mode"] == "fwd")
            assert row["peak_mem_bytes"] is None  # CPU: not measured
        else:
            assert row["reason"], row
    # the reference and cpu backends always run here, and their exact float32 values match float64
    ref = [r for r in payload["results"] if r["provider"] in ("reference", "cpu")]
    assert {r["provider"] for r in ref} == {"reference", "cpu"}
    assert all(r["status"] == "ok" for r in ref)
    exact32 = [r for r in ref if r["estimator"] == "exact" and r["dtype"] == "fp32"]
    assert exact32 and all(r["rel_err"] < 1e-4 for r in exact32)
    # unavailable kernel backends are recorded with the reason, not dropped
    for r in payload["results"]:
        if r["provider"] in ("triton", "cuda") and r["status"] == "skipped":
            assert r["provider"] in r["reason"]


def test_csv_matches_json(quick_run):
    _, payload, csv_path = quick_run
    lines = csv_path.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert any(line.startswith("# device_name:") for line in comments)
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert rows and list(rows[0]) == list(entropy.CSV_FIELDS)
    assert len(rows) == len(payload["results"])
    for row, ref in zip(rows, payload["results"]):
        assert row["provider"] == ref["provider"] and row["status"] == ref["status"]
        assert len(row["times_ms"].split()) == len(ref["times_ms"])


def test_plots_and_readme(quick_run, tmp_path):
    folder, payload, _ = quick_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# bench\n\n{plot.BEGIN}\nold\n{plot.END}\n\ntail\n")
    assert plot.main([str(folder), "--readme", str(readme)]) == 0
    for name in ("entropy_time.png", "entropy_summary.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert text.startswith("# bench") and text.rstrip().endswith("tail") and "old" not in text
    assert "| d | m | official |" in text and payload["meta"]["device_name"] in text


def test_roofline_cost_counts():
    """tcr_cost against hand counts: m=8, d=4 (N=4), fp32 input, the small side in float64
    (8-byte elements, the float64 rate)."""
    exact = roofline.tcr_cost(8, 4, "exact", 0, "fwd", 4)
    assert exact["gram_flops"] == 2 * 8 * 4 * 4 and exact["small_flops"] == pytest.approx(64 / 3)
    assert exact["bytes"] == 8 * 4 * 4 + 8 * 16 * 3
    series = roofline.tcr_cost(8, 4, "series", 5, "fwd+bwd", 2)  # T_2, T_3: 2 products + 1 bwd
    assert series["gram_flops"] == 2 * (2 * 8 * 4 * 4)
    assert series["small_flops"] == 2 * 64 * 2 + 2 * 64
    sample_side = roofline.tcr_cost(3, 10, "taylor", 4, "fwd", 2)  # N = m = 3, Y^2: 1 product
    assert sample_side["gram_flops"] == 2 * 3 * 10 * 3 and sample_side["small_flops"] == 2 * 27
    calib = {"gemm_tflops": {"fp32": 1e-3, "bf16": 1e-3, "fp64": 0.5e-3}, "copy_gbps": 1.0}
    assert roofline.floor_ms(exact, "fp32", calib) == pytest.approx(
        1e3 * max(exact["gram_flops"] / 1e9 + exact["small_flops"] / 0.5e9,
                  exact["bytes"] / 1e9))
    assert roofline.floor_ms(exact, "fp16", calib) is None  # no rate measured for fp16
    assert roofline.floor_ms(exact, "fp32", {**calib, "gemm_tflops": {"fp32": 1e-3}}) is None


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        entropy.parse_args(["--dtype", "int8"])
    with pytest.raises(SystemExit):
        entropy.parse_args(["--providers", "nope"])


class _StubMAE(torch.nn.Module):
    """Stands in for the trainer's MAE in the train-bench test: ``imgs -> (loss, cls)``."""

    def __init__(self, img_size: int, width: int = 24):
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.fused_attn = True  # what the official variant must switch off
        self.enc = torch.nn.Linear(3 * img_size * img_size, width)
        self.dec = torch.nn.Linear(width, 3 * img_size * img_size)

    def forward(self, imgs):
        x = imgs.flatten(1)
        cls = self.enc(x)
        return (self.dec(cls) - x).float().pow(2).mean(), cls


def test_train_bench_schema(tmp_path, monkeypatch):
    built = []

    def create_model(preset, img_size):
        built.append(_StubMAE(img_size))
        return built[-1]

    monkeypatch.setattr(train, "_model_module",
                        lambda: types.SimpleNamespace(create_model=create_model))
    args = train.parse_args(["--quick", "--threads", "1", "--no-progress", "--out",
                             str(tmp_path), "--batch", "12", "--img-size", "8"])
    json_path, csv_path = train.run(args)
    payload = json.loads(json_path.read_text())
    assert payload["schema"] == train.SCHEMA and "device_name" in payload["meta"]
    rows = payload["results"]
    assert [(r["variant"], r["reg"], r["backend"]) for r in rows] == [
        ("ours", "none", None), ("ours", "tcr", "official-eager"), ("ours", "tcr", "auto"),
        ("official", "tcr", "official-eager")]
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        assert set(train.CSV_FIELDS) <= set(row)
        assert row["steps"] == len(row["times_ms"]) == args.steps and row["img_per_s"] > 0
        assert (row["reg_ms"] is None) == (row["reg"] == "none")
        assert (row["reg_share_pct"] is None) == (row["reg"] == "none")
    assert [m.attn.fused_attn for m in built] == [True, True, True, False]
    assert len(list(csv.DictReader(
        line for line in csv_path.read_text().splitlines() if not line.startswith("#")))) == 4
    readme = tmp_path / "README.md"
    assert plot.main([str(json_path.parent), "--readme", str(readme)]) == 0
    assert (json_path.parent / "train.png").exists() and "| tiny | official |" in readme.read_text()


def test_train_bench_without_trainer_records_skips(tmp_path, monkeypatch):
    def missing():
        raise ImportError("no trainer")

    monkeypatch.setattr(train, "_model_module", missing)
    json_path, _ = train.run(train.parse_args(["--quick", "--no-progress", "--out",
                                               str(tmp_path)]))
    rows = json.loads(json_path.read_text())["results"]
    assert rows and all(r["status"] == "skipped" and "no trainer" in r["reason"] for r in rows)


def test_console_entry_point(capsys):
    from mmae_fast import bench_cli
    assert bench_cli.main([]) == 0 and "entropy" in capsys.readouterr().out
    assert bench_cli.main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench_cli.main(["entropy", "--help"])
    assert exc.value.code == 0 and "--quick" in capsys.readouterr().out


def test_train_bench_runs_the_trainer_model(tmp_path):
    """``bench/train.py --quick`` with the trainer's real tiny MAE: every configuration runs."""
    json_path, _ = train.run(train.parse_args(["--quick", "--threads", "1", "--no-progress",
                                               "--out", str(tmp_path), "--img-size", "16"]))
    rows = json.loads(json_path.read_text())["results"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), rows
    assert all(r["img_per_s"] > 0 and math.isfinite(r["median_ms"]) for r in rows)


def test_uniformity_sweep_beside_its_eager_baseline(tmp_path):
    """``--loss uniformity``: uniformity_loss on every backend beside the eager U-MAE baseline,
    one row per case of the sweep, errors against the float64 reference.uniformity, written to
    its own file (the TCR plots do not read it). No timing is asserted."""
    cmd = [sys.executable, str(ROOT / "bench" / "entropy.py"), "--quick", "--loss", "uniformity",
           "--threads", "1", "--no-progress", "--out", str(tmp_path), "--m", "48", "--d", "40",
           "--dtype", "fp32", "--reps", "1", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (json_path,) = folder.glob("uniformity-quick-*.json")
    assert not list(folder.glob("entropy-*.json"))
    rows = json.loads(json_path.read_text())["results"]
    assert {r["provider"] for r in rows} == {"umae-eager", "reference", "cpu", "triton", "cuda"}
    assert {r["estimator"] for r in rows} == {"uniformity"}
    assert len(rows) == 5 * 2  # providers x modes
    for r in rows:
        if r["provider"] in ("umae-eager", "reference", "cpu"):
            assert r["status"] == "ok", r
        if r["status"] == "ok":
            assert r["rel_err"] < 1e-5 and math.isfinite(r["value"])
            assert (r["grad_rel_err"] is None) == (r["mode"] == "fwd")
            if r["grad_rel_err"] is not None:
                assert r["grad_rel_err"] < 1e-4
        else:
            assert r["provider"] in r["reason"]


def test_uniformity_roofline_cost_has_no_small_side_products():
    cost = roofline.tcr_cost(4096, 768, "uniformity", 0, "fwd+bwd", 2)
    assert cost["gram_flops"] == 2 * (2.0 * 4096 * 768 * 768)
    assert cost["small_flops"] == 4.0 * 768 * 768


# ----------------------------------------------------------------------------- interleaved timing
def test_round_robin_order_inputs_and_errors():
    """One call of each function per round, reversed every other round; the k-th call reads
    input (start + k) mod n; a function that raises leaves the rounds with its exception."""
    seen = []

    def fn(name, fail_at=None):
        def call(x):
            seen.append((name, x))
            if sum(s == name for s, _ in seen) == fail_at:
                raise RuntimeError(f"{name} failed")
        return call

    times, errors = common.time_round_robin([fn("a"), fn("b", fail_at=2), fn("c")],
                                            [0, 1, 2, 3, 4], torch.device("cpu"), reps=4,
                                            start=3)
    assert [s for s, _ in seen] == ["a", "b", "c", "c", "b", "a", "a", "c", "c", "a"]
    assert [x for _, x in seen] == [(3 + k) % 5 for k in range(len(seen))]
    assert [len(t) for t in times] == [4, 0, 4]
    assert errors[0] is None and errors[2] is None and str(errors[1]) == "b failed"
    with pytest.raises(RuntimeError, match="d failed"):  # time_calls: one function, raised
        common.time_calls(fn("d", fail_at=2), [0], torch.device("cpu"), warmup=0, reps=3)


def _recorded_run(monkeypatch, tmp_path, interleave: bool, fail=None):
    """``entropy.run`` on two shapes and three providers whose loss records every call (and
    ``fail = (provider, m, n)`` raises at that provider's n-th call on the shape m x 8): (rows,
    payload, csv header, the providers in call order per shape)."""
    calls = []

    def fake_loss_fn(case, mu, tol):
        def loss(h):
            calls.append((case.provider, case.m))
            if fail and calls.count(fail[:2]) == fail[2] and fail[:2] == calls[-1]:
                raise RuntimeError(f"{case.provider} broke")
            return (h.double() ** 2).sum()
        return loss

    monkeypatch.setattr(entropy, "loss_fn", fake_loss_fn)
    args = entropy.parse_args([
        "--quick", "--device", "cpu", "--shapes", "12x8", "20x8", "--dtype", "fp32", "--mode",
        "fwd", "--estimator", "exact", "--providers", "official", "cholesky", "reference",
        "--reps", "4", "--warmup", "1", "--no-progress", "--out", str(tmp_path / str(interleave)),
        "--interleave" if interleave else "--no-interleave"])
    json_path, csv_path = entropy.run(args)
    payload = json.loads(json_path.read_text())
    header = next(line for line in csv_path.read_text().splitlines() if not line.startswith("#"))
    order = {m: [p for p, mm in calls if mm == m] for m in (12, 20)}
    return payload["results"], payload, header, order


O, C, R = "official", "cholesky", "reference"


def test_interleaved_reps_run_round_robin(monkeypatch, tmp_path):
    """Each case's checked call and warm-up first, then one timed call of each case per round
    (reversed every other round), shape by shape; --no-interleave: each case's calls in a row."""
    rows, payload, _, order = _recorded_run(monkeypatch, tmp_path, interleave=True)
    assert payload["config"]["interleave"] is True
    prepared = [O, O, C, C, R, R]  # the checked call, one warm-up
    rounds = [O, C, R, R, C, O] * 2
    assert order == {12: prepared + rounds, 20: prepared + rounds}
    assert [(r["provider"], r["m"], r["status"], r["reps"]) for r in rows] == [
        (p, m, "ok", 4) for m in (12, 20) for p in (O, C, R)]
    assert all(len(r["times_ms"]) == 4 and r["median_ms"] is not None for r in rows)

    _, payload, _, order = _recorded_run(monkeypatch, tmp_path, interleave=False)
    assert payload["config"]["interleave"] is False
    assert order == {12: [O] * 6 + [C] * 6 + [R] * 6, 20: [O] * 6 + [C] * 6 + [R] * 6}


@pytest.mark.parametrize("call, calls", [
    (4, [O, O, C, C, R, R] + [O, C, R, R, C, O, O, R, R, O]),  # the second timed call
    (1, [O, O, C, R, R] + [O, R, R, O] * 2)])                  # the checked call
def test_interleaved_error_leaves_the_others_running(monkeypatch, tmp_path, call, calls):
    """cholesky fails in one call on 12x8: an error row as a failing provider gets, no further
    cholesky call there; the others keep all their reps."""
    rows, _, _, order = _recorded_run(monkeypatch, tmp_path, interleave=True, fail=(C, 12, call))
    assert order[12] == calls
    by = {(r["provider"], r["m"]): r for r in rows}
    broken = by[C, 12]
    assert broken["status"] == "error" and broken["reason"] == "RuntimeError: cholesky broke"
    assert broken["reps"] == 0 and broken["times_ms"] == [] and broken["median_ms"] is None
    for key in [(O, 12), (R, 12), (O, 20), (C, 20), (R, 20)]:
        assert by[key]["status"] == "ok" and by[key]["reps"] == 4, by[key]


def test_interleaved_rows_have_the_sequential_fields(monkeypatch, tmp_path):
    """Both modes give rows with the same fields in the same order, the same CSV header, and
    the same untimed results."""
    inter, _, inter_header, _ = _recorded_run(monkeypatch, tmp_path, interleave=True)
    seq, _, seq_header, _ = _recorded_run(monkeypatch, tmp_path, interleave=False)
    assert inter_header == seq_header == ",".join(entropy.CSV_FIELDS)
    assert [list(r) for r in inter] == [list(r) for r in seq]
    for a, b in zip(inter, seq):
        assert (a["provider"], a["m"], a["status"], a["reps"]) == (
            b["provider"], b["m"], b["status"], b["reps"])
        assert a["value"] == pytest.approx(b["value"]) and a["rel_err"] == pytest.approx(
            b["rel_err"], abs=1e-12)


def test_interleave_defaults_on_for_the_cpu():
    assert entropy.parse_args(["--device", "cpu"]).interleave is True
    assert entropy.parse_args(["--device", "cpu", "--no-interleave"]).interleave is False
