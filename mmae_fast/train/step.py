"""One optimizer step: forward, losses, backward, update. No host synchronisation.

    loss = L_MAE + lamb·R(cls) + L_CE(head(cls.detach()))

``forward_losses`` is the part ``--compile`` compiles (the regulariser included). ``train_step``
returns device tensors only; the loop reads them every ``--log-every`` steps (``loop.py``).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

#: the per-step terms returned by forward_losses / train_step, in this order
TERMS = ("loss", "loss_mae", "loss_reg", "loss_ce", "online_acc")


def _forward(net, imgs, noise, labels, reg_fn, amp_dtype):
    """-> (loss_mae, loss_reg or None, logits or None, cls), undetached. R runs outside
    autocast."""
    with torch.autocast(imgs.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        out = net(imgs, noise, with_logits=labels is not None)
    loss_mae, cls = out[0].float(), out[1]
    loss_reg = reg_fn(cls) if reg_fn is not None else None
    return loss_mae, loss_reg, out[2].float() if labels is not None else None, cls


def forward_losses(net, imgs, noise, labels, *, reg_fn, lamb: float, amp_dtype):
    """-> (loss 0-d float32 to backpropagate, terms (5,) float32 detached (see TERMS), cls (B,
    width) detached). ``labels`` None: no online head. R runs outside autocast: it takes the
    CLS feature as the encoder's final LayerNorm leaves it (float32 under autocast)."""
    loss_mae, loss_reg, logits, cls = _forward(net, imgs, noise, labels, reg_fn, amp_dtype)
    zero = loss_mae.new_zeros(())
    loss = loss_mae + lamb * loss_reg if reg_fn is not None and lamb else loss_mae
    loss_reg = zero if loss_reg is None else loss_reg
    loss_ce = acc = zero
    if labels is not None:
        loss_ce = F.cross_entropy(logits, labels)
        loss = loss + loss_ce
        acc = (logits.argmax(1) == labels).float().mean()
    terms = torch.stack([loss, loss_mae, loss_reg, loss_ce, acc]).detach()
    return loss, terms, cls.detach()


def loss_terms(net, imgs, noise, labels, *, reg_fn, amp_dtype):
    """-> (L_MAE, R or None, L_CE or None), undetached: the terms ``forward_losses`` sums, for
    the per-term gradient norms of ``health.term_grad_norms``."""
    loss_mae, loss_reg, logits, _ = _forward(net, imgs, noise, labels, reg_fn, amp_dtype)
    return loss_mae, loss_reg, (F.cross_entropy(logits, labels) if labels is not None else None)


#: the per-step fault flags returned by train_step beside the terms, in this order
FAULTS = ("gradient", "update")
#: a gradient entry at or above this overflows AdamW's float32 second moment (g² > 3.4e38)
GRAD_LIMIT = 2.0 ** 63
#: a bound on the next weights at or above this may overflow float32 (max 3.4e38)
WEIGHT_LIMIT = 2.0 ** 127


def adam_step_bound(beta1: float, beta2: float) -> float:
    """An upper bound on AdamW's per-coordinate step ``|m̂_t| / (√v̂_t + ε)`` for every t and
    every gradient sequence: ``1 / (√(1−β2) · (1 − β1/√β2))`` (needs β1 < √β2).

    From ``v_t ≥ (1−β2) β2^k g_{t−k}²`` each ``|g_{t−k}| ≤ √v_t / √((1−β2) β2^k)``, so
    ``|m_t| ≤ (1−β1) Σ_k β1^k |g_{t−k}| ≤ (1−β1) √v_t / (√(1−β2) (1 − β1/√β2))``; the bias
    corrections multiply by ``√(1−β2^t) / (1−β1^t) ≤ 1 / (1−β1)``."""
    if not beta1 < beta2 ** 0.5:
        raise ValueError(f"AdamW betas {beta1}, {beta2}: the step bound needs beta1 < sqrt(beta2)")
    return 1.0 / ((1.0 - beta2) ** 0.5 * (1.0 - beta1 / beta2 ** 0.5))


def update_faults(opt, scaler) -> torch.Tensor:
    """-> (2,) float32 on the device (see FAULTS), no host sync: whether the gradients about to
    be applied hold an entry that is not finite or whose square overflows AdamW's second moment,
    and whether this AdamW update could make a weight non-finite, bounded by
    ``max|p| · max_group |1 − lr·wd| + lr · adam_step_bound``. Under fp16 loss scaling the
    gradients are scaled: a non-finite one is the GradScaler's to skip, not a fault."""
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return torch.zeros(len(FAULTS))
    inf = float("inf")
    gmax = torch.stack(torch._foreach_norm([p.grad for p in params], inf)).max()
    pmax = torch.stack(torch._foreach_norm([p.detach() for p in params], inf)).max()
    if scaler.is_enabled():
        gmax = gmax / scaler._get_scale_async().to(gmax.device)  # no host read of the scale
        grad_fault = torch.isfinite(gmax) & (gmax >= GRAD_LIMIT)
    else:
        grad_fault = ~(gmax < GRAD_LIMIT)  # NaN compares False: a fault
    decay = max(abs(1.0 - g["lr"] * g["weight_decay"]) for g in opt.param_groups)
    lr = max(g["lr"] for g in opt.param_groups)
    beta1, beta2 = opt.param_groups[0]["betas"]
    bound = pmax.float() * decay + lr * adam_step_bound(beta1, beta2)
    return torch.stack([grad_fault, ~(bound < WEIGHT_LIMIT)]).float()


def train_step(fwd, micro_batches, *, net, opt, scaler, accum: int, skip_nonfinite: bool,
               group=None):
    """Accumulate ``accum`` micro-batches ``(imgs, noise, labels)``, then update.

    Returns ``(terms (5,) mean over the micro-batches (see TERMS), faults (2,) float32 (see
    FAULTS and update_faults), cls of the last micro-batch)``, all on the device. A step is bad
    when a loss term is not finite or a fault is set. With ``skip_nonfinite`` a bad step's
    update is skipped on the device, agreed over ``group`` (every rank skips the same steps):
    weights and AdamW state stay bit-identical. fp32/bf16 through fused AdamW's ``found_inf``;
    fp16 by making one gradient entry NaN, so that the GradScaler skips the step and backs off
    its scale. No host sync."""
    total = cls = None
    for k, (imgs, noise, labels) in enumerate(micro_batches):
        last = k == accum - 1
        sync = net.no_sync() if hasattr(net, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            loss, terms, cls = fwd(imgs, noise, labels)
            scaler.scale(loss / accum).backward()
        total = terms if total is None else total + terms
    terms = total / accum
    faults = update_faults(opt, scaler).to(terms.device)
    if skip_nonfinite:
        flag = (~torch.isfinite(terms[:4]).all() | (faults > 0).any()).float()
        if group is not None:
            import torch.distributed as dist
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if scaler.is_enabled():
            grad = next((p.grad for g in opt.param_groups for p in g["params"]
                         if p.grad is not None), None)
            if grad is not None:  # NaN where flagged, unchanged elsewhere: the scaler skips it
                grad.view(-1)[:1].add_(torch.where(flag > 0, math.nan, 0.0).to(grad.dtype))
        else:
            opt.found_inf = flag
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return terms, faults, cls
