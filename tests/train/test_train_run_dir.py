"""A run owns its --output-dir: a second run at once refuses naming the holder, a stale lock is
taken over, a finished run is not overwritten without --overwrite, partial writes are removed."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from mmae_fast import train
from mmae_fast.mae import checkpoint, run_dir

BASE = ["--model", "tiny", "--data", "digits", "--batch", "8", "--no-progress", "--device",
        "cpu", "--no-plot", "--no-export", "--rank-every", "0", "--warmup-steps", "0",
        "--steps", "2"]


def _main(out, *extra):
    return train.main(BASE + ["--output-dir", str(out), *extra])


def _write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / run_dir.LOCK).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-02T00:00:00"}))


def test_a_second_run_in_a_directory_in_use_refuses_naming_the_holder(tmp_path, capsys):
    """The holder is a live process (this test's parent shell stands in for a running run)."""
    out = tmp_path / "run"
    _write_lock(out, os.getppid())
    assert _main(out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {os.getppid()} on {socket.gethostname()}" in err
    assert "in use by another run" in err and not (out / checkpoint.LAST).exists()
    _write_lock(out, 1234, host="elsewhere")  # another host: liveness unknown, refused too
    assert _main(out) == 2 and "elsewhere" in capsys.readouterr().err


def test_two_runs_started_together_do_not_share_a_directory(tmp_path):
    """Two processes on one --output-dir: exactly one trains, the other exits 2 naming it."""
    out = tmp_path / "both"
    cmd = [sys.executable, "-m", "mmae_fast.train", *BASE, "--steps", "30", "--output-dir",
           str(out)]
    procs = [subprocess.Popen(cmd + ["--seed", str(s)], stderr=subprocess.PIPE, text=True)
             for s in (3, 4)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results  # however the two interleave
    loser = next(err for rc, err in results if rc == 2)
    assert "in use by another run" in loser or "holds an earlier run" in loser
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # one run's rows, not two interleaved
    assert not (out / run_dir.LOCK).exists()


def test_a_stale_lock_is_taken_over_and_said(tmp_path, capsys):
    out = tmp_path / "stale"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    _write_lock(out, dead.pid)
    (out / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")
    assert _main(out) == 0
    err = capsys.readouterr().err
    assert f"taking over the stale lock of {str(out)!r} (pid {dead.pid}, not running)" in err
    assert not (out / ".tmp-abc123.pt").exists() and not (out / run_dir.LOCK).exists()


def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path, capsys):
    out = tmp_path / "done"
    assert _main(out) == 0
    before = torch.load(out / checkpoint.LAST, weights_only=True)["step"]
    capsys.readouterr()
    assert _main(out, "--seed", "5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds an earlier run (a checkpoint" in err
    assert "--resume auto" in err and "--overwrite" in err
    assert torch.load(out / checkpoint.LAST, weights_only=True)["step"] == before
    assert _main(out, "--resume", "auto") == 0  # continuing it is fine
    assert _main(out, "--seed", "5", "--overwrite") == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1]  # the new run's rows only
    assert json.load(open(out / "args.json"))["seed"] == 5
    with pytest.raises(ValueError, match="give one of them"):
        train.parse_args(BASE + ["--output-dir", str(out), "--overwrite", "--resume", "auto"])


def test_the_lock_is_never_visible_half_written(tmp_path, monkeypatch):
    """The lock's content is written before the lock exists (a second run reading it then finds
    the holder, never an empty file it would take for a stale lock)."""
    dump = run_dir.json.dump
    seen = []

    def checking_dump(obj, f, *a, **k):
        seen.append((tmp_path / run_dir.LOCK).exists())
        return dump(obj, f, *a, **k)

    monkeypatch.setattr(run_dir.json, "dump", checking_dump)
    lock = run_dir.RunLock(str(tmp_path))
    assert seen == [False] and json.loads((tmp_path / run_dir.LOCK).read_text())["pid"] > 0
    lock.release()
    assert list(tmp_path.iterdir()) == []
