"""mmae-eval linprobe / finetune --tensorboard / --wandb: every scalar of each log.jsonl row
(accuracies, losses, lr) at step = the epoch, read back with TensorBoard's EventAccumulator
and from the offline wandb run's records; a missing package is one usage line."""
import json
import sys

import pytest

from eval_helpers import mae_checkpoint
from mmae_fast.eval import finetune, linprobe
from track_helpers import numeric, tensorboard_scalars, wandb_offline_run

SMALL = ["--device", "cpu", "--workers", "0", "--epochs", "2", "--warmup-epochs", "1",
         "--batch", "32", "--max-images", "64"]


def _rows(out):
    return [json.loads(line) for line in open(out / "log.jsonl")]


def test_linprobe_accuracies_reach_tensorboard_and_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline
    mae_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "lp"
    assert linprobe.main([str(tmp_path / "ck.pt"), "--output-dir", str(out), *SMALL, "--blr",
                          "40", "--tensorboard", "--wandb"]) == 0
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1]
    tb = tensorboard_scalars(out / "tensorboard")
    run = wandb_offline_run(out)
    keys = set()
    for row in rows:
        for key, value in numeric(row).items():
            keys.add(key)
            assert tb[f"linprobe/{key}"][row["epoch"]] == pytest.approx(value, rel=1e-6,
                                                                         abs=1e-30)
            assert run["history"][row["epoch"]][f"linprobe/{key}"] == pytest.approx(value)
    assert {"top1", "top5", "loss", "train_loss", "lr"} <= keys
    assert set(tb) == {f"linprobe/{k}" for k in keys}
    assert run["config"]["blr"] == 40 and run["config"]["epochs"] == 2


def test_finetune_accuracies_reach_tensorboard(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "ft"
    assert finetune.main([str(tmp_path / "ck.pt"), "--output-dir", str(out), *SMALL,
                          "--epochs", "1", "--tensorboard"]) == 0
    (row,) = _rows(out)
    tb = tensorboard_scalars(out / "tensorboard")
    assert set(tb) == {f"finetune/{k}" for k in numeric(row)}
    for key, value in numeric(row).items():
        assert tb[f"finetune/{key}"] == {0: pytest.approx(value, rel=1e-6, abs=1e-30)}


@pytest.mark.parametrize("main, kind", [(linprobe.main, "linprobe"), (finetune.main, "finetune")])
@pytest.mark.parametrize("flag, module", [("--tensorboard", "tensorboard"), ("--wandb", "wandb")])
def test_a_missing_package_is_one_usage_line(tmp_path, capsys, monkeypatch, main, kind, flag,
                                             module):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ImportError
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "ck.pt"), "--output-dir", str(tmp_path / "o"), *SMALL, flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"mmae-eval {kind}: error: {flag} needs the '{module}' package, which is "
                       f"not installed: pip install 'mmae_fast[track]'")
