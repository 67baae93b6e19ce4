"""Any checkpoint -> the encoder as a timm ``VisionTransformer`` (the model every protocol uses).

Accepted inputs (:func:`load_encoder`):

- a training checkpoint (``checkpoint-last.pt`` of ``mmae-train``; after ``--stop-after``,
  ``--no-export`` or mid-run): a dict with ``model`` (the MAE's state dict) and ``args``;
- an export (``encoder.safetensors`` / ``.pt`` state dict of ``mmae-export`` or of the trainer),
  with its ``encoder.json`` sidecar when there is one;
- a ``mmae-eval finetune`` checkpoint (a timm state dict under ``model``).

The encoder keys are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.*``, ``norm.*``); the architecture is read from the tensor shapes (width, depth,
patch, image size, MLP ratio, qkv bias) except the number of heads: the checkpoint's own record (a fine-tuning checkpoint's
``vit_kwargs``, an export's sidecar), else the run's preset (``args["model"]``), else
``num_heads=``; a ``num_heads=`` that contradicts a recorded count is a ``ValueError``.
"""
from __future__ import annotations

import json
import os
import re

import torch

from ..mae import checkpoint
from ..mae.timm_compat import timm  # noqa: F401 - the CPU-torch torchvision workaround first
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
#: the online head of the trainer: BatchNorm1d(affine=False, eps=1e-6) then Linear
ONLINE_HEAD_EPS = 1e-6


def _strip(state: dict) -> dict:
    """Drop DDP / torch.compile wrappers' prefixes (``module.``, ``_orig_mod.``)."""
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _num_heads_of(args: dict | None) -> int | None:
    if not args or "model" not in args:
        return None
    try:
        from ..mae.model import PRESETS
    except ImportError:  # the trainer's module moved: fall back to the sidecar / argument
        return None
    preset = PRESETS.get(args["model"])
    return preset.num_heads if preset is not None else None


def _timm_name_of(args: dict | None) -> str | None:
    try:
        from ..mae.model import PRESETS
        preset = PRESETS.get((args or {}).get("model"))
        return getattr(preset, "timm_name", None)
    except ImportError:
        return None


def vit_kwargs(state: dict, num_heads: int) -> dict:
    """``VisionTransformer`` kwargs reproducing the encoder in ``state`` (timm names)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise ValueError(f"the checkpoint has no encoder key {key!r}: not an MAE/ViT "
                             f"checkpoint (keys: {sorted(state)[:8]} ...)")
    width = state["cls_token"].shape[-1]
    proj = state["patch_embed.proj.weight"]  # (width, in_chans, p, p)
    patch = proj.shape[-1]
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    if grid * grid != state["pos_embed"].shape[1] - 1:
        raise ValueError(f"pos_embed has {state['pos_embed'].shape[1]} rows, not 1 + a square")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if width % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the width {width}")
    return dict(img_size=grid * patch, patch_size=patch, in_chans=proj.shape[1], embed_dim=width,
                depth=depth, num_heads=num_heads,
                mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
                qkv_bias="blocks.0.attn.qkv.bias" in state, global_pool="token", class_token=True)


def fold_online_head(state: dict) -> dict:
    """The trainer's online head as one timm ``head`` Linear, or {} without one.

    ``head="linear"`` (keys ``head.0.*``, a Linear) is copied; ``head="bn-linear"``
    (``Linear(BN(x))``, BN without affine, eval mode) is folded: ``W' = W / sqrt(var + eps)``,
    ``b' = b - W' mean``."""
    bn = ("head.0.running_mean", "head.0.running_var", "head.1.weight", "head.1.bias")
    if all(k in state for k in bn):
        mean, var, w, b = (state[k].double() for k in bn)
        w2 = w * (var + ONLINE_HEAD_EPS).rsqrt()
        return {"head.weight": w2.float().contiguous(), "head.bias": (b - w2 @ mean).float()}
    if "head.0.weight" in state and state["head.0.weight"].ndim == 2 and "head.0.bias" in state:
        return {"head.weight": state["head.0.weight"].float().contiguous(),
                "head.bias": state["head.0.bias"].float().contiguous()}
    return {}


def _read_any(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: no file at {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            raw = load_file(path)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or not a checkpoint at all
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"checkpoint {path!r} cannot be read ({type(exc).__name__}: {first}); "
                         f"pass an mmae-train checkpoint or an mmae-export file") from None
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(raw).__name__}, not a state dict; "
                         f"pass an mmae-train checkpoint or an mmae-export file")
    checkpoint.verify(raw, path)  # files with a checksum (mmae_fast's checkpoints)
    return raw


def load_encoder(path: str, *, num_heads: int | None = None, head: bool = False):
    """``(state, info)`` of the encoder in ``path`` (see the module doc).

    state: timm-named float32 tensors (encoder; plus ``head.*`` when ``head`` and the input has
    one: the folded online head or a fine-tuned head). info: ``kwargs`` (VisionTransformer),
    ``timm_name`` (or None), ``num_classes`` (of the head in ``state``), ``args`` (the training
    run's, or {}), ``kind`` (``train``, ``export`` or ``finetune``). A file's checksum, when it
    has one, is verified; a non-finite tensor in ``state`` is a ValueError naming it."""
    raw = _read_any(path)
    side = {}
    if "model" not in raw:  # an export: its sidecar (same stem, or the trainer's encoder.json)
        for sidecar in (os.path.splitext(path)[0] + ".json",
                        os.path.join(os.path.dirname(os.path.abspath(path)), "encoder.json")):
            if os.path.isfile(sidecar):
                side = json.load(open(sidecar))
                break
    if "model" in raw and isinstance(raw["model"], dict):
        kind = raw.get("kind", "train")
        args = raw.get("args") or {}
        full = _strip(raw["model"])
        info_kwargs = raw.get("vit_kwargs")
    else:
        kind, args, full = "export", {}, _strip(raw)
        info_kwargs = side.get("timm_kwargs")
    prefixes = ENCODER_PREFIXES + ("fc_norm.",)  # fc_norm: a fine-tuned avg-pool model
    state = {k: v.float().contiguous() for k, v in full.items() if k.startswith(prefixes)}
    # the checkpoint's own record first (a fine-tuning checkpoint's kwargs, an export's sidecar),
    # then the training run's preset; num_heads only where neither says (the weights' shapes do
    # not depend on it, so a contradicting value would build a different model silently)
    stored = (info_kwargs or {}).get("num_heads") or _num_heads_of(args)
    if num_heads is not None and stored is not None and int(num_heads) != int(stored):
        raise ValueError(f"{path}: --num-heads {num_heads} contradicts the checkpoint, whose "
                         f"encoder has {stored} heads; drop --num-heads")
    heads = stored or num_heads
    if heads is None:
        raise ValueError(f"{path}: cannot tell the number of attention heads (no preset name in "
                         f"the checkpoint, no encoder.json beside it); pass --num-heads N")
    kwargs = vit_kwargs(state, int(heads))
    if "fc_norm.weight" in state:  # average pooling + fc_norm (MAE's fine-tuning default)
        kwargs["global_pool"] = (info_kwargs or {}).get("global_pool", "avg")
    num_classes = 0
    if head:
        extra = fold_online_head(full) if kind == "train" else {
            k: full[k].float() for k in ("head.weight", "head.bias") if k in full}
        if len(extra) == 2:
            state.update(extra)
            num_classes = extra["head.weight"].shape[0]
    bad = checkpoint.first_non_finite(state)
    if bad:
        raise ValueError(f"checkpoint {path!r}: non-finite encoder weights: {bad}; there is "
                         f"nothing to evaluate or export (mmae-train never saves such a state); "
                         f"pass a checkpoint of a run that did not diverge")
    kwargs["num_classes"] = num_classes
    name = side.get("timm_name") or _timm_name_of(args)
    return state, {"kwargs": kwargs, "timm_name": name, "num_classes": num_classes,
                   "args": args, "kind": kind}


def build_vit(state: dict, kwargs: dict, *, new: tuple[str, ...] = ("head.",),
              **overrides) -> VisionTransformer:
    """A timm ``VisionTransformer(**kwargs | overrides)`` with ``state`` loaded.

    Keys of the new model missing from ``state`` must start with one of ``new`` (a new
    classifier, left to the caller to initialise); any other mismatch raises."""
    model = VisionTransformer(**(kwargs | overrides))
    own = model.state_dict()
    load = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    bad = sorted(set(state) - set(load))
    missing = sorted(set(own) - set(load))
    if bad or any(not k.startswith(new) for k in missing):
        raise ValueError(f"encoder weights do not fit the timm model: unexpected/mis-shaped "
                         f"{bad[:6]}, missing {missing[:6]}")
    model.load_state_dict(load, strict=False)
    return model


@torch.no_grad()
def cls_features(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """CLS token after the encoder's final norm (one norm), (B, width): ``forward_features``
    then token pooling without the head."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
