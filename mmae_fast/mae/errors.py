"""Errors of the application that name their cause for the user (a one-line message), and the
pieces every entry point shares to end such an error in one line on stderr with exit code 2."""
from __future__ import annotations

import argparse
import os


class RankLocalError(ValueError):
    """An error that this rank may have hit alone (its own image files, its own GPU): under
    torchrun the rank that raised it prints it (other errors: rank 0 only)."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``<prog>: error: <message>``, on stderr
    (exit code 2); the usage stays in ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def writable_dir(path: str, flag: str) -> str:
    """Create the directory ``path`` (and its parents) for the output of ``flag``; a ValueError
    naming the flag, the path and the reason when it cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag} {path!r}: cannot create it ({exc.strerror or exc}); give a "
                         f"writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: not writable; give a writable directory")
    return path

