"""What a step is a function of: the LR schedule, the masking noise, AdamW's parameter groups."""
from __future__ import annotations

import math

import torch

from ..mae import data as data_mod


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


def mask_noise(seed: int, step: int, num_patches: int, *, batch: int, world: int = 1,
               accum: int = 1, micro: int = 0, rank: int = 0) -> torch.Tensor:
    """Masking noise (batch, L) of this rank's rows of micro-batch ``micro`` of optimizer step
    ``step``: a slice of one (accum · world · batch, L) draw per step, so any split of the
    step's images over micro-batches and ranks masks each image the same way."""
    g = data_mod.generator(seed, 4, step)
    start = (micro * world + rank) * batch
    return torch.rand(accum * world * batch, num_patches, generator=g)[start:start + batch]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Asynchronous host-to-device copy (pinned first on CUDA): never a host sync."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
