"""Pieces shared by the linear probe and fine-tuning: devices and ranks, MAE's per-iteration lr
schedule, epoch seeding, atomic epoch checkpoints, top-k accuracy, the epoch loop.

Resumability: a checkpoint is written at the end of every epoch (``checkpoint-last.pt``: the
trained state, optimizer, epoch, history, args). Every random draw of epoch ``e`` (sampler
order, augmentation, mixup, drop path) is seeded from ``(seed, e, rank)`` at the epoch's start,
so a resumed run repeats the uninterrupted one exactly (bit for bit on the CPU with
``--workers 0``; with workers, each worker's seed also derives from that seed).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

from ..mae import checkpoint, errors, track

LAST = "checkpoint-last.pt"


# ----------------------------------------------------------------------------- devices / ranks
class Env:
    """torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): NCCL on CUDA, gloo on
    the CPU, nothing for one process. ``device``: ``--device``, default the GPU if there is one."""

    def __init__(self, device: str | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist
        dev = self.device if self.device.type == "cuda" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``None``/"auto": ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if device in (None, "auto"):
        cuda = torch.cuda.is_available()
        return torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device here; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` "bf16" (and "auto" on CUDA), else a no-op context."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    on = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


# ----------------------------------------------------------------------------- schedule / seeds
def lr_at(epoch: float, *, lr: float, min_lr: float, warmup: float, epochs: float) -> float:
    """MAE's ``util/lr_sched.py``, evaluated per iteration at fractional ``epoch``:
    ``lr·epoch/warmup`` during warmup, then ``min_lr + (lr - min_lr)·(1 + cos(π·t))/2`` with
    ``t = (epoch - warmup)/(epochs - warmup)``."""
    if epoch < warmup:
        return lr * epoch / warmup
    t = (epoch - warmup) / max(epochs - warmup, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group gets ``lr · group["lr_scale"]`` (layer decay; 1 when absent), as MAE."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, Python ``random`` and numpy (timm's RandAugment, Mixup, RandomErasing draw
    from the latter two) from ``(seed, epoch, rank)``."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % (2 ** 31)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)


# ----------------------------------------------------------------------------- checkpoints
save_atomic = checkpoint.save_atomic  # one implementation: torch.save, checksum, fsync, rename

#: flags a resumed run of either protocol must share with its checkpoint's (``lr``: the peak lr
#: derived from ``--blr`` and ``--batch`` unless given)
RUN_DEFINING = ("epochs", "batch", "accum_iter", "blr", "lr", "min_lr", "warmup_epochs",
                "weight_decay", "seed", "data", "max_images")


def check_resumed(saved: dict, args, path: str, run_defining=()) -> None:
    """A resumed run continues the checkpoint's: the same encoder (``encoder_digest``:
    ``checkpoint.state_digest`` of its weights, whichever file holds them) and the same
    run-defining flags (:data:`RUN_DEFINING` and the protocol's ``run_defining``); else a
    one-line ValueError naming the checkpoint and what differs."""
    now = getattr(args, "encoder_digest", None)
    was = saved.get("encoder_digest")
    if was is not None and now is not None and was != now:
        raise ValueError(f"--resume {path}: the run was trained on the encoder of "
                         f"{saved.get('checkpoint')} (weights {was[:12]}), not on that of "
                         f"{args.checkpoint} ({now[:12]}); resume with the run's own encoder "
                         f"checkpoint, or start a new --output-dir")
    for key in RUN_DEFINING + tuple(run_defining):
        if key in saved and saved[key] != getattr(args, key, None):
            raise ValueError(f"--resume {path}: the run used --{key.replace('_', '-')} "
                             f"{saved[key]!r}, now {getattr(args, key, None)!r}; resume with "
                             f"the run's own flags, or start a new --output-dir")


def resume_path(resume: str | None, output_dir: str) -> str | None:
    """``--resume PATH`` or ``auto`` (``<output-dir>/checkpoint-last.pt`` when it exists)."""
    if resume is None:
        return None
    path = os.path.join(output_dir, LAST) if resume == "auto" else resume
    if resume == "auto" and not os.path.exists(path):
        return None
    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint file at {path!r}")
    return path


# ----------------------------------------------------------------------------- accuracy
@torch.no_grad()
def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of rows whose label is among the top-k logits, for each k (k capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [int(hit[:, :k].any(1).sum()) for k in ks]


@torch.no_grad()
def evaluate(predict, loader, env: Env, precision: str = "auto") -> dict:
    """``{top1, top5, loss, n}`` of ``predict(images) -> logits`` over the (sharded) loader,
    summed over ranks: exact counts, each image counted once. Accuracies in percent."""
    c1 = c5 = n = 0
    loss = 0.0
    for x, y in loader:
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        with autocast(env.device, precision):
            logits = predict(x)
        logits = logits.float()
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        a, b = topk_correct(logits, y)
        c1, c5, n = c1 + a, c5 + b, n + len(y)
    c1, c5, n, loss = env.sum([c1, c5, n, loss])
    if n == 0:
        raise ValueError("the validation set is empty")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "n": int(n)}


# ----------------------------------------------------------------------------- epoch loop
def fit(args, env: Env, *, kind: str, loader, opt, train_step, after_step, evaluate_fn,
        get_state, set_state, run_defining=()) -> dict:
    """The epoch loop of both protocols.

    ``train_step(x, y, sync) -> loss`` runs forward and backward of one micro-batch (scaled by
    ``1/accum_iter``; ``sync`` False inside an accumulation), ``after_step()`` runs after each
    optimizer step (EMA), ``evaluate_fn() -> dict`` after each epoch. Checkpoint every epoch;
    ``args.stop_after`` epochs of this run then stop as if killed. Each epoch's row also goes
    to the trackers (``--tensorboard`` / ``--wandb``: ``<kind>/<key>`` at step = the epoch).
    A resumed checkpoint is checked (checksum, :func:`check_resumed` with ``run_defining``).
    Returns {history, checkpoint, start_epoch, end_epoch, wall_s}."""
    t0 = time.perf_counter()
    ckpt = os.path.join(args.output_dir, LAST)
    start, history = 0, []
    path = resume_path(args.resume, args.output_dir)
    last_good = None
    if path:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign file
            raise ValueError(f"--resume {path}: cannot be read ({type(exc).__name__}); pass this "
                             f"command's own checkpoint-last.pt") from None
        if not isinstance(state, dict) or state.get("kind") != kind:
            got = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"--resume {path}: a {got!r} checkpoint, not {kind!r}")
        checkpoint.verify(state, path)
        check_resumed(state.get("args") or {}, args, path, run_defining)
        set_state(state)
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), list(state["history"])
        last_good = (path, start)
    end = args.epochs if args.stop_after is None else min(args.epochs, start + args.stop_after)
    accum = args.accum_iter
    iters = len(loader)
    if iters < accum:
        raise ValueError(f"an epoch has {iters} micro-batches, fewer than --accum-iter {accum}")
    usable = iters - iters % accum
    peak = args.lr
    log = os.path.join(args.output_dir, "log.jsonl")
    if env.rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        if os.path.exists(log):  # drop rows of epochs after the checkpoint we resume
            rows = [r for r in map(json.loads, open(log)) if r["epoch"] < start]
            with open(log, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    trackers = track.Trackers(args, group=kind, prog=f"mmae-eval {kind}", rank=env.rank,
                              epoch_axis=False)
    try:
        for epoch in range(start, end):
            loader.sampler.set_epoch(epoch)
            seed_epoch(args.seed, epoch, env.rank)
            total, count, lr = 0.0, 0, 0.0
            opt.zero_grad(set_to_none=True)
            for i, (x, y) in enumerate(loader):
                if i >= usable:
                    break
                if i % accum == 0:
                    lr = lr_at(epoch + i / iters, lr=peak, min_lr=args.min_lr,
                               warmup=args.warmup_epochs, epochs=args.epochs)
                    set_lr(opt, lr)
                x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
                loss = float(train_step(x, y, (i + 1) % accum == 0))
                if not math.isfinite(loss) and epoch == start and i < accum:
                    raise ValueError(f"non-finite training loss {loss} before any update of this "
                                     f"run: the loaded weights or the images are not finite; "
                                     f"evaluate a finite checkpoint")
                if not math.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss {loss} at epoch {epoch}, "
                                             f"iteration {i}")
                total, count = total + loss, count + 1
                if (i + 1) % accum == 0:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    after_step()
            s, c = env.sum([total, count])
            row = {"epoch": epoch, "lr": lr, "train_loss": s / max(c, 1)} | evaluate_fn()
            history.append(row)
            if env.rank == 0:
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                trackers.log(row, epoch)
                try:
                    save_atomic({"kind": kind, "epoch": epoch + 1, "history": history,
                                 "optimizer": opt.state_dict(), "args": dict(vars(args))}
                                | get_state(), ckpt)
                except OSError as exc:
                    if not checkpoint.is_disk_full(exc):
                        raise
                    last = (f"last good checkpoint: {last_good[0]} (epoch {last_good[1]}); "
                            f"free space, then continue with --resume auto" if last_good else
                            "no checkpoint was written; free space, then start again")
                    raise ValueError(f"disk full at {ckpt} (nothing written); {last}") from None
                last_good = (ckpt, epoch + 1)
                print(json.dumps(row), flush=True)
    finally:
        trackers.close()
    env.barrier()
    return {"history": history, "checkpoint": ckpt if end > start or path else None,
            "start_epoch": start, "end_epoch": end, "wall_s": time.perf_counter() - t0}


def add_common_args(p, *, epochs, batch, blr, warmup, min_lr, weight_decay, source) -> None:
    """Arguments both protocols share; defaults are the official values (``source``)."""
    p.add_argument("checkpoint", help="training checkpoint (checkpoint-last.pt, any step) or an "
                                      "encoder export (.safetensors / .pt)")
    p.add_argument("--data", help="digits or imagefolder; default: imagefolder with --data-path, "
                                  "else digits")
    p.add_argument("--data-path", help="imagefolder root with train/ and val/")
    p.add_argument("--num-heads", type=int, help="only for inputs without a preset name")
    p.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs} ({source})")
    p.add_argument("--warmup-epochs", type=float, default=warmup,
                   help=f"default {warmup} ({source})")
    p.add_argument("--batch", type=int, default=batch,
                   help=f"global batch per optimizer step, over all ranks and --accum-iter "
                        f"micro-batches; default {batch} ({source})")
    p.add_argument("--accum-iter", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--blr", type=float, default=blr,
                   help=f"base lr: lr = blr · batch / 256; default {blr} ({source})")
    p.add_argument("--lr", type=float, help="absolute peak lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=min_lr, help=f"default {min_lr} ({source})")
    p.add_argument("--weight-decay", type=float, default=weight_decay,
                   help=f"default {weight_decay} ({source})")
    p.add_argument("--max-images", type=int,
                   help="use only this many evenly spaced train and val images (default: all)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="data loader workers per rank")
    p.add_argument("--device", help="default: the GPU when there is one, else the CPU")
    p.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA), fp32, bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", help="a checkpoint of this protocol, or 'auto' "
                                    "(<output-dir>/checkpoint-last.pt if present)")
    p.add_argument("--stop-after", type=int,
                   help="stop (with a checkpoint) after this many epochs of this run")
    track.add_args(p)


def check_common(args, env: Env) -> None:
    """Validate the shared arguments and derive ``args.lr`` and ``args.batch_per_rank``."""
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)
    for name in ("epochs", "batch", "accum_iter"):
        need(getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, "
                                       f"got {getattr(args, name)}")
    for name in ("stop_after", "max_images", "num_heads"):
        v = getattr(args, name)
        need(v is None or v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("warmup_epochs", "min_lr", "weight_decay", "workers"):
        need(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, "
                                       f"got {getattr(args, name)}")
    need(math.isfinite(args.blr) and args.blr > 0
         and (args.lr is None or (math.isfinite(args.lr) and args.lr > 0)),
         "--blr / --lr must be finite numbers > 0")
    track.check_available(args.tensorboard, args.wandb)
    per = env.world * args.accum_iter
    need(args.batch % per == 0, f"--batch {args.batch} must be a multiple of ranks x "
                                f"--accum-iter = {per}")
    args.batch_per_rank = args.batch // per
    args.lr = args.lr or args.blr * args.batch / 256
    need(args.min_lr <= args.lr, f"--min-lr {args.min_lr:g} is above the peak lr {args.lr:g} "
                                 f"(--lr, or --blr x --batch / 256): the lr would rise after the "
                                 f"warmup; give --min-lr <= {args.lr:g}")
    if env.rank == 0:
        errors.writable_dir(args.output_dir, "--output-dir")
        if args.warmup_epochs >= args.epochs:  # loud, not fatal: smoke runs do this on purpose
            print(f"mmae-eval: WARNING --warmup-epochs {args.warmup_epochs:g} is not shorter "
                  f"than --epochs {args.epochs}: the lr never reaches its peak {args.lr:g}; "
                  f"give --warmup-epochs below --epochs", file=sys.stderr)


def cli_main(kind: str, build_parser, run, argv=None) -> int:
    """``mmae-eval <kind>``: parse, run, a usage error for a ValueError, one summary line."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        res = run(args)
    except ValueError as exc:
        p.error(str(exc))
    except FloatingPointError as exc:
        print(f"{p.prog}: diverged: {exc}; lower --blr / --lr", file=sys.stderr)
        return 1
    f = res["final"] or {}
    print(f"{kind} epochs {res['start_epoch']}->{res['end_epoch']} of {args.epochs}: "
          f"top-1 {f.get('top1', float('nan')):.2f}  top-5 {f.get('top5', float('nan')):.2f}  "
          f"({args.output_dir})")
    return 0
