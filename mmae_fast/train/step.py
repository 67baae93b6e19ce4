"""One optimizer step: forward, losses, backward, update. No host synchronisation.

    loss = L_MAE + lamb·R(cls) + L_CE(head(cls.detach()))

``forward_losses`` is the part ``--compile`` compiles (the regulariser included). ``train_step``
returns device tensors only; the loop reads them every ``--log-every`` steps (``loop.py``).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

#: the per-step terms returned by forward_losses / train_step, in this order
TERMS = ("loss", "loss_mae", "loss_reg", "loss_ce", "online_acc")


def forward_losses(net, imgs, noise, labels, *, reg_fn, lamb: float, amp_dtype):
    """-> (loss 0-d float32 to backpropagate, terms (5,) float32 detached (see TERMS), cls (B,
    width) detached). ``labels`` None: no online head. R runs outside autocast: it takes the
    CLS feature as the encoder's final LayerNorm leaves it (float32 under autocast)."""
    with torch.autocast(imgs.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        out = net(imgs, noise, with_logits=labels is not None)
    loss_mae, cls = out[0].float(), out[1]
    zero = loss_mae.new_zeros(())
    loss_reg = reg_fn(cls) if reg_fn is not None else zero
    loss = loss_mae + lamb * loss_reg if reg_fn is not None and lamb else loss_mae
    loss_ce = acc = zero
    if labels is not None:
        logits = out[2].float()
        loss_ce = F.cross_entropy(logits, labels)
        loss = loss + loss_ce
        acc = (logits.argmax(1) == labels).float().mean()
    terms = torch.stack([loss, loss_mae, loss_reg, loss_ce, acc]).detach()
    return loss, terms, cls.detach()


def train_step(fwd, micro_batches, *, net, opt, scaler, accum: int, skip_nonfinite: bool,
               group=None):
    """Accumulate ``accum`` micro-batches ``(imgs, noise, labels)``, then update.

    Returns ``(terms (5,) mean over the micro-batches, bad (0-d bool: a loss term not finite;
    with ``skip_nonfinite`` also a non-finite gradient, i.e. the update was skipped), cls of the
    last micro-batch)``, all on the device. With ``skip_nonfinite`` the update is skipped on the
    device (fused AdamW's ``found_inf``, agreed over ``group``), no host sync."""
    total = cls = None
    for k, (imgs, noise, labels) in enumerate(micro_batches):
        last = k == accum - 1
        sync = net.no_sync() if hasattr(net, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            loss, terms, cls = fwd(imgs, noise, labels)
            scaler.scale(loss / accum).backward()
        total = terms if total is None else total + terms
    terms = total / accum
    bad = ~torch.isfinite(terms[:4]).all()
    if skip_nonfinite and not scaler.is_enabled():  # fp16: the GradScaler skips inf/NaN grads
        flag = bad.float()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads:  # a finite loss can still give inf gradients: skip those steps too
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, flag.new_ones(()))
        if group is not None:
            import torch.distributed as dist
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        opt.found_inf = flag
        bad = flag > 0
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return terms, bad, cls
