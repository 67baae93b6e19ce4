"""M-MAE pretraining: ``loss = L_MAE + lamb·R(cls) + L_CE(online head)`` on a timm ViT MAE.

    python -m mmae_fast.train --model tiny --data digits --reg tcr --steps 300      # CPU
    torchrun --nproc_per_node 8 -m mmae_fast.train --model vit_base_patch16 \\
        --data imagefolder --data-path /data/imagenet --batch 512 --epochs 200 --reg tcr

``R``: ``--reg tcr`` is ``mmae_fast.tcr_loss`` (``-logdet(I + mu/d·ZᵀZ)`` on the normalised CLS
features, over all ranks via one Gram all-reduce; ``--grad-semantics`` picks the exact or the
official per-rank gradient scaling), ``--backend official-eager`` the official eager loss on one
process; ``--reg uniformity`` is U-MAE's ``mean((ZZᵀ)²)`` on the local batch. See
docs/training.md.

Step ``s`` (an optimizer step of ``accum_iter`` micro-batches) is a pure function of the seed
and ``s``: data (``mmae_fast.data``), masks, LR. Resuming from a checkpoint, or splitting the
global batch over ranks, gives the loss sequence of one uninterrupted process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch

from . import checkpoint, data as data_mod

REGS = ("none", "uniformity", "tcr")
BACKENDS = ("auto", "reference", "triton", "cuda", "official-eager")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmae-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny",
                   help="preset: tiny, vit_base_patch16, vit_large_patch16, vit_huge_patch14")
    g.add_argument("--img-size", type=int, help="default: the preset's (tiny 16, ViTs 224)")
    g.add_argument("--mask-ratio", type=float, default=0.75)
    g.add_argument("--no-norm-pix-loss", dest="norm_pix_loss", action="store_false")
    g.add_argument("--cls-norm", default="encoder",
                   help="'encoder': CLS after the encoder norm; 'double': one more LayerNorm "
                        "(the official M-MAE code)")
    g.add_argument("--no-online-head", dest="online_head", action="store_false",
                   help="drop the online linear head (on detached CLS features)")
    g.add_argument("--drop-path", type=float, default=0.0)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="digits (embedded), imagefolder, synthetic")
    g.add_argument("--data-path", help="ImageNet-layout folder (--data imagefolder)")
    g.add_argument("--workers", type=int, default=8, help="data loader workers (imagefolder)")
    g.add_argument("--batch", type=int, default=64, help="images per rank per micro-step")
    g.add_argument("--accum-iter", type=int, default=1, help="micro-steps per optimizer step")
    g = p.add_argument_group("regulariser")
    g.add_argument("--reg", default="tcr", help="none, uniformity or tcr")
    g.add_argument("--lamb", type=float, default=1e-2, help="weight of R (official 1e-2)")
    g.add_argument("--mu", type=float, default=1.0, help="c = mu/d (official: 1 ViT-B, 3 ViT-L)")
    g.add_argument("--centering", action="store_true", help="R on centred features")
    g.add_argument("--estimator", default="exact", help="exact, series or taylor")
    g.add_argument("--backend", default="auto",
                   help="auto, reference, triton, cuda, official-eager (official loss, 1 process)")
    g.add_argument("--grad-semantics", default="exact",
                   help="exact (gradient of lamb·R on the global batch) or per_rank (official)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="optimizer steps (default: from --epochs)")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--warmup-steps", type=int, help="default: 10%% of the steps (official)")
    g.add_argument("--warmup-epochs", type=float, help="warmup in epochs (instead of steps)")
    g.add_argument("--blr", type=float, default=1.5e-4, help="lr = blr · global batch / 256")
    g.add_argument("--lr", type=float, help="absolute peak lr (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--precision", default="auto",
                   help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16 (+scaler)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default="runs/train")
    g.add_argument("--log-every", type=int, default=10, help="JSONL metrics every N steps")
    g.add_argument("--rank-every", type=int, default=50,
                   help="effective rank of the CLS features every N steps (0: never)")
    g.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N steps "
                   "(0: only at the end)")
    g.add_argument("--resume", help="checkpoint path, or 'auto' (<output-dir>/checkpoint-last.pt "
                   "if present)")
    g.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many "
                   "steps of this run, as if killed: for preemptible jobs and tests")
    g.add_argument("--no-export", dest="export", action="store_false",
                   help="skip the encoder.safetensors export at the end")
    g.add_argument("--no-plot", dest="plot", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate ``args`` (ValueError naming the argument and the fix); fill derived defaults."""
    from .model import CLS_NORMS, PRESETS
    from ._checks import ESTIMATORS, GRAD_SEMANTICS
    _need(args.model in PRESETS, f"--model: unknown preset {args.model!r}; choose one of "
                                 f"{tuple(PRESETS)}")
    _need(args.data in data_mod.DATASETS, f"--data must be one of {data_mod.DATASETS}, "
                                          f"got {args.data!r}")
    _need(args.data != "imagefolder" or bool(args.data_path),
          "--data imagefolder needs --data-path DIR (an ImageNet-layout folder)")
    _need(args.data_path is None or os.path.isdir(args.data_path),
          f"--data-path {args.data_path!r} is not a directory")
    for name, options in (("reg", REGS), ("backend", BACKENDS), ("precision", PRECISIONS),
                          ("estimator", ESTIMATORS), ("grad_semantics", GRAD_SEMANTICS),
                          ("cls_norm", CLS_NORMS)):
        value = getattr(args, name)
        _need(value in options, f"--{name.replace('_', '-')} must be one of {options}, "
                                f"got {value!r}")
    _need(math.isfinite(args.lamb) and args.lamb >= 0, f"--lamb must be >= 0, got {args.lamb}")
    _need(math.isfinite(args.mu) and args.mu > 0, f"--mu must be > 0, got {args.mu}")
    _need(0 <= args.mask_ratio < 1, f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    for name in ("batch", "accum_iter", "log_every"):
        _need(getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, "
                                        f"got {getattr(args, name)}")
    for name in ("steps", "stop_after", "threads", "img_size"):
        v = getattr(args, name)
        _need(v is None or v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("rank_every", "ckpt_every", "weight_decay", "min_lr", "drop_path", "workers"):
        v = getattr(args, name)
        _need(v >= 0, f"--{name.replace('_', '-')} must be >= 0, got {v}")
    _need(args.epochs > 0, f"--epochs must be > 0, got {args.epochs}")
    _need(args.data != "synthetic" or args.steps is not None,
          "--data synthetic has no epochs; give --steps N")
    _need(args.blr > 0 and (args.lr is None or args.lr > 0), "--blr / --lr must be > 0")
    _need(args.warmup_steps is None or args.warmup_steps >= 0,
          f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    _need(args.warmup_epochs is None or args.warmup_epochs >= 0,
          f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    _need(args.warmup_steps is None or args.warmup_epochs is None,
          "give --warmup-steps or --warmup-epochs, not both")
    _need(args.backend != "official-eager" or args.reg == "tcr",
          "--backend official-eager is a TCR loss; use it with --reg tcr")
    if args.img_size is None:
        args.img_size = PRESETS[args.model].img_size
    patch = PRESETS[args.model].patch_size
    _need(args.img_size % patch == 0, f"--img-size ({args.img_size}) must be a multiple of "
                                      f"the patch size {patch} of --model {args.model}")
    return args


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and validate; raises ValueError naming a bad argument."""
    return check_args(build_parser().parse_args(argv))


# ----------------------------------------------------------------------------- pieces
def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Per-iteration linear warmup to ``peak`` then half-cosine to ``floor`` (MAE's lr_sched)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: torch.nn.Module, weight_decay: float):
    """AdamW groups: no weight decay on 1-D parameters (norms, biases), as MAE."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def regulariser(args, group):
    """cls (B, width) -> R (0-d), or None for --reg none."""
    import mmae_fast
    if args.reg == "none":
        return None
    if args.reg == "uniformity":
        return mmae_fast.uniformity_loss
    if args.backend == "official-eager":
        from .baselines import official_tcr
        return lambda cls: official_tcr(cls, args.mu)
    return lambda cls: mmae_fast.tcr_loss(
        cls, args.mu, centering=args.centering, estimator=args.estimator, backend=args.backend,
        group=group, grad_semantics=args.grad_semantics)


def mask_noise(seed: int, step: int, num_patches: int, *, batch: int, world: int = 1,
               accum: int = 1, micro: int = 0, rank: int = 0) -> torch.Tensor:
    """Masking noise (batch, L) of this rank's rows of micro-batch ``micro`` of optimizer step
    ``step``: a slice of one (accum · world · batch, L) draw per step, so any split of the
    step's images over micro-batches and ranks masks each image the same way."""
    g = data_mod.generator(seed, 4, step)
    start = (micro * world + rank) * batch
    return torch.rand(accum * world * batch, num_patches, generator=g)[start:start + batch]


class _Distributed:
    """torchrun environment: NCCL on CUDA, gloo on the CPU; a no-op for one process."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_arg != "cpu"
        if device_arg in ("auto", "cuda") and cuda:
            self.device = torch.device("cuda", self.local_rank)
        elif device_arg == "auto":
            self.device = torch.device("cpu")
        else:
            self.device = torch.device(device_arg)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {device_arg}: no CUDA device here; use --device cpu")
            torch.cuda.set_device(self.device)
        self.group = None
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.group = dist.group.WORLD

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return (t / self.world).tolist()


def _json_args(args) -> dict:
    """The run's arguments as a plain dict (stored in checkpoints and args.json)."""
    return dict(vars(args))


def _trim_metrics(path: str, first_step: int) -> None:
    """Drop metric lines of steps >= first_step (written after the checkpoint we resume)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] < first_step]
    with open(path, "w") as f:
        f.writelines(keep)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, png_path: str, title: str = "") -> str | None:
    """PNG of the logged curves (loss parts, lr, effective rank) against the step."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("loss_mae", "L_MAE"), ("loss_reg", "R"), ("loss_ce", "online CE"),
              ("eff_rank", "effective rank (CLS)"), ("lr", "lr"), ("img_per_s", "img/s")]
    panels = [(k, t) for k, t in panels if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


# ----------------------------------------------------------------------------- training
def train(args: argparse.Namespace) -> dict:
    """Run the training described by checked ``args``; returns a summary dict (rank 0 writes
    files): ``run_dir``, ``losses`` (total loss of each step of this run), ``metrics`` (last
    logged row), ``checkpoint``, ``encoder``, ``wall_s``, ``model`` (the trained module)."""
    from .model import create_model, export_encoder, timm_kwargs

    t_start = time.perf_counter()
    dist_env = _Distributed(args.device)
    device, rank, world = dist_env.device, dist_env.rank, dist_env.world
    if args.threads:
        torch.set_num_threads(args.threads)
    _need(not (args.backend == "official-eager" and world > 1),
          "--backend official-eager runs on one process; with several ranks use --backend auto "
          "and --grad-semantics per_rank for the official gradient scaling")
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    source = data_mod.build(args.data, img_size=args.img_size, batch_per_rank=args.batch,
                            seed=args.seed, rank=rank, world=world, data_path=args.data_path,
                            workers=args.workers)
    micro_global = args.batch * world
    total = args.steps or max(1, int(args.epochs * source.steps_per_epoch / args.accum_iter))
    if args.warmup_epochs is not None:
        warmup = int(args.warmup_epochs * source.steps_per_epoch / args.accum_iter)
    else:
        warmup = args.warmup_steps if args.warmup_steps is not None else total // 10
    peak = args.lr or args.blr * micro_global * args.accum_iter / 256

    torch.manual_seed(args.seed)
    num_classes = source.num_classes if args.online_head and source.num_classes > 1 else 0
    model = create_model(args.model, img_size=args.img_size, mask_ratio=args.mask_ratio,
                         norm_pix_loss=args.norm_pix_loss, num_classes=num_classes,
                         cls_norm=args.cls_norm, drop_path=args.drop_path).to(device)
    if world > 1 and device.type == "cuda" and model.head is not None:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=peak, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start = 0
    run_dir = args.output_dir
    ckpt_path = os.path.join(run_dir, checkpoint.LAST)
    resume = ckpt_path if args.resume == "auto" else args.resume
    if resume and (args.resume != "auto" or os.path.exists(ckpt_path)):
        state = checkpoint.load(resume)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start = int(state["step"])
        if start > total:
            raise ValueError(f"--resume: the checkpoint is at step {start}, past --steps {total}")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(net) if args.compile else net
    reg_fn = regulariser(args, dist_env.group)
    with_logits = model.head is not None

    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        _trim_metrics(metrics_path, start)
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump(_json_args(args) | {"world_size": world, "total_steps": total,
                                          "peak_lr": peak, "precision": precision}, f, indent=1)

    def save(step: int) -> str:
        if rank == 0:
            checkpoint.save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scaler": scaler.state_dict(), "step": step,
                                    "args": _json_args(args), "rng": checkpoint.rng_state()},
                                   ckpt_path)
        return ckpt_path

    end = total if args.stop_after is None else min(total, start + args.stop_after)
    bar = None
    if args.progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, desc=f"train {args.model} reg={args.reg}",
                   unit="step", dynamic_ncols=True, mininterval=1.0)
    losses, last_row = [], None
    window_t, window_imgs = time.perf_counter(), 0
    cuda_timing = device.type == "cuda"
    net.train()
    for step in range(start, end):
        lr = lr_at(step, total, warmup, peak, args.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        parts = torch.zeros(5, dtype=torch.float64, device=device)  # loss, mae, reg, ce, acc
        reg_ms = 0.0
        # on CUDA the regulariser is timed (one sync) only on the steps that are logged
        timed = not cuda_timing or (step + 1) % args.log_every == 0 or step + 1 == end
        for k in range(args.accum_iter):
            micro = step * args.accum_iter + k
            imgs, labels = source.batch(micro)
            imgs = imgs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            noise = mask_noise(args.seed, step, model.num_patches, batch=args.batch,
                               world=world, accum=args.accum_iter, micro=k,
                               rank=rank).to(device)
            sync = (contextlib.nullcontext() if world == 1 or k == args.accum_iter - 1
                    else net.no_sync())
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    out = fwd(imgs, noise, with_logits=with_logits)
                loss_mae, cls = out[0].float(), out[1]
                loss = loss_mae
                if reg_fn is not None:
                    t0 = _timer(cuda_timing) if timed else None
                    loss_reg = reg_fn(cls.float())
                    reg_ms += _elapsed_ms(t0, cuda_timing) if timed else 0.0
                    if args.lamb:
                        loss = loss + args.lamb * loss_reg
                else:
                    loss_reg = torch.zeros((), device=device)
                loss_ce = acc = torch.zeros((), device=device)
                if with_logits:
                    logits = out[2].float()
                    loss_ce = torch.nn.functional.cross_entropy(logits, labels)
                    loss = loss + loss_ce
                    acc = (logits.argmax(1) == labels).float().mean()
                scaler.scale(loss / args.accum_iter).backward()
            parts += torch.stack([loss.detach(), loss_mae.detach(), loss_reg.detach(),
                                  loss_ce.detach(), acc]).double()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        window_imgs += micro_global * args.accum_iter
        mean_parts = dist_env.mean((parts / args.accum_iter).tolist())  # one host sync
        if not all(math.isfinite(v) for v in mean_parts[:4]):
            raise FloatingPointError(f"non-finite loss at step {step}: {mean_parts[:4]}")
        losses.append(mean_parts[0])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_parts[0]:.4f}", lr=f"{lr:.2e}", refresh=False)
        done = step + 1
        if (done % args.log_every == 0 or done == end) and rank == 0:
            now = time.perf_counter()
            row = {"step": step, "epoch": done * micro_global * args.accum_iter / source.n
                   if args.data != "synthetic" else None, "lr": lr, "loss": mean_parts[0],
                   "loss_mae": mean_parts[1], "loss_reg": mean_parts[2] if reg_fn else None,
                   "loss_ce": mean_parts[3] if with_logits else None,
                   "online_acc": mean_parts[4] if with_logits else None,
                   "img_per_s": window_imgs / max(now - window_t, 1e-9),
                   "reg_ms": reg_ms / args.accum_iter if reg_fn else None, "eff_rank": None}
            if args.rank_every and (done % args.rank_every == 0 or done == end):
                from . import effective_rank
                row["eff_rank"] = float(effective_rank(cls.detach().float()))
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            last_row, window_t, window_imgs = row, time.perf_counter(), 0
        if args.ckpt_every and done % args.ckpt_every == 0 and done != end:
            save(done)
    if bar is not None:
        bar.close()
    result = {"run_dir": run_dir, "losses": losses, "metrics": last_row, "start_step": start,
              "end_step": end, "total_steps": total, "model": model, "checkpoint": None,
              "encoder": None, "png": None}
    if end > start or resume:
        result["checkpoint"] = save(end)
    if rank == 0 and end == total:
        if args.export:
            enc = os.path.join(run_dir, "encoder.safetensors")
            export_encoder(model, enc)
            with open(os.path.join(run_dir, "encoder.json"), "w") as f:
                json.dump({"timm_name": model.preset.timm_name, "timm_kwargs": timm_kwargs(model)},
                          f, indent=1)
            result["encoder"] = enc
        if args.plot and os.path.exists(metrics_path):
            result["png"] = plot_curves(metrics_path, os.path.join(run_dir, "curves.png"),
                                        f"{args.model} reg={args.reg} lamb={args.lamb}")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _timer(cuda: bool):
    if cuda:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev
    return time.perf_counter()


def _elapsed_ms(t0, cuda: bool) -> float:
    """Regulariser forward time. On CUDA this synchronises (cheap next to a step)."""
    if cuda:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        ev.synchronize()
        return t0.elapsed_time(ev)
    return (time.perf_counter() - t0) * 1e3


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = check_args(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
    result = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        m = result["metrics"] or {}
        print(f"steps {result['start_step']}->{result['end_step']} of {result['total_steps']}  "
              f"loss {m.get('loss', float('nan')):.4f}  wall {result['wall_s']:.1f}s  "
              f"run dir {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
