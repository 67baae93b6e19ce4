"""``mmae-eval finetune``: the official M-MAE / MAE end-to-end fine-tuning.

Defaults are the official settings: M-MAE ``finetune.sh`` (100 epochs, blr 5e-4, layer decay
0.65, weight decay 0.05, drop path 0.1, mixup 0.8, cutmix 1.0, random erasing 0.25, CLS-token
head ``--cls_token``, batch 64 x 4 accumulation x 8 GPUs = 2048) and MAE ``main_finetune.py``
(5 warmup epochs, min lr 1e-6, AdamW (0.9, 0.999), RandAugment ``rand-m9-mstd0.5-inc1``,
label smoothing 0.1, mixup prob 1 / switch prob 0.5 / batch mode, head weight ~ N(0, 2e-5)
truncated). Layer decay as MAE's ``param_groups_lrd`` (group lr scale
``0.65^(depth + 1 - layer)``: patch embedding / CLS / position layer 0, block i layer i + 1,
final norm and head scale 1; timm's grouping differs for the final norm, see
:func:`param_groups`) handed to timm's ``create_optimizer_v2``; timm's ``Mixup``,
``create_transform``, ``SoftTargetCrossEntropy``, optional ``ModelEmaV3``. Top-1 / top-5 (and
of the EMA model) on the validation split every epoch.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn as nn

from ..mae import checkpoint, errors
from . import common, data as edata
from .encoder import build_vit, load_encoder

SOURCE = "M-MAE finetune.sh / MAE main_finetune.py"


def layer_id(name: str, depth: int) -> int:
    """MAE's ``get_layer_id_for_vit``: CLS / position / patch embedding 0, block i ``i + 1``,
    everything after the blocks (final norm, fc_norm, head) ``depth + 1``."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """MAE's ``param_groups_lrd``: no weight decay on 1-D parameters and on the model's
    ``no_weight_decay()`` (cls_token, pos_embed); ``lr_scale = layer_decay^(depth + 1 - id)``.

    timm's own ``param_groups_layer_decay`` puts the final norm with the last block (scale
    ``layer_decay``, not 1), so the groups are built here and handed to timm's optimizer."""
    depth = len(model.blocks)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name in skip)
        lid = layer_id(name, depth)
        scale = layer_decay ** (depth + 1 - lid) if layer_decay else 1.0
        g = groups.setdefault((lid, decay), {"params": [], "lr_scale": scale,
                                             "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
    return list(groups.values())


def optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None):
    """timm AdamW (betas 0.9, 0.999 as MAE's torch AdamW) over :func:`param_groups`; each group
    carries ``lr_scale`` (applied by ``common.set_lr``)."""
    from timm.optim import create_optimizer_v2
    groups = param_groups(model, weight_decay, layer_decay)
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay,
                               param_group_fn=lambda _: groups, betas=(0.9, 0.999))


#: flags a resumed fine-tuning shares with its checkpoint (besides ``common.RUN_DEFINING``)
RUN_DEFINING = ("layer_decay", "drop_path", "mixup", "cutmix", "smoothing", "aa", "reprob",
                "global_pool", "model_ema", "model_ema_decay")


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or errors.OneLineParser(prog="mmae-eval finetune",
                                  description=__doc__.split("\n\n")[0])
    common.add_common_args(p, epochs=100, batch=2048, blr=5e-4, warmup=5, min_lr=1e-6,
                           weight_decay=0.05, source=SOURCE)
    s = SOURCE
    p.add_argument("--layer-decay", type=float, default=0.65, help=f"default 0.65 ({s})")
    p.add_argument("--drop-path", type=float, default=0.1, help=f"default 0.1 ({s})")
    p.add_argument("--mixup", type=float, default=0.8, help=f"mixup alpha; default 0.8 ({s})")
    p.add_argument("--cutmix", type=float, default=1.0, help=f"cutmix alpha; default 1.0 ({s})")
    p.add_argument("--smoothing", type=float, default=0.1, help=f"default 0.1 ({s})")
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1",
                   help=f"timm auto-augment policy ('' for none); default ({s})")
    p.add_argument("--reprob", type=float, default=0.25, help=f"random erasing; default 0.25 ({s})")
    p.add_argument("--global-pool", default="token",
                   help="token (CLS after the final norm, finetune.sh's --cls_token) or avg "
                        "(MAE's default: mean of patch tokens + a new fc_norm)")
    p.add_argument("--model-ema", action="store_true", help="keep a timm ModelEmaV3 (not in the "
                                                            "official recipe)")
    p.add_argument("--model-ema-decay", type=float, default=0.9999)
    return p


def _check(args) -> None:
    for name in ("layer_decay", "drop_path", "mixup", "cutmix", "smoothing", "reprob",
                 "model_ema_decay"):
        v = getattr(args, name)
        if not 0 <= v <= (1 if name != "mixup" and name != "cutmix" else float("inf")):
            raise ValueError(f"--{name.replace('_', '-')} out of range: {v}")
    if args.global_pool not in ("token", "avg"):
        raise ValueError(f"--global-pool must be token or avg, got {args.global_pool!r}")
    if args.aa:
        try:  # timm parses the policy when it builds the transform (assertions on a bad one)
            edata.finetune_transform(32, auto_augment=args.aa, re_prob=0.0)
        except (AssertionError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"--aa {args.aa!r} is not a timm auto-augment policy ({exc}); "
                             f"give e.g. rand-m9-mstd0.5-inc1 (the official one), "
                             f"original, augmix-m5-w3, or '' for none") from None
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_per_rank % 2:
        raise ValueError(f"mixup/cutmix need an even batch per rank and micro-step, got "
                         f"{args.batch_per_rank}; change --batch or pass --mixup 0 --cutmix 0")


def run(args: argparse.Namespace) -> dict:
    """Fine-tune; returns ``common.fit``'s dict plus ``final`` and ``model``."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    env = common.Env(args.device)
    common.check_common(args, env)
    _check(args)
    args.data = edata.check_data(args.data, args.data_path)
    state, info = load_encoder(args.checkpoint, num_heads=args.num_heads)
    args.encoder_digest = checkpoint.state_digest(state)  # a resumed run checks it
    size = info["kwargs"]["img_size"]
    train_ds = edata.evenly(edata.dataset(
        args.data, "train", edata.finetune_transform(size, auto_augment=args.aa,
                                                     re_prob=args.reprob), args.data_path),
        args.max_images)
    val_ds = edata.evenly(edata.dataset(args.data, "val", edata.eval_transform(size),
                                        args.data_path), args.max_images)
    classes = edata.same_classes(train_ds, val_ds)
    # val/ is first read after a whole epoch: its files are decoded once before training
    edata.check_images(edata.eval_shard(val_ds, rank=env.rank, world=env.world),
                       workers=args.workers)
    new = ("head.",)
    if args.global_pool == "avg":  # MAE: the final norm is replaced by a new fc_norm
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        new = ("head.", "fc_norm.")
    torch.manual_seed(args.seed)
    model = build_vit(state, info["kwargs"], new=new, num_classes=classes,
                      drop_path_rate=args.drop_path, global_pool=args.global_pool)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    model.to(env.device)
    ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=args.model_ema_decay)
    net = model
    if env.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    opt = optimizer(model, args.lr, args.weight_decay, args.layer_decay)
    loader = edata.train_loader(train_ds, args.batch_per_rank, seed=args.seed, rank=env.rank,
                                world=env.world, workers=args.workers)
    val_loader = edata.eval_loader(val_ds, args.batch_per_rank, rank=env.rank, world=env.world,
                                   workers=args.workers)
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=1.0,
                      switch_prob=0.5, mode="batch", label_smoothing=args.smoothing,
                      num_classes=classes)
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    def train_step(x, y, sync):
        model.train()
        if mixup is not None:
            x, y = mixup(x, y)
        ctx = net.no_sync() if env.world > 1 and not sync else contextlib.nullcontext()
        with ctx:
            with common.autocast(env.device, args.precision):
                logits = net(x)
            loss = criterion(logits.float(), y)
            (loss / args.accum_iter).backward()
        return loss.detach()

    def evaluate_fn():
        model.eval()
        out = common.evaluate(model, val_loader, env, args.precision)
        if ema is not None:
            e = common.evaluate(ema.module, val_loader, env, args.precision)
            out |= {"top1_ema": e["top1"], "top5_ema": e["top5"]}
        return out

    def get_state():
        return {"model": model.state_dict(), "vit_kwargs": info["kwargs"] | {
            "num_classes": classes, "global_pool": args.global_pool}} | (
            {"ema": ema.module.state_dict()} if ema is not None else {})

    def set_state(s):
        model.load_state_dict(s["model"])
        if ema is not None:
            if "ema" not in s:
                raise ValueError("--resume: the checkpoint has no EMA state; drop --model-ema")
            ema.module.load_state_dict(s["ema"])

    res = common.fit(args, env, kind="finetune", loader=loader, opt=opt, train_step=train_step,
                     after_step=(lambda: ema.update(model)) if ema is not None else (lambda: None),
                     evaluate_fn=evaluate_fn, get_state=get_state, set_state=set_state,
                     run_defining=RUN_DEFINING)
    res["final"] = res["history"][-1] if res["history"] else None
    res["model"] = model
    return res


def main(argv=None) -> int:
    return common.cli_main("finetune", build_parser, run, argv)
