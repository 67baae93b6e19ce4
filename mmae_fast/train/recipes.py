"""Official pretraining recipes as one flag (``--recipe NAME``); explicit flags override them.

Source of ``mmae-vitl``: the official M-MAE repository (yifanzhang-pro/M-MAE), ``pretrain.sh``
(8 GPUs x ``--batch_size 128``, ``mae_vit_large_patch16``, ``--epochs 200``,
``--warmup_epochs 40`` in its latest version (20 in an earlier one), ``--blr 1.5e-4``,
``--weight_decay 0.05``, ``--mask_ratio 0.75``, ``--norm_pix_loss``, ``--lamb 1e-2``, mu 3,
``--reg TCR``, ``--centering False``), ``main_pretrain.py`` (AdamW betas 0.9/0.95, fp16 autocast
with a loss scaler, ``min_lr 0``), ``models_mae.py`` (the encoder norm applied a second time to
the CLS token, a plain ``nn.Linear`` online head on the detached CLS) and its all-gather (each
rank's gradient of R only, i.e. ``--grad-semantics per_rank``).

``mae-vitl`` and ``umae-vitl`` are *ours*: the same budget with ``--reg none`` /
``--reg uniformity`` (the like-for-like baselines; MAE's own published ViT-L schedule is a
global batch of 4096 for 800/1600 epochs). No official M-MAE ViT-B pretraining script exists,
so there is no ViT-B preset.
"""
from __future__ import annotations

#: the official M-MAE ViT-L/16 settings (dest name -> value)
_MMAE_VITL = {
    "model": "vit_large_patch16", "img_size": 224, "batch": 128, "accum_iter": 1,
    "epochs": 200.0, "warmup_epochs": 40.0, "blr": 1.5e-4,
    "min_lr": 0.0, "weight_decay": 0.05, "mask_ratio": 0.75, "norm_pix_loss": True,
    "reg": "tcr", "lamb": 1e-2, "mu": 3.0, "centering": False, "estimator": "exact",
    "precision": "fp16", "grad_semantics": "per_rank", "cls_norm": "shared",
    "online_head": "linear", "data": "imagefolder",
}

RECIPES = {
    "mmae-vitl": _MMAE_VITL,
    "mae-vitl": _MMAE_VITL | {"reg": "none", "lamb": 0.0},
    "umae-vitl": _MMAE_VITL | {"reg": "uniformity"},
}
#: ranks the recipe's per-GPU batch assumes: global batch = 8 x 128 = 1024 (also the m in R)
RECIPE_WORLD = 8
RECIPE_GLOBAL_BATCH = 1024


def apply(args, explicit: dict, log=print) -> list[str]:
    """Fill ``args`` from ``args.recipe``; flags in ``explicit`` (dest -> value given on the
    command line) win, each one reported. Returns the overridden dest names."""
    if args.recipe is None:
        return []
    if args.recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {tuple(RECIPES)}, got {args.recipe!r}")
    recipe, overridden = RECIPES[args.recipe], []
    for dest, value in recipe.items():
        if dest == "warmup_epochs" and "warmup_steps" in explicit:
            dest = "warmup_steps"  # --warmup-steps replaces the recipe's warmup in epochs
        if dest in explicit:
            if explicit[dest] != value:
                overridden.append(dest)
                log(f"mmae-train: --recipe {args.recipe}: --{dest.replace('_', '-')} "
                    f"{explicit[dest]!r} given explicitly OVERRIDES the recipe's {value!r}")
            continue
        setattr(args, dest, value)
    log(f"mmae-train: --recipe {args.recipe}: " +
        ", ".join(f"{k}={getattr(args, k)!r}" for k in recipe))
    return overridden


def warn_off_recipe(args, world: int, log=print) -> None:
    """Warn where a ``--recipe`` run differs from the official 8-GPU run in a way that changes
    its numbers: the global batch (the lr scales with it), and ``per_rank`` gradients on another
    number of ranks (R's gradient weighted lamb/world instead of lamb/8)."""
    if not args.recipe:
        return
    global_batch = args.batch * world * args.accum_iter
    if global_batch != RECIPE_GLOBAL_BATCH:
        log(f"mmae-train: WARNING --recipe {args.recipe} is {RECIPE_WORLD} GPUs x "
            f"{RECIPE_GLOBAL_BATCH // RECIPE_WORLD} = {RECIPE_GLOBAL_BATCH} images per step; "
            f"here {global_batch} (the lr scales with it, R's batch m does not): use "
            f"--accum-iter to match")
    if (args.grad_semantics == "per_rank" and args.reg != "none" and args.lamb
            and world != RECIPE_WORLD
            and not {"grad_semantics", "lamb"} & set(getattr(args, "recipe_overrides", []))):
        log(f"mmae-train: WARNING --grad-semantics per_rank on {world} rank(s) weights R's "
            f"gradient by lamb/{world}, the official {RECIPE_WORLD}-GPU run's by "
            f"lamb/{RECIPE_WORLD} ({RECIPE_WORLD / world:g}x less; --accum-iter does not change "
            f"it): for the official weight on any number of GPUs pass --grad-semantics exact "
            f"--lamb {args.lamb / RECIPE_WORLD:g}")
