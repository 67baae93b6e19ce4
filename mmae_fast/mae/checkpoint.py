"""Training checkpoints: atomic writes with checksums, ``weights_only=True`` loads, RNG state
capture, finiteness checks.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so ``torch.load(...,
weights_only=True)`` reads it): ``model``, ``optimizer``, ``scaler`` state dicts, ``step`` (the
next optimizer step; the data position and the LR schedule are functions of it), ``args`` (the
run's arguments), ``rng`` (torch CPU/CUDA and Python ``random`` states), and ``checksum``
(:func:`checksums`: a SHA-256 of every tensor's bytes, dtype and shape, and one of the other
entries), which :func:`verify` compares on reading: ``torch.load`` does not check the file.

Entries are named by their '/'-joined path: ``model/blocks.0.attn.qkv.weight``,
``optimizer/state/3/exp_avg_sq``.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import pickle
import random
import re
import tempfile
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

LAST = "checkpoint-last.pt"
#: the entry holding :func:`checksums` of the rest of the checkpoint
CHECKSUM = "checksum"
#: the key, in :func:`checksums`, of the digest of every entry that is not a tensor
VALUES = "<values>"
#: the errors of a full disk (or a full quota)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def save_atomic(obj: dict, path: str) -> str:
    """``torch.save`` of ``obj`` and its :func:`checksums` (entry ``checksum``) to a temporary
    file in the same folder, fsync, then rename over ``path``: a reader (or a run killed
    mid-write) never sees a partial file. A failed write removes the temporary file and raises
    the OSError beneath it (torch's writer wraps e.g. ENOSPC in RuntimeErrors) with ``path`` as
    its ``filename``."""
    obj = {k: v for k, v in obj.items() if k != CHECKSUM}
    obj[CHECKSUM] = checksums(obj)
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(exc)
        if cause is None or cause is exc and cause.filename:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), path) from None
    return path


def _os_error(exc: BaseException | None) -> OSError | None:
    """The first OSError in ``exc``'s chain (itself, its cause or context), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def entries(obj, prefix: str = ""):
    """``(path, leaf)`` of every value inside nested dicts / lists / tuples, depth first in
    their order; paths join keys and indices with '/'."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from entries(v, f"{prefix}{k}/")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from entries(v, f"{prefix}{i}/")
    else:
        yield prefix[:-1], obj


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and bytes (a device tensor is copied to the
    host)."""
    t = t.detach()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)};".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def checksums(obj: dict) -> dict:
    """``{path: tensor_digest}`` of every tensor in ``obj`` (its ``checksum`` entry left out)
    and ``{VALUES: SHA-256}`` of the paths and ``repr`` of every other entry. The tensors are
    hashed on a few threads (hashlib releases the GIL)."""
    tensors, values = {}, hashlib.sha256()
    for path, leaf in entries({k: v for k, v in obj.items() if k != CHECKSUM}):
        if torch.is_tensor(leaf):
            tensors[path] = leaf
        else:
            values.update(repr((path, leaf)).encode())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        out = dict(zip(tensors, pool.map(tensor_digest, tensors.values())))
    out[VALUES] = values.hexdigest()
    return out


def state_digest(tensors: dict) -> str:
    """One SHA-256 (hex) of a dict of named tensors: the identity of a set of weights, whichever
    file holds them (names and :func:`tensor_digest` of each, in sorted order)."""
    return hashlib.sha256(repr(sorted(checksums(tensors).items())).encode()).hexdigest()


def has_checksum(state) -> bool:
    """Whether ``state`` holds :func:`checksums` (entry ``checksum``)."""
    stored = state.get(CHECKSUM) if isinstance(state, dict) else None
    return isinstance(stored, dict) and VALUES in stored


def verify(state: dict, path: str) -> bool:
    """Compare ``state``'s ``checksum`` entry with its content: True if it matches, False if
    there is none (a file of another program, or an mmae_fast checkpoint older than checksums);
    a mismatch is a ValueError naming the file and the first entry that differs."""
    if not has_checksum(state):  # none, or another program's entry of that name
        return False
    stored, now = state[CHECKSUM], checksums(state)
    bad = [k for k in list(now) + [k for k in stored if k not in now]
           if stored.get(k) != now.get(k)]
    if bad:
        what = "its non-tensor entries" if bad[0] == VALUES else f"tensor {bad[0]}"
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(f"checksum mismatch: {path} is corrupt ({what}{more} differ from the "
                         f"checksum written with it); restore the file from a copy, or use "
                         f"another checkpoint")
    return True


def first_non_finite(obj, prefix: str = "") -> str | None:
    """``"<path> (NaN)"`` / ``"<path> (inf)"`` of the first floating tensor or float inside
    ``obj`` that is not finite, else None (one host read per tensor: for files being loaded)."""
    for path, leaf in entries(obj, prefix):
        if isinstance(leaf, float) and not math.isfinite(leaf):
            return f"{path} ({'NaN' if math.isnan(leaf) else 'inf'})"
        if torch.is_tensor(leaf) and leaf.is_floating_point() and not bool(
                torch.isfinite(leaf).all()):
            return f"{path} ({'NaN' if bool(torch.isnan(leaf).any()) else 'inf'})"
    return None


#: what an mmae-train checkpoint holds (``load`` rejects files without these)
KEYS = ("model", "optimizer", "scaler", "step", "args", "rng")


def load(path: str) -> dict:
    """Read an mmae-train checkpoint with ``weights_only=True`` onto the CPU; a missing,
    truncated or foreign file, one whose entries have the wrong types or whose checksum does
    not match (:func:`verify`), is a one-line ValueError naming it."""
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
    verify(state, path)
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
