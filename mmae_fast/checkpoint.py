"""Training checkpoints: atomic writes, ``weights_only=True`` loads, RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so ``torch.load(...,
weights_only=True)`` reads it): ``model``, ``optimizer``, ``scaler`` state dicts, ``step`` (the
next optimizer step; the data position and the LR schedule are functions of it), ``args`` (the
run's arguments), ``rng`` (torch CPU/CUDA and Python ``random`` states).
"""
from __future__ import annotations

import os
import random
import tempfile

import torch

LAST = "checkpoint-last.pt"


def save_atomic(obj: dict, path: str) -> str:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a reader (or a run killed mid-write) never sees a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain torch.save would (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: what an mmae-train checkpoint holds (``load`` rejects files without these)
KEYS = ("model", "optimizer", "scaler", "step", "args", "rng")


def load(path: str) -> dict:
    """Read an mmae-train checkpoint with ``weights_only=True`` onto the CPU; a missing,
    truncated or foreign file is a one-line ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint file at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of another program, not a torch file...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--resume {path!r}: not a readable checkpoint (truncated or not "
                         f"written by torch.save: {reason[:120]})") from None
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"--resume {path!r}: not an mmae-train checkpoint (missing "
                         f"{', '.join(missing)}); pass a checkpoint-last.pt written by mmae-train")
    return state


def all_finite(tensors) -> bool:
    """Whether every tensor is free of NaN/Inf (one host sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(),
             "python": _to_lists(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
