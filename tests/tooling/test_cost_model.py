"""bench/cost_model.py: its predictions against the stored H100 stage table, and its CLI."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import cost_model  # noqa: E402

#: the model counts the work and ignores what it cannot count (kernel tails, the series' many
#: small combinations, the Triton kernels' lower efficiency): on the stored H100 table it predicts
#: 0.20 .. 0.82 of every measured stage (mean relative error 40-53% per stage, printed by the
#: script); a prediction outside [0.15, 1] of a measurement means a counting error
LOW, HIGH = 0.15, 1.0


def test_predictions_bracket_the_stored_h100_stages():
    rows = cost_model.compare()
    assert len(rows) == 16
    for row in rows:
        for key in ("gram_ms", "small_graph_ms", "grad_ms", "call_graph_ms"):
            predicted, measured, err = row[key]
            assert err == pytest.approx(abs(predicted - measured) / measured)
            assert LOW <= predicted / measured <= HIGH, (row, key)


def test_products_scale_and_split():
    h100 = cost_model.H100
    assert cost_model.product_us(h100, 1024, "fp64") == 44
    assert cost_model.product_us(h100, 2048, "fp64") == pytest.approx(44 * 8)
    assert cost_model.product_us(h100, 512, "bf16") == 17  # launch-bound: not below n = 768
    assert cost_model.product_us(h100, 1024, "bf16x3") == 3 * 19


def test_doubling_prediction_counts_its_products():
    parts = cost_model.doubling_small_side_us(cost_model.H100, 1024, 4.0, "fp64", target=5e-8)
    assert parts["steps"] == 4 and parts["products"] == pytest.approx(6 * 44)


def test_cli_prints_labelled_predictions(tmp_path):
    for device in ("h100", "a100"):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "cost_model.py"),
                              "--device", device], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("# PREDICTION") and "kappa 257" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "cost_model.py"), "--stages",
                          str(tmp_path / "none.csv")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
