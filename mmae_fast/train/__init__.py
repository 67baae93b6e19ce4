"""M-MAE pretraining: ``loss = L_MAE + lamb·R(cls) + L_CE(online head)`` on a timm ViT MAE.

    python -m mmae_fast.train --model tiny --data digits --reg tcr --steps 300      # CPU
    torchrun --nproc_per_node 8 -m mmae_fast.train --recipe mmae-vitl --data-path /data/imagenet

Modules, in reading order: ``cli`` (flags, checks) and ``recipes`` (``--recipe``), ``step`` (the
step: forward, losses, backward, update), ``loop`` (set-up, logging, checkpoints), ``resume``
(what a resumed run must share with its checkpoint), ``regularisers`` (R under DDP), ``health``
(spectrum and per-term gradient norms at log steps), ``schedule`` (LR, masks), ``env``
(torchrun), ``outputs``; trackers: ``mmae_fast.track``.
See docs/training.md.
"""
from __future__ import annotations

import os
import sys

from .cli import build_parser, check_args, parse_args
from .env import RankLocalError
from .loop import Diverged, train
from .outputs import plot_curves, read_metrics
from .schedule import lr_at, mask_noise, param_groups

__all__ = ["Diverged", "build_parser", "check_args", "lr_at", "main", "mask_noise",
           "param_groups", "parse_args", "plot_curves", "read_metrics", "train"]


def main(argv=None) -> int:
    """``mmae-train``: an argument error, a bad --resume or a data error is one line (exit 2);
    a diverged run one line (exit 1). Under torchrun every rank exits with that
    code but only rank 0 prints, except an error only one rank may meet (``RankLocalError``: a
    bad image file among its own, its GPU index), which the rank that met it prints."""
    parser = build_parser()
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        args = parse_args(argv, log=print if rank0 else (lambda *_: None))
    except ValueError as exc:
        if not rank0:
            return 2
        parser.error(str(exc))
    try:
        result = train(args)
    except ValueError as exc:
        if rank0 or isinstance(exc, RankLocalError):
            print(f"mmae-train: error: {exc}", file=sys.stderr)
        return 2
    except Diverged as exc:
        if rank0:
            print(f"mmae-train: {exc}", file=sys.stderr)
        return 1
    if rank0:
        m = result["metrics"] or {}
        skipped = f"  skipped {result['skipped']} non-finite steps" if result["skipped"] else ""
        print(f"steps {result['start_step']}->{result['end_step']} of {result['total_steps']}  "
              f"loss {m.get('loss', float('nan')):.4f}  wall {result['wall_s']:.1f}s  "
              f"run dir {result['run_dir']}{skipped}")
    return 0
