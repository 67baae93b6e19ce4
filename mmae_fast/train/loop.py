"""The training run around ``step.train_step``: set-up, resume, logging, checkpoints, export.

Step ``s`` (an optimizer step of ``accum_iter`` micro-batches) is a pure function of the seed
and ``s``: data (``mmae_fast.mae.data``), masks, LR. Resuming from a checkpoint, or splitting the
global batch over ranks, gives the loss sequence of one uninterrupted process.

The host reads the device only every ``--log-every`` steps (and before a checkpoint): the
step terms and fault flags of the window in one transfer. A bad step found there (a non-finite
loss, a non-finite or overflowing gradient, an update that could overflow the weights:
``step.train_step``) stops the run (:class:`Diverged`, naming the first bad step, the cause and
the last good checkpoint) or, with ``--skip-nonfinite``, is counted (its update was skipped on the
device). A checkpoint is written only after that check and only with finite weights, optimizer
and loss-scaler state.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import torch

from ..mae import checkpoint, data as data_mod, run_dir as run_dir_mod, track
from . import health, outputs, recipes, regularisers
from .env import Distributed
from .resume import resume
from .schedule import lr_at, mask_noise, param_groups, to_device
from .step import FAULTS, TERMS, forward_losses, loss_terms, train_step

_NAMES = {"loss": "loss", "loss_mae": "L_MAE", "loss_reg": "R", "loss_ce": "L_CE"}


class Diverged(RuntimeError):
    """A non-finite loss: the message is one line (step, terms, last good checkpoint)."""


def _schedule(args, source, world: int):
    total = args.steps or max(1, int(args.epochs * source.steps_per_epoch / args.accum_iter))
    if args.warmup_epochs is not None:
        warmup = int(args.warmup_epochs * source.steps_per_epoch / args.accum_iter)
    else:
        warmup = args.warmup_steps if args.warmup_steps is not None else total // 10
    peak = args.lr or args.blr * args.batch * world * args.accum_iter / 256
    if args.min_lr > peak:
        raise ValueError(f"--min-lr {args.min_lr:g} is above the peak lr {peak:g} (--lr, or "
                         f"--blr x global batch / 256): the lr would rise after the warmup; "
                         f"give --min-lr <= {peak:g}")
    if warmup >= total:  # loud, not fatal: short smoke runs do this on purpose
        print(f"mmae-train: WARNING the warmup ({warmup} steps) is not shorter than the run "
              f"({total} steps): the lr never leaves it; pass --warmup-steps (or "
              f"--warmup-epochs) below the run's length"
              + (" (a --recipe's warmup is in epochs of the full data set)"
                 if args.recipe else ""), file=sys.stderr)
    return total, warmup, peak


def _build(args, source, device, world):
    from ..mae.model import create_model
    torch.manual_seed(args.seed)
    heads = args.online_head != "none" and source.num_classes > 1
    model = create_model(args.model, img_size=args.img_size, mask_ratio=args.mask_ratio,
                         norm_pix_loss=args.norm_pix_loss, cls_norm=args.cls_norm,
                         num_classes=source.num_classes if heads else 0,
                         head=args.online_head if heads else "linear",
                         drop_path=args.drop_path).to(device)
    if world > 1 and device.type == "cuda" and args.online_head == "bn-linear":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # fused AdamW: multi-tensor kernels, and its found_inf skips a step on the device
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=1.0, betas=(0.9, 0.95),
                            fused=True)
    return model, opt


def _make_forward(args, net, reg_fn, amp_dtype, world):
    def fwd(imgs, noise, labels):
        return forward_losses(net, imgs, noise, labels, reg_fn=reg_fn, lamb=args.lamb,
                              amp_dtype=amp_dtype)
    if not args.compile:
        return fwd
    # one graph with the regulariser; DDP's optimiser splits graphs at buckets: no fullgraph
    return torch.compile(fwd, fullgraph=world == 1, backend=args.compile_backend)


def train(args) -> dict:
    """Run the training described by checked ``args``; returns a summary dict (rank 0 writes
    files): ``run_dir``, ``losses`` (total loss of each step of this run), ``metrics`` (last
    logged row), ``checkpoint``, ``encoder``, ``skipped`` (non-finite steps skipped),
    ``wall_s``, ``model`` (the trained module)."""
    t_start = time.perf_counter()
    env = Distributed(args.device)
    run_dir = args.output_dir
    earlier = None if args.resume or args.overwrite else run_dir_mod.holds_a_run(run_dir,
                                                                                 checkpoint.LAST)
    if earlier:
        raise ValueError(f"--output-dir {run_dir!r} holds an earlier run ({earlier}); continue "
                         f"it with --resume auto, replace it with --overwrite, or give another "
                         f"--output-dir")
    lock = None
    if env.rank == 0:
        with _writing(run_dir):  # before the data and the model: fail fast
            os.makedirs(run_dir, exist_ok=True)
            lock = run_dir_mod.RunLock(run_dir)
            run_dir_mod.remove_partial_writes(run_dir)
            if args.overwrite:  # the earlier run's checkpoint must not outlive it
                for name in (checkpoint.LAST, "metrics.jsonl"):
                    if os.path.exists(os.path.join(run_dir, name)):
                        os.unlink(os.path.join(run_dir, name))
    try:
        return _train(args, env, t_start)
    finally:
        if lock is not None:
            lock.release()


def _train(args, env, t_start) -> dict:
    device, rank, world = env.device, env.rank, env.world
    run_dir, ckpt_path = args.output_dir, os.path.join(args.output_dir, checkpoint.LAST)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "official-eager" and world > 1:
        raise ValueError("--backend official-eager runs on one process; with several ranks use "
                         "--backend auto and --grad-semantics per_rank for the official scaling")
    precision = args.precision if args.precision != "auto" else (
        "bf16" if device.type == "cuda" else "fp32")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    source = data_mod.build(args.data, img_size=args.img_size, batch_per_rank=args.batch,
                            seed=args.seed, rank=rank, world=world, data_path=args.data_path,
                            workers=args.workers, pipeline=args.data_pipeline, device=device)
    total, warmup, peak = _schedule(args, source, world)
    if rank == 0:
        recipes.warn_off_recipe(args, world)
    model, opt = _build(args, source, device, world)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start, last_good = resume(args, model, opt, scaler, ckpt_path, total)
    unused = args.cls_norm == "separate" and (args.reg == "none" or not args.lamb)  # its norm
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused)
    reg_fn = regularisers.build(args, env.group, world)
    fwd = _make_forward(args, net, reg_fn, amp_dtype, world)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    run_config = dict(vars(args)) | {"world_size": world, "total_steps": total,
                                     "warmup_steps": warmup, "peak_lr": peak,
                                     "precision": precision, "resolved_backend": regularisers
                                     .resolved_backend(args, device, model.cls_token.shape[-1])}
    if rank == 0:
        if args.reg == "tcr":
            print(f"mmae-train: R = tcr_loss on the {run_config['resolved_backend']!r} backend "
                  f"(--backend {args.backend})", flush=True)
        with _writing(run_dir, last_good):
            outputs.trim_metrics(metrics_path, start)
            with open(os.path.join(run_dir, "args.json"), "w") as f:
                json.dump(run_config, f, indent=1)

    def grad_norms(micro):
        """The per-term gradient norms of this step (device tensor; health.term_grad_norms)."""
        try:
            return health.term_grad_norms(
                model, micro, lamb=args.lamb, scaler=scaler, group=env.group, world=world,
                loss_terms=lambda m, i, n, y: loss_terms(m, i, n, y, reg_fn=reg_fn,
                                                         amp_dtype=amp_dtype))
        except torch.linalg.LinAlgError:  # a diverged batch: the step itself reports it
            return None

    def save(step: int) -> str:
        # a host sync per checkpoint, not per step: finite weights can come with an inf AdamW
        # exp_avg_sq (resumed, it freezes those weights), so the optimizer state is checked too
        bad = [name for name, state in (("weights", model.state_dict()),
                                        ("optimizer state", opt.state),
                                        ("loss-scaler state", scaler.state_dict()))
               if not checkpoint.all_finite(state)]
        if bad:
            raise Diverged(f"diverged: non-finite {' and '.join(bad)} after step {step - 1} "
                           f"(finite loss, inf/NaN or overflowing gradient); not saved; "
                           f"{_last_good(last_good)}; lower --lr / --blr"
                           + (", or pass --skip-nonfinite" if bad == ["weights"]
                              and not args.skip_nonfinite else ""))
        if rank == 0:
            with _writing(run_dir, last_good):
                checkpoint.save_atomic({"model": model.state_dict(),
                                        "optimizer": opt.state_dict(),
                                        "scaler": scaler.state_dict(), "step": step,
                                        "args": dict(vars(args)), "rng": checkpoint.rng_state()},
                                       ckpt_path)
        return ckpt_path

    end = total if args.stop_after is None else min(total, start + args.stop_after)
    bar = None
    if args.progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, desc=f"train {args.model} reg={args.reg}",
                   unit="step", dynamic_ncols=True, mininterval=1.0)
    trackers = track.Trackers(args, group="train", prog="mmae-train", rank=rank,
                              config=run_config)
    try:
        log = _Log(args, env, source, metrics_path, args.batch * world * args.accum_iter,
                   model.head is not None, trackers)
        net.train()
        for step in range(start, end):
            lr = lr_at(step, total, warmup, peak, args.min_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            micro = [_micro_batch(args, source, model, device, step, k, rank, world)
                     for k in range(args.accum_iter)]
            done = step + 1
            is_ckpt = args.ckpt_every and done % args.ckpt_every == 0 and done != end
            is_log = done % args.log_every == 0 or done == end or is_ckpt
            norms = grad_norms(micro) if is_log and args.grad_norm_every and (
                done % args.grad_norm_every == 0 or done == end) else None
            try:
                terms, faults, cls = train_step(fwd, micro, net=net, opt=opt, scaler=scaler,
                                                accum=args.accum_iter,
                                                skip_nonfinite=args.skip_nonfinite,
                                                group=env.group)
            except torch.linalg.LinAlgError as exc:  # the reference Cholesky on a diverged batch
                if not args.skip_nonfinite:
                    raise Diverged(f"diverged: R failed at step {step} "
                                   f"({str(exc).split(':')[0]}: non-finite or collapsed CLS "
                                   f"features); {_last_good(last_good)}") from None
                opt.zero_grad(set_to_none=True)
                terms, cls = torch.full((len(TERMS),), math.nan, device=device), None
                faults = torch.zeros(len(FAULTS), device=device)
            log.record(step, lr, terms, faults, cls, norms)
            if is_log:
                log.flush(last_good, bar, final=done == end)
            if is_ckpt:
                last_good = (save(done), done)
        if bar is not None:
            bar.close()
        if args.skip_nonfinite and end > start and log.skipped == end - start:
            raise Diverged(f"every step of the run ({start}->{end}) was skipped as non-finite: "
                           f"no update was taken; nothing saved; {_last_good(last_good)}; lower "
                           f"--lr / --blr")
        result = {"run_dir": run_dir, "losses": log.losses, "metrics": log.last_row,
                  "start_step": start, "end_step": end, "total_steps": total, "model": model,
                  "checkpoint": None, "encoder": None, "png": None, "skipped": log.skipped}
        if end > start or args.resume:
            result["checkpoint"] = save(end)
        if rank == 0 and end == total:
            with _writing(run_dir):
                if args.export:
                    result["encoder"] = outputs.export(model, run_dir)
                if args.plot and os.path.exists(metrics_path):
                    result["png"] = outputs.plot_curves(
                        metrics_path, os.path.join(run_dir, "curves.png"),
                        f"{args.model} reg={args.reg} lamb={args.lamb}")
            trackers.images({"curves": result["png"]})
        env.barrier()
        result["wall_s"] = time.perf_counter() - t_start
        return result
    finally:
        trackers.close()  # also when the run stops: what was logged is kept


def _micro_batch(args, source, model, device, step, k, rank, world):
    imgs, labels = source.batch(step * args.accum_iter + k)
    noise = mask_noise(args.seed, step, model.num_patches, batch=args.batch, world=world,
                       accum=args.accum_iter, micro=k, rank=rank)
    return (to_device(imgs, device), to_device(noise, device),
            to_device(labels, device) if model.head is not None else None)


@contextlib.contextmanager
def _writing(run_dir: str, last_good=None):
    """An OSError while writing the run's outputs -> one line naming the path (exit 2); a full
    disk also names the last good checkpoint (the one a write that failed left in place)."""
    try:
        yield
    except OSError as exc:
        if checkpoint.is_disk_full(exc):
            then = ("continue the run with --resume auto" if last_good else
                    "start the run again")
            raise ValueError(f"disk full at {exc.filename or run_dir} (nothing written); "
                             f"{_last_good(last_good)}; free space, then {then}") from None
        where = f"{exc.filename!r}: " if exc.filename and exc.filename != run_dir else ""
        raise ValueError(f"--output-dir {run_dir!r}: cannot write there ({where}"
                         f"{exc.strerror or exc}); give a writable directory") from None


def _bad_step(terms: dict, faults: dict, step: int) -> str:
    """'' for a good step, else what made it bad (terms and faults: means over the ranks)."""
    bad = [_NAMES[k] for k in ("loss_mae", "loss_reg", "loss_ce")
           if not math.isfinite(terms[k])] or ([] if math.isfinite(terms["loss"]) else ["loss"])
    if bad:
        return f"non-finite loss at step {step} ({', '.join(bad)})"
    if faults["gradient"] > 0:
        return (f"non-finite or overflowing gradient at step {step} (finite loss; AdamW's "
                f"second moment would not be finite)")
    if faults["update"] > 0:
        return f"the update at step {step} could overflow the weights (finite loss and gradient)"
    return ""


def _last_good(last_good) -> str:
    if last_good is None:
        return "no checkpoint was written (nothing to resume from)"
    return f"last good checkpoint: {last_good[0]} (step {last_good[1]})"


class _Log:
    """The steps since the last flush, on the device; ``flush`` reads them (one host sync:
    the window's terms and faults, the last CLS batch's spectrum and the step's per-term
    gradient norms in one transfer), checks them, appends metrics rows and hands them to the
    trackers (rank 0)."""

    def __init__(self, args, env, source, path, global_batch, with_head: bool, trackers=None):
        self.args, self.env, self.path, self.global_batch = args, env, path, global_batch
        self.with_head, self.trackers = with_head, trackers
        self.epoch_size = source.n if args.data != "synthetic" else None
        self.pending, self.losses, self.last_row, self.skipped = [], [], None, 0
        self.t0, self.cls, self.grad_norms = time.perf_counter(), None, None

    def record(self, step: int, lr: float, terms: torch.Tensor, faults, cls,
               grad_norms=None) -> None:
        self.pending.append((step, lr, torch.cat([terms, faults.to(terms.dtype)])))
        self.cls, self.grad_norms = cls, grad_norms

    def _read(self):
        """-> (one list of values per pending step, {health key: value}): one transfer."""
        window = torch.stack([t for _, _, t in self.pending]).double()
        parts, keys = [window.flatten()], []
        if self.cls is not None:
            parts.append(health.spectrum(self.cls, self.args.mu).to(window.device))
            keys += health.SPECTRUM
        if self.grad_norms is not None:
            parts.append(self.grad_norms.to(window.device, torch.float64))
            keys += health.GRAD_NORMS
        flat = self.env.mean(torch.cat(parts)).tolist()
        n, k = window.shape
        values = [flat[i * k:(i + 1) * k] for i in range(n)]
        return values, dict(zip(keys, flat[n * k:]))

    def flush(self, last_good, bar, final: bool) -> None:
        args = self.args
        values, extra = self._read()
        now = time.perf_counter()
        for (step, lr, _), row_values in zip(self.pending, values):
            terms = dict(zip(TERMS, row_values))
            cause = _bad_step(terms, dict(zip(FAULTS, row_values[len(TERMS):])), step)
            if cause and not args.skip_nonfinite:
                raise Diverged(f"diverged: {cause}; {_last_good(last_good)}; lower --lr / --blr, "
                               f"or pass --skip-nonfinite")
            self.skipped += bool(cause)
            self.losses.append(terms["loss"])
        step, lr, _ = self.pending[-1]
        done, n_steps = step + 1, len(self.pending)
        if bar is not None:
            bar.update(n_steps)
            bar.set_postfix(loss=f"{values[-1][0]:.4f}", lr=f"{lr:.2e}", refresh=False)
        if self.env.rank == 0:
            terms = dict(zip(TERMS, values[-1]))
            has_reg = args.reg != "none"
            row = {"step": step, "epoch": done * self.global_batch / self.epoch_size
                   if self.epoch_size else None, "lr": lr, "loss": terms["loss"],
                   "loss_mae": terms["loss_mae"], "loss_reg": terms["loss_reg"] if has_reg
                   else None, "loss_ce": None, "online_acc": None,
                   "img_per_s": n_steps * self.global_batch / max(now - self.t0, 1e-9),
                   "skipped": self.skipped, "eff_rank": None}
            if self.with_head:
                row["loss_ce"], row["online_acc"] = terms["loss_ce"], terms["online_acc"]
            row |= {key: extra.get(key) for key in health.SPECTRUM + health.GRAD_NORMS}
            if not has_reg:
                row["grad_norm_reg"] = None
            if not self.with_head:
                row["grad_norm_ce"] = None
            if args.rank_every and self.cls is not None and math.isfinite(terms["loss"]) and (
                    done % args.rank_every == 0 or final):
                from .. import effective_rank
                try:
                    row["eff_rank"] = float(effective_rank(self.cls.float()))
                except torch.linalg.LinAlgError:  # non-finite features under --skip-nonfinite
                    pass
            with _writing(args.output_dir, last_good):
                outputs.append_metrics(self.path, row)
            if self.trackers is not None:
                self.trackers.log(row, step)
            self.last_row = row
        self.pending, self.t0, self.grad_norms = [], time.perf_counter(), None
