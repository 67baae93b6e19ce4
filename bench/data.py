"""Image-folder pipeline throughput (img/s): the trainer's ``--data imagefolder`` batches.

Generates a JPEG folder (``--images`` files, ImageNet-like sizes: sides drawn in 300-500 px,
quality 90) once under ``--folder``, then times ``source.batch(step)`` for each pipeline:

    pil   PIL decode + torchvision RandomResizedCrop/flip/normalise in the loader workers
    gpu   workers read bytes; nvJPEG decode and the batched augmentation on the device
          (on the CPU: its fallback, PIL decode in the workers, batched augmentation on the CPU)

img/s = images of the timed batches / their wall time (after ``--warmup`` batches, device
synchronised at the end), the batch delivered on the training device.

    python bench/data.py --quick                     # CPU: 64 images, batch 16
    python bench/data.py --device cuda --batch 256   # make gpu-check

Writes ``<out>/<device slug>/data-<time>.json`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import common

SCHEMA = "mmae_fast.bench.data"
FIELDS = ("pipeline", "device", "workers", "batch", "img_size", "batches", "img_per_s",
          "status", "reason")


def make_folder(root: Path, images: int, seed: int = 0) -> Path:
    """``root/train/c{k}/{i}.jpg``: ``images`` random-noise-plus-gradient JPEGs in 10 classes
    (kept if already complete)."""
    from PIL import Image
    import numpy as np
    files = sorted(root.glob("train/*/*.jpg"))
    if len(files) == images:
        return root
    rng = np.random.default_rng(seed)
    for i in range(images):
        h, w = rng.integers(300, 501, size=2)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        px = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / "train" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(folder / f"{i}.jpg", quality=90)
    return root


def measure(pipeline: str, args, device: torch.device) -> dict:
    from mmae_fast.mae import data
    row = {"pipeline": pipeline, "device": str(device), "workers": args.workers,
           "batch": args.batch, "img_size": args.img_size, "batches": args.batches,
           "img_per_s": None, "status": "ok", "reason": None}
    try:
        source = data.build("imagefolder", img_size=args.img_size, batch_per_rank=args.batch,
                            seed=0, data_path=str(args.folder), workers=args.workers,
                            pipeline=pipeline, device=device)
    except (RuntimeError, ValueError) as exc:
        return row | {"status": "error", "reason": str(exc).splitlines()[0]}
    total = args.warmup + args.batches
    if total > source.steps_per_epoch:
        return row | {"status": "skipped", "reason": f"{total} batches > one epoch "
                                                     f"({source.steps_per_epoch}); add --images"}
    for step in range(args.warmup):
        source.batch(step)
    common.synchronize(device)
    t0 = time.perf_counter()
    for step in range(args.warmup, total):
        imgs, _ = source.batch(step)
        imgs = imgs.to(device, non_blocking=True)
    common.synchronize(device)
    return row | {"img_per_s": args.batches * args.batch / (time.perf_counter() - t0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 images, batch 16, 2 workers")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--pipelines", nargs="+", default=["pil", "gpu"])
    p.add_argument("--images", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--batches", type=int, help="timed batches")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--folder", type=Path, default=Path("runs/bench-jpeg"))
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.images = args.images or (64 if args.quick else 4096)
    args.batch = args.batch or (16 if args.quick else 256)
    args.workers = args.workers if args.workers is not None else (2 if args.quick else 8)
    args.batches = args.batches or max(1, min(8, args.images // args.batch - args.warmup))
    return args


def run(args):
    from mmae_fast.mae.timm_compat import timm  # noqa: F401 - torchvision on a CPU torch
    device = torch.device(args.device)
    make_folder(args.folder, args.images)
    rows = [measure(p, args, device) for p in args.pipelines]
    payload = {"schema": SCHEMA, "schema_version": common.SCHEMA_VERSION,
               "meta": common.environment(device), "args": {k: str(v) for k, v in
                                                           vars(args).items()}}
    directory = common.result_dir(args.out, device)
    stem = "data" + ("-quick" if args.quick else "") + f"-{common.timestamp()}"
    paths = common.write_results(directory, stem, payload, rows, FIELDS)
    for r in rows:
        rate = "-" if r["img_per_s"] is None else f"{r['img_per_s']:.0f}"
        print(f"{r['pipeline']:>4}  {r['device']:>6}  workers {r['workers']}  batch {r['batch']}"
              f"  {rate} img/s  {r['status']} {r['reason'] or ''}")
    return paths


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
