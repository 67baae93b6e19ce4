"""``mmae-eval``: evaluation of pretrained encoders (see docs/evaluation.md).

    mmae-eval linprobe CKPT --data imagefolder --data-path DIR --output-dir OUT   # paper protocol
    mmae-eval finetune CKPT --data imagefolder --data-path DIR --output-dir OUT   # paper protocol
    mmae-eval monitor CKPT [CKPT ...]          # quick: AdamW probe, kNN, effective rank
    mmae-eval CKPT [CKPT ...]                  # = monitor (the original interface)
"""
from __future__ import annotations

import argparse
import os
import sys

from ..mae import errors

COMMANDS = ("linprobe", "finetune", "monitor")


def monitor_parser() -> argparse.ArgumentParser:
    p = errors.OneLineParser(prog="mmae-eval monitor",
                             description="Quick monitors of frozen encoders (not the paper's "
                                         "protocols): AdamW linear probe, kNN, effective rank")
    p.add_argument("checkpoints", nargs="+", help="training checkpoints or encoder exports")
    p.add_argument("--data", help="digits or imagefolder (default: the run's --data, else digits)")
    p.add_argument("--data-path", help="imagefolder root with train/ and val/")
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--no-knn", dest="knn", action="store_false")
    p.add_argument("--max-images", type=int,
                   help="evenly spaced train and val images to use (default: all)")
    p.add_argument("--batch", type=int, default=256, help="feature-extraction batch")
    p.add_argument("--workers", type=int, default=0, help="data loader workers (imagefolder)")
    p.add_argument("--num-heads", type=int, help="only for inputs without a preset name")
    p.add_argument("--device", help="default: the GPU when there is one, else the CPU")
    return p


def monitor_main(argv) -> int:
    from .encoder import build_vit, load_encoder
    from .monitor import TABLE, evaluate_model, format_table
    p = monitor_parser()
    args = p.parse_args(argv)
    for name in ("probe_epochs", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if args.max_images is not None and args.max_images < 2:
        p.error(f"--max-images must be >= 2 (the probe's BatchNorm normalises over the train "
                f"images), got {args.max_images}")
    if args.data is not None and args.data_path:
        from ..mae.data import resolve_data
        try:
            resolve_data(args.data, args.data_path)
        except ValueError as exc:
            p.error(str(exc))
    rows = []
    for path in args.checkpoints:
        try:
            state, info = load_encoder(path, num_heads=args.num_heads)
            data = args.data or ("imagefolder" if args.data_path else None) \
                or info["args"].get("data") or "digits"
            if data == "synthetic":
                raise ValueError(f"{path}: trained on synthetic data; pass --data digits or "
                                 f"--data imagefolder --data-path DIR to evaluate")
            model = build_vit(state, info["kwargs"], num_classes=0)
            res = evaluate_model(model, data=data, img_size=info["kwargs"]["img_size"],
                                 data_path=(args.data_path or info["args"].get("data_path"))
                                 if data == "imagefolder" else None,
                                 device=args.device, probe_epochs=args.probe_epochs,
                                 knn=args.knn, max_images=args.max_images, batch=args.batch,
                                 workers=args.workers)
        except ValueError as exc:
            several = len(args.checkpoints) > 1 and path not in str(exc)
            p.error(f"{path}: {exc}" if several else str(exc))
        rows.append(res | {"name": os.path.basename(os.path.dirname(os.path.abspath(path)))})
    print(format_table(rows, TABLE))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] == "linprobe":
        from .linprobe import main as run
        return run(argv[1:])
    if argv and argv[0] == "finetune":
        from .finetune import main as run
        return run(argv[1:])
    if argv and argv[0] == "monitor":
        argv = argv[1:]
    return monitor_main(argv)


if __name__ == "__main__":
    sys.exit(main())
