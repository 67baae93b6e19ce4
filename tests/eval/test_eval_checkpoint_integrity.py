"""mmae-eval and mmae-export check the encoder checkpoint they read (a flipped bit: checksum
mismatch; a non-finite weight: named, nothing written); a resumed linear probe refuses another
encoder or other run-defining flags; a full disk keeps the last epoch's checkpoint."""
import json
import shutil

import pytest
import torch

from eval_helpers import mae_checkpoint
from mmae_fast.eval import cli, export, finetune, linprobe
from mmae_fast.mae import checkpoint
from train_helpers import changed_tensors, fill_the_disk_on_save, flip_bit


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's error(): a usage line and the message
        return exc.code


def _commands(path, tmp_path):
    """(name, entry point, argv, output it must not write) of every reader of an encoder."""
    out = tmp_path / "out"
    common = [str(path), "--output-dir", str(out), "--device", "cpu", "--workers", "0",
              "--epochs", "1", "--batch", "16", "--max-images", "32"]
    return [("linprobe", linprobe.main, common, out / "checkpoint-last.pt"),
            ("finetune", finetune.main, common, out / "checkpoint-last.pt"),
            ("monitor", cli.main, ["monitor", str(path), "--device", "cpu", "--probe-epochs",
                                   "1", "--max-images", "32", "--no-knn"], None),
            ("export", export.main, [str(path), "-o", str(tmp_path / "enc.safetensors")],
             tmp_path / "enc.safetensors")]


def _checksummed(tmp_path):
    """A trainer-format checkpoint written with its checksum."""
    mae_checkpoint(tmp_path / "plain.pt")
    path = tmp_path / "ck.pt"
    checkpoint.save_atomic(torch.load(tmp_path / "plain.pt", weights_only=True), str(path))
    return path


def test_a_flipped_bit_is_refused_by_every_reader(tmp_path, capsys):
    path = _checksummed(tmp_path)
    before = torch.load(path, weights_only=True)
    flip_bit(path)
    changed = changed_tensors(before, torch.load(path, weights_only=True))
    assert len(changed) == 1
    for name, main, argv, output in _commands(path, tmp_path):
        capsys.readouterr()
        assert _exit_code(main, argv) == 2, name
        err = capsys.readouterr().err
        assert f"checksum mismatch: {path} is corrupt" in err and changed[0] in err, (name, err)
        assert "Traceback" not in err and (output is None or not output.exists()), name


def test_a_non_finite_encoder_is_refused_by_every_reader_naming_the_tensor(tmp_path, capsys):
    mae_checkpoint(tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    state["model"]["blocks.0.attn.qkv.weight"][1, 2] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    for name, main, argv, output in _commands(tmp_path / "nan.pt", tmp_path):
        capsys.readouterr()
        assert _exit_code(main, argv) == 2, name
        err = capsys.readouterr().err
        assert "non-finite" in err and "blocks.0.attn.qkv.weight (NaN)" in err, (name, err)
        assert str(tmp_path / "nan.pt") in err, (name, err)
        assert "Traceback" not in err and (output is None or not output.exists()), name


PROBE = ["--device", "cpu", "--workers", "0", "--epochs", "2", "--warmup-epochs", "1",
         "--batch", "16", "--max-images", "32"]


@pytest.mark.parametrize("change, match", [
    ("encoder", "was trained on the encoder of"),
    (["--blr", "0.2"], "the run used --blr 0.05, now 0.2"),
    (["--batch", "8"], "the run used --batch 16, now 8"),
    (["--weight-decay", "0.1"], "the run used --weight-decay 0.0, now 0.1"),
])
def test_a_resumed_probe_refuses_another_encoder_or_other_flags(tmp_path, capsys, change,
                                                                match):
    mae_checkpoint(tmp_path / "a.pt", seed=0)
    mae_checkpoint(tmp_path / "b.pt", seed=1)
    out = tmp_path / "probe"
    first = [str(tmp_path / "a.pt"), "--output-dir", str(out), *PROBE]
    assert _exit_code(linprobe.main, first + ["--stop-after", "1"]) == 0
    log = open(out / "log.jsonl").read()
    again = [str(tmp_path / ("b.pt" if change == "encoder" else "a.pt")), "--output-dir",
             str(out), *PROBE, "--resume", "auto"] + ([] if change == "encoder" else change)
    capsys.readouterr()
    assert _exit_code(linprobe.main, again) == 2
    err = capsys.readouterr().err
    assert match in err and str(out / "checkpoint-last.pt") in err, err
    if change == "encoder":
        assert str(tmp_path / "a.pt") in err and str(tmp_path / "b.pt") in err
    assert open(out / "log.jsonl").read() == log  # nothing of the refused run is logged
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["epoch"] == 1 and checkpoint.verify(state, str(out / "checkpoint-last.pt"))
    shutil.copy(tmp_path / "a.pt", tmp_path / "a-copy.pt")  # the same encoder in another file
    assert _exit_code(linprobe.main, [str(tmp_path / "a-copy.pt"), "--output-dir", str(out),
                                      *PROBE, "--resume", "auto"]) == 0
    assert [json.loads(r)["epoch"] for r in open(out / "log.jsonl")] == [0, 1]


def test_disk_full_during_a_probe_checkpoint_keeps_the_last_one(tmp_path, capsys, monkeypatch):
    mae_checkpoint(tmp_path / "a.pt")
    out = tmp_path / "probe"
    calls = fill_the_disk_on_save(monkeypatch, from_call=2)  # epoch 0 saved, epoch 1 not
    assert _exit_code(linprobe.main, [str(tmp_path / "a.pt"), "--output-dir", str(out),
                                      *PROBE]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    ckpt = out / "checkpoint-last.pt"
    assert len(calls) == 2 and f"disk full at {ckpt}" in err, err
    assert f"last good checkpoint: {ckpt} (epoch 1)" in err and "Traceback" not in err
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert _exit_code(linprobe.main, [str(tmp_path / "a.pt"), "--output-dir", str(out), *PROBE,
                                      "--resume", "auto"]) == 0
