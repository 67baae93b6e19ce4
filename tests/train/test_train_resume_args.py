"""--resume refuses a checkpoint whose run-defining flags differ from the new ones (a silently
different schedule, data order or model), with one line naming the flag."""
from mmae_fast import train

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
