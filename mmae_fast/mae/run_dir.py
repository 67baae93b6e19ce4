"""A run owns its output directory: one lock file while it runs, no silent reuse of a directory
that holds another run, no leftovers of an interrupted checkpoint write.

The lock ``<dir>/.mmae-train.lock`` holds the owner's pid, host and start time. A second run
refuses with one line naming the holder; a lock whose process is dead (same host) is taken over,
and that is said on stderr.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import sys
import time

LOCK = ".mmae-train.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``RunLock(run_dir)`` claims ``run_dir`` (ValueError naming the holder if a live run has
    it); ``release()`` gives it back (also as a context manager)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        # the lock appears whole: written to a private file, then hard-linked into place
        # (fails if it exists), so a second run never reads a live run's lock half-written
        private = f"{self.path}.{os.getpid()}"
        with open(private, "w") as f:
            json.dump(me, f)
        try:
            for _ in range(2):
                try:
                    os.link(private, self.path)
                except FileExistsError:
                    self._take_over_if_stale(run_dir)
                    continue
                self.held = True
                return
        finally:
            os.unlink(private)
        raise ValueError(f"--output-dir {run_dir!r}: could not claim its lock {self.path}")

    def _take_over_if_stale(self, run_dir: str) -> None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder = None  # unreadable: a run killed between creating and writing it
        if holder is not None and (host != socket.gethostname() or _alive(pid)):
            raise ValueError(
                f"--output-dir {run_dir!r} is in use by another run (pid {pid} on {host}, "
                f"started {holder.get('started', '?')}); wait for it, give another "
                f"--output-dir, or delete {self.path} if that run is gone")
        what = f"pid {holder['pid']}, not running" if holder else "unreadable"
        print(f"mmae-train: taking over the stale lock of {run_dir!r} ({what})",
              file=sys.stderr)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if getattr(self, "held", False):
            self.held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def holds_a_run(run_dir: str, checkpoint_name: str) -> str | None:
    """What in ``run_dir`` belongs to an earlier run (its checkpoint or logged metrics), else
    None."""
    ckpt = os.path.join(run_dir, checkpoint_name)
    if os.path.exists(ckpt):
        return f"a checkpoint ({ckpt})"
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        return f"logged metrics ({metrics})"
    return None


def remove_partial_writes(run_dir: str) -> list[str]:
    """Delete the temporary files of checkpoint writes that a killed run left (``.tmp-*.pt``,
    ``checkpoint.save_atomic``); call it while holding the lock. Returns what was removed."""
    removed = []
    for path in glob.glob(os.path.join(run_dir, ".tmp-*.pt")):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
