"""Regulariser health at log steps: the spectrum of the last CLS batch and the gradient norm of
each loss term. Everything here returns device tensors and reads nothing back; the loop folds
the values into the one transfer of its log step (``loop._Log.flush``).

Spectrum (``spectrum``), of ``Z`` = the row-normalised CLS features (m x d) of the step's last
micro-batch on this rank, ``c = mu/d``, ``A = I_d + c·ZᵀZ``, in float64:

- ``tcr_R = -logdet(A)`` (R as the loss has it: <= 0) and ``coding_rate = -tcr_R = logdet(A)``
  (>= 0; larger = more spread-out features), uncentred;
- ``cond_A = λ_max(A) / λ_min(A)`` and its a-priori bound ``kappa_bound = 1 + mu·m/d``
  (``tr ZᵀZ = m``: ``cond_A`` reaches it only when all rows are equal);
- ``top_eig_share = λ_max(ZZᵀ) / tr(ZZᵀ)`` in [1/min(m, d), 1] (1: collapsed to one direction).

Gradient norms (``term_grad_norms``): ``‖∇_θ L_MAE‖``, ``‖∇_θ (lamb·R)‖``, ``‖∇_θ L_CE‖`` over
every trainable parameter, of the step's own loss terms: the same micro-batches, masks and
weights (computed before the update), drop-path draws replayed (``fork_rng``), BatchNorm
buffers restored, accumulated over the micro-batches as the step does and averaged over the
ranks as DDP does. Exact, at the cost of one more forward and up to three backward passes per
micro-batch, at the log steps that ask for them (``--grad-norm-every``) only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the keys of ``spectrum``'s values, in order
SPECTRUM = ("tcr_R", "coding_rate", "cond_A", "kappa_bound", "top_eig_share")
#: the keys of ``term_grad_norms``'s values, in order
GRAD_NORMS = ("grad_norm_mae", "grad_norm_reg", "grad_norm_ce")


def spectrum(cls: torch.Tensor, mu: float) -> torch.Tensor:
    """(m, d) CLS features -> (5,) float64 on their device (see SPECTRUM). Non-finite features
    give NaN, not an exception (no host read)."""
    z = F.normalize(cls.detach().double(), dim=1, eps=1e-12)
    m, d = z.shape
    bad = ~torch.isfinite(z).all()
    z = torch.where(bad, torch.zeros_like(z), z)
    gram = z @ z.mT if m <= d else z.mT @ z  # the smaller side: same non-zero eigenvalues
    ev = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    c = mu / d
    coding_rate = torch.log1p(c * ev).sum()
    top = ev.max()
    # A has d eigenvalues; with m < d, d - m of them are exactly 1
    low = 1.0 + c * ev.min() if m >= d else torch.ones_like(top)
    cond = (1.0 + c * top) / low
    share = top / ev.sum().clamp_min(1e-300)
    kappa = torch.full_like(top, 1.0 + mu * m / d)
    out = torch.stack([-coding_rate, coding_rate, cond, kappa, share])
    return torch.where(bad, torch.full_like(out, math.nan), out)


def term_grad_norms(model, micro_batches, *, loss_terms, lamb: float, scaler, group=None,
                    world: int = 1) -> torch.Tensor:
    """(3,) float32 on the device (see GRAD_NORMS; NaN for a term the run does not have):
    gradient norms of the step's loss terms with the current weights, before the update.

    ``loss_terms(model, imgs, noise, labels) -> (loss_mae, loss_reg or None, loss_ce or None)``
    undetached (``step.loss_terms``), run eagerly on the unwrapped ``model``. Each term is
    divided by the number of micro-batches as in ``train_step``; under fp16 loss scaling it is
    scaled before the backward and the norm unscaled after (as the GradScaler does). Under DDP
    each term's flat gradient is averaged over ``group`` (one all-reduce per term). No host
    sync."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    accum = len(micro_batches)
    scale = (scaler._get_scale_async().to(device).float() if scaler is not None
             and scaler.is_enabled() else None)
    sums: list = [None] * len(GRAD_NORMS)
    saved = [b.detach().clone() for b in model.buffers()]  # BatchNorm running statistics
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):  # drop path replayed
        for imgs, noise, labels in micro_batches:
            loss_mae, loss_reg, loss_ce = loss_terms(model, imgs, noise, labels)
            parts = (loss_mae, None if loss_reg is None else lamb * loss_reg, loss_ce)
            for i, term in enumerate(parts):
                if term is None or not term.requires_grad:
                    continue
                term = term / accum if scale is None else term * (scale / accum)
                grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
                flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                  .float() for g, p in zip(grads, params)])
                sums[i] = flat if sums[i] is None else sums[i] + flat
    with torch.no_grad():
        for b, v in zip(model.buffers(), saved):
            b.copy_(v)
    norms = []
    for flat in sums:
        if flat is None:
            norms.append(torch.full((), math.nan, device=device))
            continue
        if group is not None and world > 1:
            import torch.distributed as dist
            dist.all_reduce(flat, group=group)
            flat = flat / world
        n = torch.linalg.vector_norm(flat)
        norms.append(n if scale is None else n / scale)
    return torch.stack(norms).float()
