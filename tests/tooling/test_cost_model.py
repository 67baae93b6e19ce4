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


def _counting_products(monkeypatch):
    """Every n×n product of the products-only small side, counted: ``product_function``
    returns a float32 ``torch.mm`` that records each call."""
    import torch
    from mmae_fast.ops.tcr import small_side

    calls = []

    def product_function(fmt, device):
        def mm(a, b):
            calls.append((a.shape, b.shape))
            return torch.mm(a, b)
        return mm

    monkeypatch.setattr(small_side, "product_function", product_function)
    monkeypatch.setenv(small_side.PRODUCTS_ENV, "float32")
    return calls


@pytest.mark.parametrize("estimator,order", [("exact", None), ("series", None), ("series", 9),
                                             ("taylor", None), ("taylor", 5)])
@pytest.mark.parametrize("need_grad", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", [(60, 23), (23, 61)], ids=["feature", "sample"])
def test_products_side_counts_the_products_the_code_makes(monkeypatch, estimator, order,
                                                          need_grad, shape):
    """The model's product count equals the calls of stage 2's ``mm`` in a staged CPU run
    (one fused product kernel launch each on a GPU): exact, series and Taylor, value only and
    value with gradient, both sides of the Gram."""
    import torch
    import mmae_fast
    from mmae_fast import reference, series

    calls = _counting_products(monkeypatch)
    m, d = shape
    mu = 1.0 if estimator != "taylor" else 0.2  # Taylor converges for mu·m/d < 1
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(m + d), requires_grad=need_grad)
    with torch.set_grad_enabled(need_grad):
        value = mmae_fast.tcr_loss(x, mu, estimator=estimator, order=order, backend="cpu")
        if need_grad:
            value.backward()
    assert torch.isfinite(value) and calls, calls
    n, kappa = min(m, d), series.kappa(mu, m, d)
    degree = order or reference.default_degree(estimator, kappa, reference.SERIES_TOL)
    work = cost_model.products_side_work(kappa, estimator, degree, need_grad)
    assert len(calls) == work["products"]
    assert all(a == (n, n) and b == (n, n) for a, b in calls)
    pred = cost_model.products_small_side_us(cost_model.H100, n, kappa, estimator, degree,
                                             need_grad=need_grad)
    assert pred["products"] == len(calls)
    assert pred["launches"] == len(calls) + pred["passes"] + pred["small"]


def test_products_side_prediction_grows_with_kappa():
    """Positive, labelled, and monotone in kappa (more moments and doublings, a higher degree)."""
    from mmae_fast import reference

    for rates in (cost_model.H100, cost_model.A100):
        for estimator in ("exact", "series"):
            last = None
            for kappa in (2.0, 4.0, 17.0, 65.0, 257.0):
                degree = reference.default_degree(estimator, kappa, reference.SERIES_TOL)
                pred = cost_model.products_small_side_us(rates, 1024, kappa, estimator, degree)
                assert pred["us"] > pred["products_us"] > 0 and "prediction" in pred["label"]
                each = max(cost_model.product_us(rates, 1024, "tf32"),
                           cost_model.symmetric_fraction(1024)
                           * cost_model.product_us(rates, 1024, "tf32x3"))
                assert pred["products_us"] == pytest.approx(pred["products"] * each)
                if last is not None:
                    assert pred["us"] >= last["us"] and pred["products"] >= last["products"]
                last = pred
    fwd = cost_model.products_side_work(65.0, "exact", 0, need_grad=False)
    both = cost_model.products_side_work(65.0, "exact", 0, need_grad=True)
    assert both["products"] > fwd["products"]


def test_symmetric_fraction():
    """The share of output tiles the symmetric kernel computes: nt(nt + 1)/2 of nt² tiles of the
    block ``small_kernel.choose`` takes on a GPU (32 below n = 512, else 64)."""
    assert cost_model.symmetric_fraction(32) == 1.0
    assert cost_model.symmetric_fraction(101) == pytest.approx(10 / 16)
    assert cost_model.symmetric_fraction(1024) == pytest.approx(136 / 256)


def test_cli_prints_the_small_side_target():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "cost_model.py")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("# TARGET small side")]
    assert len(lines) == 4 and all("PREDICTION" in ln for ln in lines)
    assert all(("NOT MET" in ln) != (": met" in ln) for ln in lines)
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith(("1024 1024 3 4 ", "65536"))]
    assert len(rows) == 12 and any("(measured)" in ln for ln in rows)
