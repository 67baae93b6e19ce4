"""Shared set-up of the tests/eval/test_eval_*.py files: a tiny MAE checkpoint, a tiny image folder."""
from __future__ import annotations

import inspect
import os

import torch

import mmae_fast.mae.timm_compat  # noqa: F401 - the torchvision shim before timm


def mae_checkpoint(path, *, seed: int = 0, bn_head: bool = True) -> dict:
    """Write a checkpoint in the trainer's format (``model``, ``args``, ``step``) of the tiny
    preset with a 10-class online head (BN + Linear with non-trivial running statistics when
    the trainer supports it); returns the MAE module (eval mode)."""
    from mmae_fast.mae.model import MaskedAutoencoder, create_model
    torch.manual_seed(seed)
    kw = {"num_classes": 10}
    if "head" in inspect.signature(MaskedAutoencoder.__init__).parameters:
        kw["head"] = "bn-linear" if bn_head else "linear"
    model = create_model("tiny", **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():  # move away from the symmetric init
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.head.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    torch.save({"model": model.state_dict(), "step": 3,
                "args": {"model": "tiny", "img_size": 16, "data": "digits", "mask_ratio": 0.75,
                         "norm_pix_loss": True, "cls_norm": "encoder"}}, path)
    return model


def image_folder(root, classes=("cat", "dog", "eel"), train=6, val=2):
    """ImageNet-layout folder of random PNG and JPEG images of assorted sizes."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                h, w = 14 + i % 3 * 5, 18 + i % 2 * 7
                px = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root
