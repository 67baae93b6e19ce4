"""``mmae-eval linprobe``: the official M-MAE / MAE linear probe on a frozen encoder.

    logits = Linear(BatchNorm1d(affine=False, eps=1e-6)(cls))     cls: CLS token after the
                                                                   encoder's final norm (B, d)

Defaults are the official settings: M-MAE ``linprobe.sh`` (90 epochs, blr 0.05, weight decay 0,
batch 256 x 4 accumulation x 8 GPUs = 8192) and MAE ``main_linprobe.py`` (10 warmup epochs,
min lr 0, LARS with momentum 0.9 and trust coefficient 1e-3, head weight ~ N(0, 0.01)
truncated, cross-entropy, RandomResizedCrop + flip for training, Resize 256 + CenterCrop 224
for evaluation). ``lr = blr · batch / 256`` (1.6 at the defaults), per-iteration warmup then
half-cosine. Top-1 / top-5 on the validation split after every epoch.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mae import checkpoint, errors
from . import common, data as edata
from .encoder import build_vit, cls_features, load_encoder

SOURCE = "M-MAE linprobe.sh / MAE main_linprobe.py"


def lars_param_groups(module: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """MAE's LARS groups for timm's ``Lars``: matrices get weight decay and the trust ratio
    (``always_adapt``); 1-D parameters (biases, norms) plain momentum SGD, no decay."""
    mats = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    vecs = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": mats, "weight_decay": weight_decay, "always_adapt": True},
            {"params": vecs, "weight_decay": 0.0, "always_adapt": False}]


def lars(module: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """timm ``Lars`` configured as MAE's ``util/lars.py``: for each matrix ``p`` with gradient
    ``g``, ``u = (g + wd·p) · 1e-3·‖p‖/‖g + wd·p‖`` (ratio 1 if a norm is 0), ``buf = 0.9·buf +
    u``, ``p -= lr·buf``; vectors: ``u = g``. ``eps = 0``: no extra term. With wd > 0 timm's
    ratio is the LARS paper's ``1e-3·‖p‖/(‖g‖ + wd·‖p‖)`` (1 if ‖g‖ = 0) instead of MAE's; the
    official probe has wd = 0, where both are equal."""
    from timm.optim import Lars
    return Lars(lars_param_groups(module, weight_decay), lr=lr, momentum=0.9, trust_coeff=1e-3,
                eps=0.0)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or errors.OneLineParser(prog="mmae-eval linprobe",
                                  description=__doc__.split("\n\n")[0])
    common.add_common_args(p, epochs=90, batch=8192, blr=0.05, warmup=10, min_lr=0.0,
                           weight_decay=0.0, source=SOURCE)
    return p


def run(args: argparse.Namespace) -> dict:
    """Train the probe; returns ``common.fit``'s dict plus ``final`` (last epoch's row)."""
    env = common.Env(args.device)
    common.check_common(args, env)
    args.data = edata.check_data(args.data, args.data_path)
    state, info = load_encoder(args.checkpoint, num_heads=args.num_heads)
    args.encoder_digest = checkpoint.state_digest(state)  # a resumed run checks it
    vit = build_vit(state, info["kwargs"], num_classes=0).to(env.device)
    vit.eval().requires_grad_(False)
    size, width = info["kwargs"]["img_size"], info["kwargs"]["embed_dim"]
    train_ds = edata.evenly(edata.dataset(args.data, "train", edata.linprobe_transform(size),
                                          args.data_path), args.max_images)
    val_ds = edata.evenly(edata.dataset(args.data, "val", edata.eval_transform(size),
                                        args.data_path), args.max_images)
    classes = edata.same_classes(train_ds, val_ds)
    # val/ is first read after a whole epoch: its files are decoded once before training
    edata.check_images(edata.eval_shard(val_ds, rank=env.rank, world=env.world),
                       workers=args.workers)
    loader = edata.train_loader(train_ds, args.batch_per_rank, seed=args.seed, rank=env.rank,
                                world=env.world, workers=args.workers)
    val_loader = edata.eval_loader(val_ds, args.batch_per_rank, rank=env.rank, world=env.world,
                                   workers=args.workers)
    torch.manual_seed(args.seed)
    head = nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), nn.Linear(width, classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    head.to(env.device)
    net = head
    if env.world > 1:
        net = nn.parallel.DistributedDataParallel(
            head, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    opt = lars(head, args.lr, args.weight_decay)

    def features(x):
        with common.autocast(env.device, args.precision):
            f = cls_features(vit, x).float()
        if not bool(torch.isfinite(f).all()):  # the loss is read every step: no extra stall
            raise ValueError(f"{args.checkpoint}: the frozen encoder's CLS features are not "
                             f"finite (non-finite or overflowing weights); probe a checkpoint "
                             f"from before the divergence")
        return f

    def train_step(x, y, sync):
        f = features(x)
        ctx = net.no_sync() if env.world > 1 and not sync else contextlib.nullcontext()
        with ctx:
            head.train()
            loss = F.cross_entropy(net(f), y)
            (loss / args.accum_iter).backward()
        return loss.detach()

    def evaluate_fn():
        head.eval()
        return common.evaluate(lambda x: head(features(x)), val_loader, env, "fp32")

    res = common.fit(args, env, kind="linprobe", loader=loader, opt=opt, train_step=train_step,
                     after_step=lambda: None, evaluate_fn=evaluate_fn,
                     get_state=lambda: {"head": head.state_dict()},
                     set_state=lambda s: head.load_state_dict(s["head"]))
    res["final"] = res["history"][-1] if res["history"] else None
    res["head"] = head
    return res


def main(argv=None) -> int:
    return common.cli_main("linprobe", build_parser, run, argv)
