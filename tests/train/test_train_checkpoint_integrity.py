"""A checkpoint is checked when it is read: a flipped bit is a checksum mismatch naming the file
and the tensor, a non-finite weight or optimizer moment is named (never "the last good
checkpoint"), and a disk that fills during a write leaves the previous checkpoint and says so."""
import os
import shutil

import pytest
import torch

from mmae_fast import train
from mmae_fast.mae import checkpoint
from train_helpers import changed_tensors, fill_the_disk_on_save, flip_bit

BASE = ["--model", "tiny", "--data", "digits", "--batch", "8", "--no-progress", "--device",
        "cpu", "--no-plot", "--no-export", "--rank-every", "0", "--grad-norm-every", "0",
        "--warmup-steps", "0", "--steps", "2"]


def _main(out, *extra):
    return train.main(BASE + ["--output-dir", str(out), *extra])


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped after step 1 of 2: its directory (checkpoint-last.pt at step 1)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert _main(out, "--stop-after", "1") == 0
    return out


def _copy(stopped, tmp_path, name="run"):
    out = tmp_path / name
    shutil.copytree(stopped, out)
    return out, out / checkpoint.LAST


def test_a_flipped_bit_is_a_checksum_mismatch_naming_the_file_and_tensor(stopped, tmp_path,
                                                                        capsys):
    out, path = _copy(stopped, tmp_path)
    before = torch.load(path, weights_only=True)
    flip_bit(path)
    changed = changed_tensors(before, torch.load(path, weights_only=True))  # it still loads
    assert len(changed) == 1
    capsys.readouterr()
    assert _main(out, "--resume", "auto") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"checksum mismatch: {path} is corrupt" in err and changed[0] in err
    with pytest.raises(ValueError, match="checksum mismatch"):
        checkpoint.verify(torch.load(path, weights_only=True), str(path))
    out2, _ = _copy(stopped, tmp_path, "intact")
    assert _main(out2, "--resume", "auto") == 0  # the same file unflipped resumes


def test_a_checkpoint_without_a_checksum_resumes_and_says_it_is_unverified(stopped, tmp_path,
                                                                          capsys):
    out, path = _copy(stopped, tmp_path)
    state = torch.load(path, weights_only=True)
    del state[checkpoint.CHECKSUM]
    torch.save(state, path)  # as an mmae-train without checksums wrote it
    capsys.readouterr()
    assert _main(out, "--resume", "auto") == 0
    assert f"{path} has no checksum" in capsys.readouterr().err


def _exp_avg_sq(state):
    first = min(state["optimizer"]["state"])
    return state["optimizer"]["state"][first]["exp_avg_sq"], f"optimizer/state/{first}/exp_avg_sq"


@pytest.mark.parametrize("where", ["weight", "adamw-moment"])
def test_a_non_finite_checkpoint_is_refused_naming_the_tensor(stopped, tmp_path, capsys, where):
    """The file is re-written with a valid checksum: what is wrong is the values, and the
    message says which tensor holds them."""
    out, path = _copy(stopped, tmp_path)
    state = torch.load(path, weights_only=True)
    if where == "weight":
        tensor, name = state["model"]["blocks.0.attn.qkv.weight"], "model/blocks.0.attn.qkv.weight"
        tensor[0, 0] = float("nan")
    else:
        tensor, name = _exp_avg_sq(state)
        tensor.view(-1)[0] = float("inf")
    checkpoint.save_atomic(state, str(path))
    capsys.readouterr()
    assert _main(out, "--resume", "auto") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and name in err and "non-finite" in err
    assert ("NaN" if where == "weight" else "inf") in err
    assert "last good checkpoint" not in err and "after step" not in err
    if where == "adamw-moment":
        assert "AdamW state of" in err  # and the parameter it belongs to


def test_disk_full_during_a_checkpoint_write_keeps_the_last_one_and_says_so(tmp_path, capsys,
                                                                           monkeypatch):
    """The second checkpoint write (step 4) meets a full disk inside torch.save: one line
    naming the path and the last good checkpoint (step 2), which stays intact; once there is
    room the run continues from it."""
    calls = fill_the_disk_on_save(monkeypatch, from_call=2)
    out = tmp_path / "full"
    path = out / checkpoint.LAST
    assert _main(out, "--steps", "4", "--ckpt-every", "2") == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert len(calls) == 2 and len(err.splitlines()) == 1, err
    assert f"disk full at {path}" in err and f"last good checkpoint: {path} (step 2)" in err
    assert "--resume auto" in err
    assert checkpoint.load(str(path))["step"] == 2
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert _main(out, "--steps", "4", "--ckpt-every", "2", "--resume", "auto") == 0
    assert checkpoint.load(str(path))["step"] == 4
