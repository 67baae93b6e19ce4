"""``--resume``: read a checkpoint, check it against this run's flags and its own content, restore
it.

A resumed run's flags are of three kinds (docs/training.md, "Determinism, checkpoints, resume"):

- :data:`FIXED`: the checkpoint cannot continue under another value (the model's shape, the data
  order, the schedule's length, the numerics): refused;
- :data:`OPTIMISATION`: they change what is optimised or how (the lr schedule, weight decay, the
  loss and its regulariser): refused unless named in ``--override-on-resume``; an override is
  said on stderr and recorded in the run's arguments (``resume_overrides``: step, flag, from,
  to), which ``args.json`` and later checkpoints hold;
- every other flag (device, backend, data path and loader, logging, outputs) may change.

The checkpoint's checksum is verified (``checkpoint.load``; a file without one is resumed with a
warning), and its weights, AdamW moments and loss-scaler state must be finite.
"""
from __future__ import annotations

import os
import sys

from ..mae import checkpoint

#: flags a resumed run must share with the checkpoint's
FIXED = ("model", "steps", "epochs", "batch", "accum_iter", "seed", "cls_norm", "online_head",
         "reg", "precision", "data", "img_size", "mask_ratio")
#: flags that change the optimisation: shared with the checkpoint's, or ``--override-on-resume``
OPTIMISATION = ("lr", "blr", "min_lr", "warmup_steps", "warmup_epochs", "weight_decay", "lamb",
                "mu", "centering", "estimator", "grad_semantics", "norm_pix_loss", "drop_path")


#: ``args`` keys set by a flag that turns them off: (the flag's key)
INVERTED = {"norm_pix_loss": "no_norm_pix_loss"}


def flag(key: str) -> str:
    """The command-line flag of the ``args`` key ``key``."""
    return "--" + INVERTED.get(key, key).replace("_", "-")


def shown(key: str, value):
    """``value`` of ``key`` as its flag's value (an inverted flag is on when the key is off)."""
    return (not value) if key in INVERTED and isinstance(value, bool) else value


def parse_overrides(value) -> list[str]:
    """``--override-on-resume lr,lamb`` (names with or without ``--``, ``-`` or ``_``; or a
    list of them) -> the ``args`` keys; a flag outside :data:`OPTIMISATION` is a ValueError
    naming it."""
    keys = []
    names = value if isinstance(value, (list, tuple)) else (value or "").split(",")
    for name in names:
        key = name.strip().lstrip("-").replace("-", "_")
        key = {v: k for k, v in INVERTED.items()}.get(key, key)
        if not key:
            continue
        if key not in OPTIMISATION:
            why = ("is fixed for a run: resume with its value or start a new --output-dir"
                   if key in FIXED else "is not a flag that --override-on-resume takes")
            raise ValueError(f"--override-on-resume: {flag(key)} cannot be overridden ({why}); "
                             f"it takes {', '.join(flag(k)[2:] for k in OPTIMISATION)}")
        keys.append(key)
    return keys


def resume(args, model, opt, scaler, ckpt_path: str, total: int):
    """Restore ``--resume``'s checkpoint into ``model``, ``opt``, ``scaler`` and the RNGs ->
    (start step, (path, step) of the last good checkpoint, or None for a fresh run). Sets
    ``args.resume_overrides`` (the checkpoint's, plus this resume's)."""
    args.resume_overrides = []
    overridable = getattr(args, "override_on_resume", None) or ()
    path = ckpt_path if args.resume == "auto" else args.resume
    if not path or (args.resume == "auto" and not os.path.exists(ckpt_path)):
        return 0, None
    state = checkpoint.load(path)  # also checks the entries' types and the checksum
    bad = checkpoint.first_non_finite({"model": state["model"],
                                       "optimizer": {"state": state["optimizer"]["state"]},
                                       "scaler": state["scaler"]})
    if bad:
        raise ValueError(f"--resume {path!r}: the checkpoint holds non-finite values: "
                         f"{_name_moment(bad, model, opt)}; it cannot be resumed (mmae-train "
                         f"never saves such a state: the file was changed after it was "
                         f"written); resume from another checkpoint or start a new run")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise ValueError(f"--resume {path!r}: its weights do not fit --model {args.model} with "
                         f"these flags ({first}); resume with the run's own flags") from None
    saved = state["args"]
    for key in FIXED + OPTIMISATION:
        if key in saved and saved[key] != getattr(args, key, None) and (
                key in FIXED or key not in overridable):
            hint = "" if key in FIXED else f", or name it in --override-on-resume {flag(key)[2:]}"
            raise ValueError(f"--resume {path!r}: the run used {flag(key)} "
                             f"{shown(key, saved[key])!r}, now "
                             f"{shown(key, getattr(args, key, None))!r}; resume with the run's "
                             f"own flags "
                             f"(or start a new --output-dir){hint}")
    start = state["step"]
    args.resume_overrides = list(saved.get("resume_overrides") or []) + [
        {"step": start, "flag": key, "from": saved.get(key), "to": getattr(args, key)}
        for key in overridable if saved.get(key) != getattr(args, key)]
    for group, decay in zip(opt.param_groups, (args.weight_decay, 0.0)):
        group["weight_decay"] = decay  # the optimizer state holds the run's; an override wins
    if not state["scaler"] and scaler.is_enabled():
        raise ValueError(f"--resume {path!r}: the run had no fp16 loss scaling; resume with its "
                         f"own --precision")
    # whatever else in the file cannot be restored: one line naming it, not a traceback
    for what, restore, value in (("loss-scaler state", scaler.load_state_dict, state["scaler"]),
                                 ("RNG state", checkpoint.set_rng_state, state["rng"])):
        try:
            if value:
                restore(value)
        except Exception as exc:  # noqa: BLE001
            raise checkpoint.unusable(path, f"its {what}: {checkpoint.first_line(exc)}") from None
    if start > total:
        raise ValueError(f"--resume {path!r}: the checkpoint is at step {start}, past --steps "
                         f"{total}")
    if not checkpoint.has_checksum(state):
        print(f"mmae-train: WARNING {path} has no checksum (written before mmae-train stored "
              f"one): its tensors are not verified", file=sys.stderr)
    changed = [o for o in args.resume_overrides if o["step"] == start]
    if changed:
        print(f"mmae-train: overriding on resume at step {start}: " + ", ".join(
            f"{flag(o['flag'])} {shown(o['flag'], o['from'])!r} -> "
            f"{shown(o['flag'], o['to'])!r}" for o in changed)
            + " (recorded in args.json as resume_overrides)", file=sys.stderr)
    return start, (path, start)


def _name_moment(bad: str, model, opt) -> str:
    """``optimizer/state/3/exp_avg_sq (inf)`` -> the same, with the parameter it belongs to."""
    parts = bad.split("/")
    if parts[0] != "optimizer" or len(parts) < 3 or not parts[2].isdigit():
        return bad
    params = [p for group in opt.param_groups for p in group["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    index = int(parts[2])
    if index >= len(params):
        return bad
    return f"{bad}, the AdamW state of {names.get(id(params[index]), '?')}"
