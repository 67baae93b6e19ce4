"""Divergence is reported, never saved; a bad --resume is one line naming the file."""
import argparse
import itertools
import json
import math
import os
import pickle
import warnings

import pytest
import torch

from mmae_fast import train
from mmae_fast.mae import checkpoint
from mmae_fast.train import loop, step

BASE = ["--model", "tiny", "--data", "digits", "--batch", "16", "--no-progress", "--device",
        "cpu", "--no-plot", "--no-export", "--rank-every", "0", "--warmup-steps", "0"]


def _main(tmp_path, name, *extra):
    return train.main(BASE + ["--output-dir", str(tmp_path / name), *extra])


def _plant(monkeypatch, faults: dict):
    """Make the trainer's forward call i (= step i with one micro-batch) faulty: ``"nan"`` gives
    NaN images (a NaN loss), ``"overflow"`` a finite loss times 1e30 (gradients whose squares
    overflow float32: AdamW's second moment would be inf)."""
    make = loop._make_forward

    def planted(*a, **k):
        fwd, calls = make(*a, **k), itertools.count()

        def faulty(imgs, noise, labels):
            kind = faults.get(next(calls))
            loss, terms, cls = fwd(imgs * math.nan if kind == "nan" else imgs, noise, labels)
            return (loss * 1e30 if kind == "overflow" else loss), terms, cls
        return faulty
    monkeypatch.setattr(loop, "_make_forward", planted)


def _all_finite_checkpoint(path):
    state = torch.load(path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    opt_state = state["optimizer"]["state"]
    bad = [(i, name) for i, s in opt_state.items() for name, v in s.items()
           if not torch.isfinite(v).all()]
    assert opt_state and not bad, f"non-finite optimizer state in the checkpoint: {bad}"
    return state


@pytest.mark.parametrize("kind, cause", [
    ("nan", "non-finite loss at step 5 (L_MAE, R, L_CE)"),
    ("overflow", "non-finite or overflowing gradient at step 5 (finite loss"),
])
def test_a_bad_step_stops_with_one_line_naming_it_and_the_last_good_checkpoint(
        tmp_path, capsys, monkeypatch, kind, cause):
    """Without --skip-nonfinite the run stops at the log step after the first bad step, names
    it and the cause; the checkpoint written before it (step 4) is kept, finite, nothing later
    replaces it."""
    _plant(monkeypatch, {5: kind})
    rc = _main(tmp_path, "div", "--steps", "12", "--log-every", "3", "--ckpt-every", "2")
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    ckpt = tmp_path / "div" / checkpoint.LAST
    assert f"diverged: {cause}" in err
    assert f"last good checkpoint: {ckpt} (step 4)" in err and "--skip-nonfinite" in err
    assert _all_finite_checkpoint(ckpt)["step"] == 4


def test_the_check_is_lazy_at_log_steps(tmp_path, capsys, monkeypatch):
    """With --log-every 8 the run stops at the read and names the first bad step (3)."""
    _plant(monkeypatch, {3: "nan", 5: "overflow"})
    rc = _main(tmp_path, "lazy", "--steps", "16", "--log-every", "8")
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss at step 3 " in err
    assert "no checkpoint was written" in err
    assert not (tmp_path / "lazy" / checkpoint.LAST).exists()


def test_the_checkpoint_check_covers_optimizer_and_scaler_state():
    good = {"state": {0: {"step": torch.tensor(3.0), "exp_avg_sq": torch.ones(4)}}}
    assert checkpoint.all_finite(good) and checkpoint.all_finite({"scale": 65536.0})
    good["state"][0]["exp_avg_sq"][2] = math.inf
    assert not checkpoint.all_finite(good)
    assert not checkpoint.all_finite({"scale": math.inf, "_growth_tracker": 0})
    assert checkpoint.all_finite([torch.arange(3), "text", None])  # integers, no floats


def test_skip_nonfinite_skips_and_counts(tmp_path, monkeypatch, capsys):
    """A NaN loss (step 3) and an overflowing gradient with a finite loss (step 6, 7) are
    skipped and counted in metrics.jsonl, the summary and the final line; the checkpoint is
    finite and AdamW took the 12 - 3 other steps."""
    _plant(monkeypatch, {3: "nan", 6: "overflow", 7: "overflow"})
    rc = _main(tmp_path, "skip", "--steps", "12", "--log-every", "4", "--skip-nonfinite")
    out = capsys.readouterr().out
    assert rc == 0 and "skipped 3 non-finite steps" in out, out
    rows = [json.loads(line) for line in open(tmp_path / "skip" / "metrics.jsonl")]
    assert [r["skipped"] for r in rows] == [1, 3, 3]
    state = _all_finite_checkpoint(tmp_path / "skip" / checkpoint.LAST)
    assert state["step"] == 12
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {9.0}


def test_a_run_where_every_step_is_skipped_ends_with_one_line(tmp_path, monkeypatch, capsys):
    _plant(monkeypatch, {i: "overflow" for i in range(4)})
    rc = _main(tmp_path, "none", "--steps", "4", "--skip-nonfinite")
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "every step of the run (0->4) was skipped" in err and "lower --lr" in err
    assert not (tmp_path / "none" / checkpoint.LAST).exists()


@pytest.mark.parametrize("lr", ["50", "1e4"])
def test_a_far_too_large_lr_with_skip_nonfinite_ends_with_a_finite_checkpoint(tmp_path, capsys,
                                                                              lr):
    """Whichever faults a chaotic run meets (they differ between CPUs), every step that would
    make the weights or AdamW's state non-finite is skipped: rc 0, a finite checkpoint, AdamW's
    step count = steps - skipped."""
    args = train.parse_args(BASE + ["--output-dir", str(tmp_path / "lr"), "--lr", lr,
                                    "--steps", "10", "--log-every", "5", "--skip-nonfinite"])
    res = train.train(args)
    state = _all_finite_checkpoint(res["checkpoint"])
    assert state["step"] == 10
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {10.0 - res["skipped"]}


def _snapshot(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state.items()})


def _assert_unchanged(model, opt, before):
    weights, state = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert opt.state.keys() == state.keys()
    for i, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[i][k]), (i, k)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("kind, fault", [("nan", None), ("overflow", "gradient"),
                                         ("huge-lr", "update")])
def test_a_skipped_step_leaves_weights_and_adamw_state_bit_identical(precision, kind, fault):
    """The update of a bad step is skipped on the device: weights and AdamW state equal those
    before it (fp32: fused AdamW's found_inf; fp16: the GradScaler's skip); the next good step
    is taken."""
    from train_helpers import _setup, _steps
    args, model, opt, scaler, fwd, batches = _setup(["--skip-nonfinite",
                                                     "--precision", precision])
    _steps(args, model, opt, scaler, fwd, batches[:1])
    scaler.update(1.0)  # fp16: a loss scale at which these steps' fp16 gradients are finite
    imgs, noise, labels = batches[1][0]
    if kind == "nan":
        imgs = imgs * math.nan
    elif kind == "overflow":  # finite (also loss-scaled) gradients whose squares overflow
        hooks = [p.register_hook(lambda g: g * 1e25) for p in model.parameters()
                 if p.requires_grad]
    else:  # finite weights, an lr whose update bound (lr · adam_step_bound) overflows float32
        for group in opt.param_groups:
            group["lr"] = 1e37
    before = _snapshot(model, opt)
    terms, faults, _ = _steps(args, model, opt, scaler, fwd, [[(imgs, noise, labels)]])[0]
    for hook in hooks if kind == "overflow" else ():
        hook.remove()
    _assert_unchanged(model, opt, before)
    assert torch.isfinite(terms).all() != (kind == "nan")
    if kind == "nan":  # its gradient is NaN too: a fault, except where the GradScaler owns it
        fault = "gradient" if precision == "fp32" else None
    assert faults.tolist() == [float(fault == name) for name in step.FAULTS]
    if kind != "huge-lr":
        terms, faults, _ = _steps(args, model, opt, scaler, fwd, batches[2:])[0]
        assert not faults.any() and torch.isfinite(terms).all()
        if precision == "fp32":  # (fp16: the GradScaler may still be calibrating its scale)
            assert all(float(s["step"]) == 2.0 for s in opt.state.values())


def test_without_the_flag_a_bad_step_is_reported_not_hidden():
    """train_step reports the fault of an overflowing gradient also without --skip-nonfinite
    (the loop then stops naming the step)."""
    from train_helpers import _setup, _steps
    args, model, opt, scaler, fwd, batches = _setup()

    def planted(*a):
        loss, terms, cls = fwd(*a)
        return loss * 1e30, terms, cls
    terms, faults, _ = _steps(args, model, opt, scaler, planted, batches[:1])[0]
    assert torch.isfinite(terms).all() and faults.tolist() == [1.0, 0.0]


def test_adam_step_bound_holds_for_adversarial_gradients():
    """|m̂/(√v̂+ε)| <= adam_step_bound for gradients that grow geometrically at the rate that
    maximises the ratio (and for random ones), with torch's own AdamW."""
    b1, b2 = 0.9, 0.95
    bound = step.adam_step_bound(b1, b2)
    worst = 0.0
    for rate in (1.0, 0.5, b2 ** -0.5 * 0.99, 2.0):
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.AdamW([p], lr=1.0, betas=(b1, b2), eps=0.0, weight_decay=0.0)
        for t in range(200):
            before = p.detach().clone()
            p.grad = torch.tensor([rate ** -t])  # old gradients large: the momentum outlives v
            opt.step()
            worst = max(worst, float((p.detach() - before).abs()))
    assert worst <= bound, (worst, bound)
    with pytest.raises(ValueError, match="beta1 < sqrt"):
        step.adam_step_bound(0.99, 0.9)


def _official_mae_checkpoint(path):
    """What the official MAE / M-MAE code saves (misc.save_model): its argparse arguments."""
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {}, "epoch": 3, "scaler": {},
                "args": argparse.Namespace(lr=1e-3)}, path)


def _plain_pickle(path):
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "step": 3}, f)


@pytest.mark.parametrize("content, match", [
    (b"PK\x03\x04 truncated", "not a readable checkpoint"),
    (b"hello, not a checkpoint", "not a readable checkpoint"),
    (None, "not an mmae-train checkpoint \\(missing optimizer"),
    (_official_mae_checkpoint, "holds Python objects other than tensors \\(argparse.Namespace\\): "
                               "not an mmae-train checkpoint"),
    (_plain_pickle, "holds Python objects other than tensors: not an mmae-train checkpoint"),
])
def test_bad_resume_is_one_line_naming_the_file(tmp_path, capsys, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"model": {}, "step": 3}, path)  # a foreign torch file
    elif callable(content):
        content(path)
    else:
        path.write_bytes(content)
    rc = _main(tmp_path, "r", "--steps", "2", "--resume", str(path))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(path) in err and "\x1b" not in err
    with warnings.catch_warnings(record=True) as caught:  # torch's pickle-protocol warning
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=match) as exc:
            checkpoint.load(str(path))
    assert not caught, [str(w.message) for w in caught]
    if callable(content):  # a readable file of another program: not "truncated"
        assert "truncated" not in str(exc.value) and "weights_only" not in str(exc.value)


def test_a_checkpoint_with_wrong_types_is_one_line_naming_the_file(tmp_path, capsys):
    """A hand-made checkpoint with every key but wrong contents: one line naming the file, never
    a traceback, whichever entry is wrong."""
    res = train.train(train.parse_args(BASE + ["--output-dir", str(tmp_path / "ok"), "--steps",
                                               "2", "--stop-after", "1"]))
    good = torch.load(res["checkpoint"], weights_only=True)
    cases = {
        "rng-empty": {"rng": {}},
        "rng-torch-short": {"rng": good["rng"] | {"torch": torch.zeros(5, dtype=torch.uint8)}},
        "rng-python": {"rng": good["rng"] | {"python": [3, [1, 2], None]}},
        "model-list": {"model": list(good["model"].values())},
        "step-str": {"step": "abc"},
        "step-float": {"step": 1.5},
        "optimizer-groups": {"optimizer": {"state": {}, "param_groups": "x"}},
        "optimizer-params": {"optimizer": {"state": {}, "param_groups": [{"params": "x"}]}},
        "scaler-list": {"scaler": [1]},
        "args-str": {"args": "x"},
    }
    for name, change in cases.items():
        path = tmp_path / f"{name}.pt"
        checkpoint.save_atomic(good | change, str(path))  # a matching checksum: only the
        # contents are wrong
        rc = _main(tmp_path, name, "--steps", "2", "--resume", str(path))
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and str(path) in err, (name, err)
        assert "not a usable mmae-train checkpoint" in err or "do not fit" in err, (name, err)
    assert _main(tmp_path, "good", "--steps", "2", "--resume", res["checkpoint"]) == 0


def test_truncated_real_checkpoint_and_wrong_model(tmp_path, capsys):
    res = train.train(train.parse_args(BASE + ["--output-dir", str(tmp_path / "ok"), "--steps",
                                               "1"]))
    data = open(res["checkpoint"], "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert _main(tmp_path, "a", "--steps", "2", "--resume", str(cut)) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err and str(cut) in err
    assert _main(tmp_path, "b", "--steps", "2", "--resume", res["checkpoint"],
                 "--cls-norm", "separate") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit --model tiny" in err and \
        res["checkpoint"] in err
    assert os.path.exists(res["checkpoint"])
