"""The losses over a torch.distributed process group without gathering features, and what
``group=`` / ``distributed=`` mean (``module_group``, ``no_group``).

Through a Gram all-reduce (d×d, never the (M, d) features):

- ``tcr`` (below) and ``uniformity`` (``||Σ_r Z_rᵀZ_r||_F² / M²``, M the all-reduced row count,
  shards of any sizes) on the staged op of any backend;
- ``renyi_entropy`` (``matrix_entropy``, ``effective_rank``): the spectrum of the all-reduced
  ``S = Σ_r Z_rᵀZ_r`` (``K̂ = ZZᵀ/tr`` has S's non-zero eigenvalues), in eager PyTorch;
- ``mec`` and ``matrix_cross_entropy``: the all-reduced cross Gram ``Σ_r Z1_rᵀZ2_r`` with the
  column sums and the row count (MEC's traces of ``(Z1Z2ᵀ)^k`` are those of ``(Z2ᵀZ1)^k``; MCE's
  ``Z1ᵀJZ2 = Σ_r Z1_rᵀZ2_r − s1 s2ᵀ/M``), in eager PyTorch.

Not distributable that way, so ``group=`` raises (``no_group``): the joint entropy and the
mutual information (the Hadamard product ``K1 ∘ K2`` of two m×m sample kernels has no d×d form).

TCR (``tcr``): each of the K ranks holds ``m_r`` rows. Instead of all-gathering the (M, d)
features (the official code), every rank runs the staged op (``mmae_fast.ops.tcr.op``) with an
all-reduce of one buffer ``[G_r, 1ᵀZ_r, m_r]`` between its first two stages (d² + d + 1
numbers; the column sums only when centring, so d² + 1 otherwise) and so holds the global ``S = Σ_r Z_rᵀZ_r``. Centred, each
``G_r`` is centred on the rank's own mean and the between-rank scatter
``Σ_r m_r (z̄_r - z̄)(z̄_r - z̄)ᵀ`` comes from an all-gather of the ranks' (column sums, count),
K·(d + 1) numbers: no cancellation of large terms. Every rank computes the same R as one process
would on the concatenated batch, on the same fused kernels, with no host synchronisation. The
backward needs no communication: the gradient w.r.t. the local rows is ``-2c·(Z_r - [z̄]) · A⁻¹``
through the local normalisation.

The series and Taylor degrees and the Chebyshev interval come from ``M = K·m_r`` (equal shards,
as DistributedSampler with drop_last gives); if the all-reduced row count is larger, R is NaN
rather than silently outside the series' guarantee.

Gradient semantics, of every loss here (DDP then averages parameter gradients over the K ranks):

- ``"exact"``: the local gradient is multiplied by K, so after DDP's averaging the parameters get
  exactly the gradient of ``lambda·R`` on the full batch.
- ``"per_rank"``: the local gradient as it is (what the official GatherLayer gives); after DDP's
  averaging the parameters get ``(1/K)`` of it, i.e. the official runs effectively used
  ``lambda/K``. To port an official lambda to "exact": ``lambda_exact = lambda_official / K``.
"""
from __future__ import annotations

import torch
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


def _grad_scale(group, grad_semantics: str) -> float:
    return float(group_size(group)) if grad_semantics == "exact" else 1.0


def uniformity(h, *, group, grad_semantics: str, backend: str):
    """U-MAE's uniformity ``||S||_F² / M²`` on the rows of every rank of ``group`` through the
    staged op of ``backend`` (one all-reduce of ``[S_r, m_r]``)."""
    from .ops import tcr as staged

    return staged.uniformity(h, backend=backend, group=group,
                             grad_scale=_grad_scale(group, grad_semantics))


class _AllReduceSum(torch.autograd.Function):
    """Forward: the sum over the group's ranks; backward: the local gradient times ``scale``
    (every rank computes the same function of the sum, so its gradient w.r.t. the sum is the
    full-batch one)."""

    @staticmethod
    def forward(ctx, x, group, scale: float):
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None, None


def renyi_entropy(h, alpha: float, *, group, grad_semantics: str):
    """Matrix Rényi-alpha entropy of the rows of every rank of ``group``:
    ``reference.renyi_entropy_psd(Σ_r Z_rᵀZ_r, alpha)`` (d×d all-reduced, differentiable)."""
    from . import reference

    with torch.autocast(h.device.type, enabled=False):
        z = reference.normalized_features(h)
        s = _AllReduceSum.apply(z.mT @ z, group, _grad_scale(group, grad_semantics))
        return reference.renyi_entropy_psd(s, alpha)


def _pair_sums(h1, h2, group, grad_semantics: str, centering: bool):
    """The normalised views' cross Gram over every rank of ``group``: ``(C, M)`` with
    ``C = Σ_r Z1_rᵀ Z2_r`` (d, d), centred as ``C − s1 s2ᵀ / M`` (s the all-reduced column
    sums) when ``centering``, and M the all-reduced row count (a 0-d tensor)."""
    from . import reference

    dt = reference.pair_dtype(h1, h2)
    z1, z2 = reference.normalized_features(h1.to(dt)), reference.normalized_features(h2.to(dt))
    scale = _grad_scale(group, grad_semantics)
    d = z1.shape[1]
    rows = torch.zeros(1, d, dtype=dt, device=z1.device)
    rows[0, 0] = z1.shape[0]
    local = torch.cat([z1.mT @ z2, z1.sum(0)[None], z2.sum(0)[None], rows])  # one all-reduce
    total = _AllReduceSum.apply(local, group, scale)
    c, s1, s2, count = total[:d], total[d], total[d + 1], total[d + 2, 0].detach()
    if centering:
        c = c - torch.outer(s1, s2) / count
    return c, count


def mec(h1, h2, *, eps_sq: float, order: int, group, grad_semantics: str):
    """MEC on the rows of every rank of ``group``: ``reference.mec_from_cross`` of the
    all-reduced ``Σ_r Z1_rᵀ Z2_r`` (its power traces equal those of ``Z1 Z2ᵀ``), M rows."""
    from . import reference

    with torch.autocast(h1.device.type, enabled=False):
        c, count = _pair_sums(h1, h2, group, grad_semantics, centering=False)
        return reference.mec_from_cross(c.mT, count, c.shape[0], eps_sq=eps_sq, order=order)


def matrix_cross_entropy(h1, h2, *, mu: float, order: int, group, grad_semantics: str):
    """Matrix-SSL's MCE on the rows of every rank of ``group``: ``reference.mce_from_cross`` of
    ``Z1ᵀ J Z2 = Σ_r Z1_rᵀZ2_r − s1 s2ᵀ / M`` (J the centring over all M rows)."""
    from . import reference

    with torch.autocast(h1.device.type, enabled=False):
        c, count = _pair_sums(h1, h2, group, grad_semantics, centering=True)
        return reference.mce_from_cross(c, count, mu=mu, order=order)


def no_group(group, fn: str) -> None:
    """Raise if ``group`` is given to ``fn``, a loss with no Gram all-reduce form."""
    if group is not None:
        raise ValueError(
            f"group: {fn} has no d×d Gram all-reduce form (the Hadamard product of two m×m "
            f"sample kernels needs every rank's rows); pass group=None to compute it on each "
            f"rank's own batch, or all-gather the features first")


def module_group(distributed: bool, group):
    """The group a loss module passes to its function: ``distributed=False`` -> None (one
    process); ``distributed=True`` -> ``group``, or the default group when ``group`` is None and
    torch.distributed is initialised, else None (one process: single-GPU runs unchanged).
    ``group`` with ``distributed=False`` is refused where the module is built
    (``check_module_group``)."""
    if not distributed:
        return None
    if group is not None:
        return group
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


def check_module_group(distributed, group) -> None:
    """``distributed`` must be a bool; ``group`` needs ``distributed=True``."""
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True or False, got {distributed!r}")
    if group is not None and not distributed:
        raise ValueError("group was given with distributed=False; pass distributed=True to "
                         "reduce over that group, or drop group for one process")
