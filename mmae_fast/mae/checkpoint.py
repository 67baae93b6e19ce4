"""Training checkpoints: atomic writes, ``weights_only=True`` loads, RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so ``torch.load(...,
weights_only=True)`` reads it): ``model``, ``optimizer``, ``scaler`` state dicts, ``step`` (the
next optimizer step; the data position and the LR schedule are functions of it), ``args`` (the
run's arguments), ``rng`` (torch CPU/CUDA and Python ``random`` states).
"""
from __future__ import annotations

import math
import os
import pickle
import random
import re
import tempfile
import warnings
from collections.abc import Iterable

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
    truncated or foreign file, or one whose entries have the wrong types, is a one-line
    ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint file at {path!r}")
    try:
        with warnings.catch_warnings():  # a plain pickle: torch warns about its protocol first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # e.g. a file of random bytes
            raise ValueError(f"--resume {path!r}: not a readable checkpoint (not written by "
                             f"torch.save: {first_line(exc)})") from None
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(f"--resume {path!r}: holds Python objects other than tensors{what}: "
                         f"not an mmae-train checkpoint (e.g. the official MAE/M-MAE code's, or "
                         f"a plain pickle); pass a checkpoint-last.pt written by mmae-train"
                         ) from None
    except Exception as exc:  # truncated zip, not a torch file...
        raise ValueError(f"--resume {path!r}: not a readable checkpoint (truncated or not "
                         f"written by torch.save: {first_line(exc)})") from None
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"--resume {path!r}: not an mmae-train checkpoint (missing "
                         f"{', '.join(missing)}); pass a checkpoint-last.pt written by mmae-train")
    problem = _type_problem(state)
    if problem:
        raise unusable(path, problem)
    return state


def unusable(path: str, reason: str) -> ValueError:
    """The one-line error for a checkpoint whose content cannot be restored."""
    return ValueError(f"--resume {path!r}: not a usable mmae-train checkpoint ({reason}); pass "
                      f"a checkpoint-last.pt written by mmae-train")


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, ANSI escapes removed, at most 120 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _type_problem(state: dict) -> str | None:
    """What in ``state`` does not have the type mmae-train writes, or None."""
    if not isinstance(state["model"], dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state["model"].items()):
        return "'model' is not a dict of named tensors"
    opt = state["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)
            and isinstance(opt.get("param_groups"), list)):
        return "'optimizer' is not an optimizer state dict (state, param_groups)"
    if not isinstance(state["scaler"], dict):
        return "'scaler' is not a dict"
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"'step' is {step!r}, not a step number"
    if not isinstance(state["args"], dict):
        return "'args' is not a dict"
    rng = state["rng"]
    if not (isinstance(rng, dict) and torch.is_tensor(rng.get("torch"))
            and rng["torch"].dtype == torch.uint8 and isinstance(rng.get("python"), list)):
        return "'rng' is not the RNG state mmae-train saves (torch, python)"
    return None


def _leaves(obj):
    """The tensors and floats inside ``obj`` (nested dicts, lists, tuples, other iterables)."""
    if torch.is_tensor(obj) or isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        for v in obj:
            yield from _leaves(v)


def all_finite(state) -> bool:
    """Whether every floating tensor and float inside ``state`` (tensors, or a state dict:
    nested dicts / lists of them) is free of NaN/Inf (one host sync per device)."""
    by_device = {}
    for x in _leaves(state):
        if isinstance(x, float):
            if not math.isfinite(x):
                return False
        elif x.is_floating_point():
            by_device.setdefault(x.device, []).append(torch.isfinite(x).all())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


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
