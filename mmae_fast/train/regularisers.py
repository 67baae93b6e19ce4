"""The regulariser ``R(cls)`` of ``--reg``, on one process or over a DDP process group.

- ``tcr``: ``mmae_fast.tcr_loss(cls, mu, group=..., grad_semantics=..., backend=...)``: one
  all-reduce of the Gram under DDP, R of the global batch (``--backend official-eager``: the
  official eager loss, one process).
- ``uniformity``: U-MAE's ``mean((ZZᵀ)²)`` over the *global* batch, as the official U-MAE loss
  (which all-gathers Z): ``mmae_fast.uniformity_loss(cls, group=..., grad_semantics=...,
  backend=...)``, whose ranks all-reduce the d x d Gram ``S = Σ_r Z_rᵀZ_r`` instead:
  ``mean((ZZᵀ)²) = ||S||_F² / M²`` with M the global row count, the same value.
"""
from __future__ import annotations

import torch


def resolved_backend(args, device, width: int) -> str:
    """What computes R in this run: "none" (--reg none), "official-eager", or the
    backend ``tcr_loss`` / ``uniformity_loss`` resolves for float32 CLS features of this width
    on ``device`` (``--backend auto`` resolved: cuda, triton or reference)."""
    if args.reg == "none":
        return "none"
    if args.backend == "official-eager":  # --reg tcr only (cli)
        return "official-eager"
    from .. import backends
    return backends.resolve_name(args.backend, torch.empty(2, width, device=device))


def build(args, group, world: int):
    """cls (B, width) -> R (0-d) for ``args.reg``, or None for ``--reg none``."""
    import mmae_fast
    if args.reg == "none":
        return None
    if args.reg == "uniformity":
        return lambda cls: mmae_fast.uniformity_loss(
            cls, group=group, grad_semantics=args.grad_semantics, backend=args.backend)
    if args.backend == "official-eager":
        from ..baselines import official_tcr
        return lambda cls: official_tcr(cls, args.mu)
    return lambda cls: mmae_fast.tcr_loss(
        cls, args.mu, centering=args.centering, estimator=args.estimator, backend=args.backend,
        group=group, grad_semantics=args.grad_semantics)
