"""TCR over a torch.distributed process group without gathering features.

Each of the K ranks holds ``m_r`` rows. Instead of all-gathering the (M, d) features (the official
code), every rank runs the staged op (``mmae_fast.ops.tcr.op``) with an all-reduce of one buffer
``[G_r, 1ᵀZ_r, m_r]`` between its first two stages (d² + d + 1 numbers; the column sums only
when centring, so d² + 1 otherwise) and so holds the global ``S = Σ_r Z_rᵀZ_r``. Centred, each
``G_r`` is centred on the rank's own mean and the between-rank scatter
``Σ_r m_r (z̄_r - z̄)(z̄_r - z̄)ᵀ`` comes from an all-gather of the ranks' (column sums, count),
K·(d + 1) numbers: no cancellation of large terms. Every rank computes the same R as one process
would on the concatenated batch, on the same fused kernels, with no host synchronisation. The
backward needs no communication: the gradient w.r.t. the local rows is ``-2c·(Z_r - [z̄]) · A⁻¹``
through the local normalisation.

The series and Taylor degrees and the Chebyshev interval come from ``M = K·m_r`` (equal shards,
as DistributedSampler with drop_last gives); if the all-reduced row count is larger, R is NaN
rather than silently outside the series' guarantee.

Gradient semantics (DDP then averages parameter gradients over the K ranks):

- ``"exact"``: the local gradient is multiplied by K, so after DDP's averaging the parameters get
  exactly the gradient of ``lambda·R`` on the full batch.
- ``"per_rank"``: the local gradient as it is (what the official GatherLayer gives); after DDP's
  averaging the parameters get ``(1/K)`` of it, i.e. the official runs effectively used
  ``lambda/K``. To port an official lambda to "exact": ``lambda_exact = lambda_official / K``.
"""
from __future__ import annotations

import torch.distributed as dist


def group_size(group) -> int:
    """Number of ranks in ``group``; raises if torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group was given but torch.distributed is not initialised; call "
                         "torch.distributed.init_process_group first or pass group=None")
    return dist.get_world_size(group)


def tcr(h, mu: float, *, centering: bool, estimator: str, degree: int, tol: float, group,
        grad_semantics: str, backend: str):
    """``-logdet(I_d + mu/d · S)`` on the rows of every rank of ``group`` (see module doc)
    through the staged op of ``backend`` (a resolved backend name)."""
    from .ops import tcr as staged

    k = group_size(group)
    scale = float(k) if grad_semantics == "exact" else 1.0
    return staged.tcr(h, backend=backend, mu=mu, centering=centering, estimator=estimator,
                      degree=degree, tol=tol, group=group, grad_scale=scale)
