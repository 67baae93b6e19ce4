"""``mmae-train`` arguments: the parser, ``--recipe`` presets, validation with named errors."""
from __future__ import annotations

import argparse
import math
import os
import re

from ..mae import data as data_mod, errors, track
from . import recipes, resume

REGS = ("none", "uniformity", "tcr")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda", "official-eager")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ONLINE_HEADS = ("linear", "bn-linear", "none")
PIPELINES = data_mod.PIPELINES

DESCRIPTION = "M-MAE pretraining: loss = L_MAE + lamb·R(cls) + L_CE(online head), timm ViT MAE."
EPILOG = """examples:
  mmae-train --model tiny --data digits --reg tcr --steps 300                # CPU
  torchrun --nproc_per_node 8 -m mmae_fast.train --recipe mmae-vitl --data-path /data/imagenet
See docs/training.md."""


def build_parser() -> argparse.ArgumentParser:
    p = errors.OneLineParser(prog="mmae-train", description=DESCRIPTION, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help=f"official settings in one flag: {tuple(recipes.RECIPES)} "
                                    "(printed at start, stored in args.json; explicit flags "
                                    "override it, loudly)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny",
                   help="preset: tiny, vit_base_patch16, vit_large_patch16, vit_huge_patch14")
    g.add_argument("--img-size", type=int, help="default: the preset's (tiny 16, ViTs 224)")
    g.add_argument("--mask-ratio", type=float, default=0.75)
    g.add_argument("--no-norm-pix-loss", dest="norm_pix_loss", action="store_false")
    g.add_argument("--cls-norm", default="encoder",
                   help="'encoder': CLS after the encoder norm (one norm); 'shared': the encoder "
                        "norm applied again, same parameters (the official M-MAE code); "
                        "'separate': an extra LayerNorm with its own parameters (not exported)")
    g.add_argument("--online-head", default="linear",
                   help="linear (official: nn.Linear on the detached CLS), bn-linear "
                        "(BatchNorm1d(affine=False) + Linear, MAE's linear-probe head), none")
    g.add_argument("--no-online-head", dest="online_head", action="store_const", const="none",
                   help="same as --online-head none")
    g.add_argument("--drop-path", type=float, default=0.0)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="digits (embedded), imagefolder, synthetic; default: "
                                  "imagefolder with --data-path, else digits")
    g.add_argument("--data-path", help="ImageNet-layout folder (--data imagefolder)")
    g.add_argument("--data-pipeline", default="auto",
                   help="imagefolder: gpu (JPEG bytes from workers, nvJPEG decode and batched "
                        "augmentation on the device), pil (PIL + torchvision transforms in the "
                        "workers), auto (gpu on CUDA, pil on the CPU)")
    g.add_argument("--workers", type=int, default=8, help="data loader workers (imagefolder)")
    g.add_argument("--batch", type=int, default=64, help="images per rank per micro-step")
    g.add_argument("--accum-iter", type=int, default=1, help="micro-steps per optimizer step")
    g = p.add_argument_group("regulariser")
    g.add_argument("--reg", default="tcr", help="none, uniformity or tcr")
    g.add_argument("--lamb", type=float, default=1e-2, help="weight of R (official 1e-2)")
    g.add_argument("--mu", type=float, default=1.0,
                   help="c = mu/d (official ViT-L script: 3; mu 1 is the code's default)")
    g.add_argument("--centering", action="store_true",
                   help="R on centred features (default off; see docs/training.md on the "
                        "official --centering False)")
    g.add_argument("--estimator", default="exact", help="exact, series or taylor")
    g.add_argument("--backend", default="auto",
                   help="auto, reference, cpu, triton, cuda, official-eager (official loss, 1 process)")
    g.add_argument("--grad-semantics", default="exact",
                   help="with several ranks: exact (gradient of lamb·R on the global batch) or "
                        "per_rank (official: 1/K of it)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="optimizer steps (default: from --epochs)")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--warmup-steps", type=int,
                   help="default: 10%% of the steps (ours; official ViT-L: 40 of 200 epochs)")
    g.add_argument("--warmup-epochs", type=float, help="warmup in epochs (instead of steps)")
    g.add_argument("--blr", type=float, default=1.5e-4, help="lr = blr · global batch / 256")
    g.add_argument("--lr", type=float, help="absolute peak lr (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--precision", default="auto",
                   help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16 (+scaler)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the step's forward, regulariser included")
    g.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count) every optimizer step that would make the weights or "
                        "the optimizer state non-finite (non-finite loss, non-finite or "
                        "overflowing gradient) instead of stopping the run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default="runs/train")
    g.add_argument("--log-every", type=int, default=10,
                   help="JSONL metrics (and the one host sync) every N steps")
    g.add_argument("--rank-every", type=int, default=50,
                   help="effective rank of the CLS features every N steps (0: never)")
    g.add_argument("--grad-norm-every", type=int, default=50,
                   help="gradient norm of each loss term (L_MAE, lamb·R, L_CE) at the log steps "
                        "that are multiples of N and the last (0: never); costs one more "
                        "forward and a backward per term at those steps only")
    g.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N steps "
                   "(0: only at the end)")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output-dir that holds an earlier one (its "
                        "metrics and checkpoint are replaced); without it such a directory is "
                        "refused unless --resume is given")
    g.add_argument("--resume", help="checkpoint path, or 'auto' (<output-dir>/checkpoint-last.pt "
                   "if present)")
    g.add_argument("--override-on-resume", metavar="FLAGS",
                   help="with --resume: flags that change the optimisation (lr, blr, min-lr, "
                        "warmup-steps, warmup-epochs, weight-decay, lamb, mu, centering, "
                        "estimator, grad-semantics, no-norm-pix-loss, drop-path; comma-separated) "
                        "that may differ from the checkpoint's; recorded in args.json "
                        "(resume_overrides). Without it a changed one is refused")
    g.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many "
                   "steps of this run, as if killed: for preemptible jobs and tests")
    g.add_argument("--no-export", dest="export", action="store_false",
                   help="skip the encoder.safetensors export at the end")
    g.add_argument("--no-plot", dest="plot", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g = p.add_argument_group("experiment tracking (every metrics.jsonl value; rank 0)")
    track.add_args(g)
    return p


def explicit_flags(argv) -> dict:
    """dest -> value of every flag given on the command line ``argv``."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return vars(p.parse_args(argv))


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate ``args`` (ValueError naming the argument and the fix); fill derived defaults."""
    from ..mae.model import CLS_NORMS, PRESETS
    from .._checks import ESTIMATORS, GRAD_SEMANTICS
    _need(args.model in PRESETS, f"--model: unknown preset {args.model!r}; choose one of "
                                 f"{tuple(PRESETS)}")
    args.data = data_mod.resolve_data(args.data, args.data_path)
    _need(args.data in data_mod.DATASETS, f"--data must be one of {data_mod.DATASETS}, "
                                          f"got {args.data!r}")
    _need(args.data != "imagefolder" or bool(args.data_path),
          "--data imagefolder needs --data-path DIR (an ImageNet-layout folder)")
    _need(args.data_path is None or os.path.isdir(args.data_path),
          f"--data-path {args.data_path!r} is not a directory")
    if args.cls_norm == "double":
        raise ValueError("--cls-norm double was renamed: 'shared' is the official double norm "
                         "(the encoder norm again), 'separate' an extra LayerNorm of its own")
    for name, options in (("reg", REGS), ("backend", BACKENDS), ("precision", PRECISIONS),
                          ("estimator", ESTIMATORS), ("grad_semantics", GRAD_SEMANTICS),
                          ("cls_norm", CLS_NORMS), ("online_head", ONLINE_HEADS),
                          ("data_pipeline", PIPELINES)):
        value = getattr(args, name)
        _need(value in options, f"--{name.replace('_', '-')} must be one of {options}, "
                                f"got {value!r}")
    _need(math.isfinite(args.lamb) and args.lamb >= 0, f"--lamb must be >= 0, got {args.lamb}")
    _need(math.isfinite(args.mu) and args.mu > 0, f"--mu must be > 0, got {args.mu}")
    _need(0 < args.mask_ratio < 1, f"--mask-ratio must be in (0, 1) (L_MAE is the loss on the "
                                   f"masked patches), got {args.mask_ratio}; e.g. 0.75")
    _need(0 <= args.drop_path < 1, f"--drop-path is a probability: give a value in [0, 1), "
                                   f"got {args.drop_path}")
    for name in ("batch", "accum_iter", "log_every"):
        _need(getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, "
                                        f"got {getattr(args, name)}")
    for name in ("steps", "stop_after", "threads", "img_size"):
        v = getattr(args, name)
        _need(v is None or v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("rank_every", "grad_norm_every", "ckpt_every", "weight_decay", "min_lr",
                 "workers"):
        v = getattr(args, name)
        _need(v >= 0, f"--{name.replace('_', '-')} must be >= 0, got {v}")
    _need(math.isfinite(args.epochs) and args.epochs > 0,
          f"--epochs must be a finite number > 0, got {args.epochs}")
    _need(args.device is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device) is not None,
          f"--device must be auto, cpu, cuda or cuda:N (N a GPU index), got {args.device!r}")
    _need(not (args.overwrite and args.resume),
          "--overwrite starts a new run, --resume continues one: give one of them")
    overrides = getattr(args, "override_on_resume", None)
    _need(not overrides or bool(args.resume),
          "--override-on-resume needs --resume (a new run has nothing to override)")
    args.override_on_resume = resume.parse_overrides(overrides)
    _need(args.output_dir is None or not os.path.isfile(args.output_dir),
          f"--output-dir {args.output_dir!r} is a file; give a directory")
    if args.backend in ("cuda", "triton"):
        from .. import backends
        reason = backends.availability(args.backend)
        _need(reason is None, f"--backend {args.backend} is not available here ({reason}); use "
                              f"--backend auto")
    _need(args.backend != "official-eager" or (not args.centering and args.estimator == "exact"),
          "--backend official-eager is the official exact, uncentred loss: drop --centering / "
          "--estimator, or use --backend auto")
    _need(args.data != "synthetic" or args.steps is not None,
          "--data synthetic has no epochs; give --steps N")
    _need(math.isfinite(args.blr) and args.blr > 0
          and (args.lr is None or (math.isfinite(args.lr) and args.lr > 0)),
          "--blr / --lr must be finite numbers > 0")
    _need(args.warmup_steps is None or args.warmup_steps >= 0,
          f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    _need(args.warmup_epochs is None or args.warmup_epochs >= 0,
          f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    _need(args.warmup_steps is None or args.warmup_epochs is None,
          "give --warmup-steps or --warmup-epochs, not both")
    _need(args.backend != "official-eager" or args.reg == "tcr",
          "--backend official-eager is a TCR loss; use it with --reg tcr")
    track.check_available(args.tensorboard, args.wandb)
    if args.img_size is None:
        args.img_size = PRESETS[args.model].img_size
    patch = PRESETS[args.model].patch_size
    _need(args.img_size % patch == 0, f"--img-size ({args.img_size}) must be a multiple of "
                                      f"the patch size {patch} of --model {args.model}")
    from ..mae.model import kept_tokens
    patches = (args.img_size // patch) ** 2
    _need(kept_tokens(patches, args.mask_ratio) < patches,
          f"--mask-ratio {args.mask_ratio} masks none of the {patches} patches (L_MAE is the "
          f"loss on the masked ones); give a larger ratio, e.g. 0.75")
    _need(args.online_head != "bn-linear" or args.batch >= 2,
          "--online-head bn-linear normalises over the batch of each rank, which needs "
          "--batch >= 2; raise --batch or use --online-head linear")
    return args


def parse_args(argv=None, log=print) -> argparse.Namespace:
    """Parse, apply ``--recipe`` (explicit flags win, reported through ``log``) and validate;
    raises ValueError naming a bad argument."""
    args = build_parser().parse_args(argv)
    args.recipe_overrides = recipes.apply(args, explicit_flags(argv), log) if args.recipe else []
    return check_args(args)
