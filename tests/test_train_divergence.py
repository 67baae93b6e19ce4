"""Divergence is reported, never saved; a bad --resume is one line naming the file."""
import math
import os

import pytest
import torch

from mmae_fast import checkpoint, train

BASE = ["--model", "tiny", "--data", "digits", "--batch", "16", "--no-progress", "--device",
        "cpu", "--no-plot", "--no-export", "--rank-every", "0", "--warmup-steps", "0"]


def _main(tmp_path, name, *extra):
    return train.main(BASE + ["--output-dir", str(tmp_path / name), *extra])


def test_lr_50_stops_with_one_line_naming_step_terms_and_checkpoint(tmp_path, capsys):
    """--lr 50 (a new user's mistake): the run stops at the log step after the first
    non-finite loss; the checkpoint written before it is kept, nothing later replaces it."""
    rc = _main(tmp_path, "div", "--lr", "50", "--steps", "30", "--log-every", "1",
               "--ckpt-every", "1")
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    ckpt = tmp_path / "div" / checkpoint.LAST
    state = torch.load(ckpt, weights_only=True)
    assert f"last good checkpoint: {ckpt} (step {state['step']})" in err
    import re
    found = re.search(r"non-finite (loss at|weights after) step (\d+) \(([^)]*)\)", err)
    assert found, err
    # saved before the first bad step, never after it
    assert state["step"] <= int(found.group(2)) + (found.group(1) == "weights after")
    assert found.group(1) == "weights after" or set(found.group(3).split(", ")) <= {
        "L_MAE", "R", "L_CE", "loss"}
    assert all(torch.isfinite(v).all() for v in state["model"].values())


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


@pytest.mark.parametrize("content, match", [
    (b"PK\x03\x04 truncated", "not a readable checkpoint"),
    (b"hello, not a checkpoint", "not a readable checkpoint"),
    (None, "not an mmae-train checkpoint \\(missing optimizer"),
])
def test_bad_resume_is_one_line_naming_the_file(tmp_path, capsys, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"model": {}, "step": 3}, path)  # a foreign torch file
    else:
        path.write_bytes(content)
    rc = _main(tmp_path, "r", "--steps", "2", "--resume", str(path))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(path) in err
    with pytest.raises(ValueError, match=match):
        checkpoint.load(str(path))


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
