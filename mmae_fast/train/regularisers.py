"""The regulariser ``R(cls)`` of ``--reg``, on one process or over a DDP process group.

- ``tcr``: ``mmae_fast.tcr_loss(cls, mu, group=..., grad_semantics=..., backend=...)``: one
  all-reduce of the Gram under DDP, R of the global batch (``--backend official-eager``: the
  official eager loss, one process).
- ``uniformity``: U-MAE's ``mean((ZZᵀ)²)`` over the *global* batch, as the official U-MAE loss
  (which all-gathers Z). Here ranks all-reduce the d x d Gram ``S = Σ_r Z_rᵀZ_r`` instead:
  ``mean((ZZᵀ)²) = ||S||_F² / M²`` with M the global row count, the same value.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _AllReduceSum(torch.autograd.Function):
    """Forward: sum over the group's ranks; backward: the local gradient times ``grad_scale``."""

    @staticmethod
    def forward(ctx, x, group, grad_scale: float):
        import torch.distributed as dist
        y = x.clone()
        dist.all_reduce(y, group=group)
        ctx.grad_scale = grad_scale
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.grad_scale, None, None


def global_uniformity(z: torch.Tensor, group, world: int, grad_semantics: str = "exact"):
    """U-MAE uniformity ``||Σ_r Z_rᵀZ_r||_F² / M²`` of the rows of every rank (m, d) -> 0-d,
    float32; ``Z`` the L2-normalised rows, ``M = world · m`` (every rank holds m rows).

    ``grad_semantics``: "exact" (DDP-averaged parameter gradient = gradient of the global loss)
    or "per_rank" (each rank keeps only its own rows' gradient: 1/K of it, as the official
    all-gather)."""
    zn = F.normalize(z.float(), dim=1, eps=1e-12)
    gram = zn.mT @ zn
    if group is not None and world > 1:
        gram = _AllReduceSum.apply(gram, group, float(world) if grad_semantics == "exact" else 1.)
    m_total = zn.shape[0] * (world if group is not None else 1)
    return gram.square().sum() / (m_total * m_total)


def resolved_backend(args, device, width: int) -> str:
    """What computes R in this run: "none" (--reg none), "eager" (--reg uniformity),
    "official-eager", or the backend ``tcr_loss`` resolves for float32 CLS features of this width
    on ``device`` (``--backend auto`` resolved: cuda, triton or reference)."""
    if args.reg == "none":
        return "none"
    if args.reg == "uniformity":
        return "eager"
    if args.backend == "official-eager":
        return "official-eager"
    from .. import backends
    return backends.resolve_name(args.backend, torch.empty(2, width, device=device))


def build(args, group, world: int):
    """cls (B, width) -> R (0-d) for ``args.reg``, or None for ``--reg none``."""
    import mmae_fast
    if args.reg == "none":
        return None
    if args.reg == "uniformity":
        return lambda cls: global_uniformity(cls, group, world, args.grad_semantics)
    if args.backend == "official-eager":
        from ..baselines import official_tcr
        return lambda cls: official_tcr(cls, args.mu)
    return lambda cls: mmae_fast.tcr_loss(
        cls, args.mu, centering=args.centering, estimator=args.estimator, backend=args.backend,
        group=group, grad_semantics=args.grad_semantics)
