"""``mmae-eval`` and the evaluation API; the code lives in :mod:`mmae_fast.eval`.

    mmae-eval linprobe CKPT ...   the paper's linear probe (LARS, BN + Linear, 90 epochs)
    mmae-eval finetune CKPT ...   the paper's fine-tuning (layer decay, mixup/cutmix, RandAugment)
    mmae-eval [monitor] CKPT ...  quick monitors: AdamW probe, kNN, effective rank

See docs/evaluation.md. This module keeps the original names importable.
"""
from __future__ import annotations

import sys

from .eval.cli import main
from .eval.monitor import (TABLE, evaluate_model, extract_features, format_table, knn_accuracy,
                           linear_probe, load_model)

__all__ = ["TABLE", "evaluate_model", "extract_features", "format_table", "knn_accuracy",
           "linear_probe", "load_model", "main"]

if __name__ == "__main__":
    sys.exit(main())
