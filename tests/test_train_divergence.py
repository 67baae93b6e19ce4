"""Divergence is reported, never saved; a bad --resume is one line naming the file."""
import argparse
import math
import os
import pickle
import warnings

import pytest
import torch

from mmae_fast import checkpoint, train

BASE = ["--model", "tiny", "--data", "digits", "--batch", "16", "--no-progress", "--device",
        "cpu", "--no-plot", "--no-export", "--rank-every", "0", "--warmup-steps", "0"]


def _main(tmp_path, name, *extra):
    return train.main(BASE + ["--output-dir", str(tmp_path / name), *extra])


@pytest.mark.parametrize("extra", [
    ["--log-every", "1", "--ckpt-every", "1"],
    # the weights stay finite at the step-6 checkpoint, AdamW's exp_avg_sq already holds inf
    ["--warmup-steps", "8", "--log-every", "3", "--ckpt-every", "2"],
])
def test_lr_50_stops_with_one_line_naming_step_terms_and_checkpoint(tmp_path, capsys, extra):
    """--lr 50 (a new user's mistake): the run stops at the log step after the first
    non-finite loss, or at the checkpoint that would hold non-finite weights or optimizer
    state; the checkpoint written before it is kept, nothing later replaces it."""
    rc = _main(tmp_path, "div", "--lr", "50", "--steps", "30", *extra)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    ckpt = tmp_path / "div" / checkpoint.LAST
    state = torch.load(ckpt, weights_only=True)
    assert f"last good checkpoint: {ckpt} (step {state['step']})" in err
    import re
    found = re.search(r"non-finite (loss at|(?:weights|optimizer state|loss-scaler state)"
                      r"(?: and [a-z -]+?)* after) step (\d+) \(([^)]*)\)", err)
    assert found, err
    at_save = found.group(1) != "loss at"
    # saved before the first bad step, never after it
    assert state["step"] <= int(found.group(2)) + at_save
    assert at_save or set(found.group(3).split(", ")) <= {"L_MAE", "R", "L_CE", "loss"}
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # the "last good" checkpoint is good to resume from: its AdamW moments are finite too
    opt_state = state["optimizer"]["state"]
    bad = [(i, name) for i, s in opt_state.items() for name, v in s.items()
           if not torch.isfinite(v).all()]
    assert opt_state and not bad, f"non-finite optimizer state in the last good checkpoint: {bad}"


def test_the_checkpoint_check_covers_optimizer_and_scaler_state():
    good = {"state": {0: {"step": torch.tensor(3.0), "exp_avg_sq": torch.ones(4)}}}
    assert checkpoint.all_finite(good) and checkpoint.all_finite({"scale": 65536.0})
    good["state"][0]["exp_avg_sq"][2] = math.inf
    assert not checkpoint.all_finite(good)
    assert not checkpoint.all_finite({"scale": math.inf, "_growth_tracker": 0})
    assert checkpoint.all_finite([torch.arange(3), "text", None])  # integers, no floats


def test_the_check_is_lazy_at_log_steps(tmp_path, capsys):
    """With --log-every 8 the run still stops (at the read) and names the first bad step."""
    rc = _main(tmp_path, "lazy", "--lr", "50", "--steps", "16", "--log-every", "8")
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss at step" in err
    assert "no checkpoint was written" in err
    assert not (tmp_path / "lazy" / checkpoint.LAST).exists()


def test_skip_nonfinite_skips_and_counts(tmp_path):
    args = train.parse_args(BASE + ["--output-dir", str(tmp_path / "skip"), "--lr", "50",
                                    "--steps", "12", "--log-every", "4", "--skip-nonfinite"])
    res = train.train(args)
    assert res["skipped"] > 0
    state = torch.load(res["checkpoint"], weights_only=True)
    assert state["step"] == 12
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # every step the optimizer took was finite: AdamW's step count = 12 - skipped
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {12.0 - res["skipped"]}


def test_skipped_step_leaves_weights_unchanged(tmp_path):
    """A step whose loss is NaN (forced) is skipped on the device: weights and AdamW state
    equal those before it."""
    from train_helpers import _setup, _steps
    args, model, opt, scaler, fwd, batches = _setup(["--skip-nonfinite"])
    _steps(args, model, opt, scaler, fwd, batches[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imgs, noise, labels = batches[1][0]
    _steps(args, model, opt, scaler, fwd, [[(imgs * math.nan, noise, labels)]])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    terms, bad, _ = _steps(args, model, opt, scaler, fwd, batches[2:])[0]
    assert not bad and torch.isfinite(terms).all()


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
        torch.save(good | change, path)
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
