"""Experiment trackers for ``mmae-train`` and ``mmae-eval linprobe`` / ``finetune``:
``--tensorboard`` (event files under ``<output-dir>/tensorboard/``, written by
``torch.utils.tensorboard.SummaryWriter``) and ``--wandb`` (Weights & Biases, offline unless
``WANDB_MODE`` says otherwise, its run directory under ``<output-dir>/wandb/``).

Both receive the rows the run appends to its JSONL log, every numeric value under
``<group>/<key>`` at the row's step; a row with an ``epoch`` also goes to TensorBoard a second
time under ``<group>_epoch_1000x/<key>`` at step ``int(epoch * 1000)`` (the official MAE code's
second axis), and to wandb as the metric ``epoch_1000x`` beside the row. Only rank 0 tracks.

A tracker that fails (its package's import, ``init``, a full disk, an exception from ``log``)
prints one warning line to stderr and is off for the rest of the run; the run goes on.
"""
from __future__ import annotations

import math
import os
import sys

INSTALL = "pip install 'mmae_fast[track]'"


def check_available(tensorboard: bool, wandb: bool) -> None:
    """ValueError (one line: the flag, the missing package, the install command) when a
    requested tracker's package cannot be imported."""
    for flag, wanted, module in (("--tensorboard", tensorboard, "tensorboard"),
                                 ("--wandb", wandb, "wandb")):
        if not wanted:
            continue
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f"{flag} needs the '{module}' package, which is not installed: "
                             f"{INSTALL}") from None


def add_args(p) -> None:
    """The tracker flags, shared by ``mmae-train`` and ``mmae-eval linprobe`` / ``finetune``."""
    p.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard event files under <output-dir>/tensorboard/ (needs "
                        f"{INSTALL})")
    p.add_argument("--wandb", action="store_true",
                   help="Weights & Biases run, offline unless WANDB_MODE is set, its files under "
                        f"<output-dir>/wandb/ (needs {INSTALL})")
    p.add_argument("--wandb-project", default="mmae_fast", help="wandb project (default "
                                                                "mmae_fast)")
    p.add_argument("--wandb-name", help="wandb run name (default: the output directory's name)")


def scalars(row: dict) -> dict:
    """The numeric entries of ``row`` (bools and None left out), as floats."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The trackers ``args`` asks for (``args.tensorboard``, ``args.wandb``), on rank 0 only.

    ``log(row, step)``: every numeric value of ``row`` under ``<group>/<key>`` at ``step`` (and
    at ``epoch_1000x`` when ``epoch_axis`` and the row has an epoch);
    ``images({name: png})`` (wandb only), ``close()``. Every call is safe: a failing tracker
    warns once (``prog: WARNING ...``) and is dropped."""

    def __init__(self, args, *, group: str, prog: str, rank: int = 0, config: dict | None = None,
                 epoch_axis: bool = True):
        self.group, self.prog, self.epoch_axis = group, prog, epoch_axis
        self.tb = self.wb = None
        if rank != 0:
            return
        out = args.output_dir
        if getattr(args, "tensorboard", False):
            self._guard("tensorboard", lambda: self._open_tb(os.path.join(out, "tensorboard")))
        if getattr(args, "wandb", False):
            self._guard("wandb", lambda: self._open_wandb(args, out, config))

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wb is not None

    # ---------------------------------------------------------------- set-up
    def _open_tb(self, logdir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(log_dir=logdir)

    def _open_wandb(self, args, out: str, config) -> None:
        import wandb
        os.makedirs(out, exist_ok=True)
        mode = None if os.environ.get("WANDB_MODE") else "offline"
        name = args.wandb_name or os.path.basename(os.path.abspath(out))
        self.wb = wandb.init(project=args.wandb_project, name=name, dir=out, mode=mode,
                             config=dict(vars(args)) if config is None else config,
                             settings=wandb.Settings(console="off", silent=True))
        if self.epoch_axis:
            self.wb.define_metric("epoch_1000x")

    # ---------------------------------------------------------------- failures
    def _guard(self, which: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a tracker never stops the run
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"{self.prog}: WARNING {which} logging failed ({type(exc).__name__}: {first}); "
                  f"{which} is off for the rest of the run", file=sys.stderr, flush=True)
            self._drop(which)

    def _drop(self, which: str) -> None:
        if which == "tensorboard":
            tb, self.tb = self.tb, None
            if tb is not None:
                try:
                    tb.close()
                except Exception:  # noqa: BLE001
                    pass
        else:
            wb, self.wb = self.wb, None
            if wb is not None:
                try:
                    wb.finish(exit_code=1)
                except Exception:  # noqa: BLE001
                    pass

    # ---------------------------------------------------------------- logging
    def log(self, row: dict, step: int) -> None:
        """Every numeric value of ``row`` at ``step``; with ``row["epoch"]`` also at
        ``int(epoch * 1000)`` (TensorBoard: a second group, wandb: the ``epoch_1000x`` metric)."""
        if not self.active:
            return
        values = scalars(row)
        epoch = row.get("epoch") if self.epoch_axis else None
        e1000 = (int(epoch * 1000) if isinstance(epoch, (int, float)) and math.isfinite(epoch)
                 else None)
        if self.tb is not None:
            def tb_log():
                for key, v in values.items():
                    self.tb.add_scalar(f"{self.group}/{key}", v, step)
                    if e1000 is not None:
                        self.tb.add_scalar(f"{self.group}_epoch_1000x/{key}", v, e1000)
                self.tb.flush()
            self._guard("tensorboard", tb_log)
        if self.wb is not None:
            payload = {f"{self.group}/{key}": v for key, v in values.items()}
            if e1000 is not None:
                payload["epoch_1000x"] = e1000
            self._guard("wandb", lambda: self.wb.log(payload, step=step))

    def images(self, pngs: dict) -> None:
        """``{name: path}`` of PNG files, as ``wandb.Image`` (missing files are left out)."""
        pngs = {k: p for k, p in pngs.items() if p and os.path.exists(p)}
        if self.wb is None or not pngs:
            return

        def log_images():
            import wandb
            self.wb.log({f"{self.group}/{k}": wandb.Image(p) for k, p in pngs.items()})
        self._guard("wandb", log_images)

    def close(self) -> None:
        """Flush and close the event files; finish the wandb run."""
        if self.tb is not None:
            self._guard("tensorboard", self.tb.close)
            self.tb = None
        if self.wb is not None:
            self._guard("wandb", self.wb.finish)
            self.wb = None
