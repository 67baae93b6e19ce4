"""--resume refuses a checkpoint whose run-defining flags differ from the new ones (a silently
different schedule, data order, model or loss), with one line naming the flag and both values;
an optimisation flag changes only when --override-on-resume names it, and that is recorded."""
import json
import shutil

import pytest

from mmae_fast import train
from mmae_fast.mae import checkpoint

BASE = ["--model", "tiny", "--img-size", "16", "--data", "digits", "--batch", "8", "--steps", "4",
        "--warmup-steps", "1", "--precision", "fp32", "--device", "cpu", "--no-progress",
        "--no-plot", "--no-export"]


def test_resume_with_other_flags_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(BASE + ["--output-dir", out, "--stop-after", "2"]) == 0
    capsys.readouterr()
    rc = train.main(BASE + ["--output-dir", out, "--resume", "auto", "--seed", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "--seed" in err and len(err.strip().splitlines()) == 1
    assert train.main(BASE + ["--output-dir", out, "--resume", "auto"]) == 0


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped after step 2 of 4: its directory."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert train.main(BASE + ["--output-dir", str(out), "--stop-after", "2"]) == 0
    return out


@pytest.mark.parametrize("flag, stored, given", [
    (["--lr", "0.01"], "None", "0.01"),
    (["--blr", "0.003"], "0.00015", "0.003"),
    (["--min-lr", "1e-06"], "0.0", "1e-06"),
    (["--weight-decay", "0.1"], "0.05", "0.1"),
    (["--warmup-steps", "2"], "1", "2"),
    (["--lamb", "0.5"], "0.01", "0.5"),
    (["--mu", "3"], "1.0", "3.0"),
    (["--centering"], "False", "True"),
    (["--estimator", "taylor"], "'exact'", "'taylor'"),
    (["--no-norm-pix-loss"], "False", "True"),
    (["--drop-path", "0.1"], "0.0", "0.1"),
])
def test_a_changed_optimisation_flag_is_refused_naming_both_values(stopped, tmp_path, capsys,
                                                                   flag, stored, given):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    capsys.readouterr()
    assert train.main(BASE + ["--output-dir", str(out), "--resume", "auto", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"the run used {flag[0]} {stored}, now {given}" in err, err
    assert "--override-on-resume" in err


def test_an_override_on_resume_is_explicit_and_recorded(stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    resume = BASE + ["--output-dir", str(out), "--resume", "auto"]
    try:  # a usage error: argparse exits 2
        rc = train.main(resume + ["--lr", "0.01", "--override-on-resume", "seed"])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    assert "--override-on-resume: --seed cannot be overridden" in capsys.readouterr().err
    assert train.main(resume + ["--lr", "0.01", "--lamb", "0.5",
                                "--override-on-resume", "lr,lamb"]) == 0
    err = capsys.readouterr().err
    assert "overriding on resume at step 2: --lr None -> 0.01, --lamb 0.01 -> 0.5" in err
    saved = json.load(open(out / "args.json"))
    assert saved["lr"] == 0.01 and saved["resume_overrides"] == [
        {"step": 2, "flag": "lr", "from": None, "to": 0.01},
        {"step": 2, "flag": "lamb", "from": 0.01, "to": 0.5}]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 3] and rows[1]["lr"] == train.lr_at(3, 4, 1, 0.01, 0.0)
    # the checkpoint now holds the overridden values: resuming with them needs no override
    assert checkpoint.load(str(out / checkpoint.LAST))["args"]["resume_overrides"] == \
        saved["resume_overrides"]
    with pytest.raises(ValueError, match="--override-on-resume needs --resume"):
        train.parse_args(BASE + ["--output-dir", str(tmp_path / "new"),
                                 "--override-on-resume", "lr"])
