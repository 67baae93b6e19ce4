"""The staged TCR op: one autograd boundary over three stages, the same for every backend and for
the distributed path (docs/staged.md).

    stage 1  gram   (backend)  h (m, d) -> G (n, n), rinv (m,); centring: stages.centred_gram,
                               which also gives colsum (d,) (else colsum is (0,))
             [group: all-reduce of [G, colsum, count] — d×d + d + 1 numbers, no host sync]
    stage 2  small side (shared, float64; mmae_fast.ops.tcr.small_side) -> R, Q, v, qinfo
    stage 3  grad   (backend)  (grad·qinfo, h, rinv, Q, v) -> dh (m, d)      [backward only]

U-MAE's uniformity (``uniformity``) is the same op with stage 2 ``small_side.uniformity_side``.
Stage 2 is the custom op ``torch.ops.mmae_fast.small_side`` so that ``torch.compile`` sees one
opaque call whose Python (degree, coefficients, warnings) runs at run time, not while tracing
(in plain eager mode, with no dispatch mode active, the op's body is called directly:
``_small_side``).
Stages 1 and 3 are the backend's ops (``torch.ops.mmae_fast.<backend>_gram`` / ``_grad``; the
"reference" backend runs ``mmae_fast.ops.tcr.stages``). Four op calls from Python per step
without a group (``tests/ops/test_staged_backends.py::test_four_op_calls_from_python``; besides
the empty colsum of an uncentred run, a zero-size ``new_empty``): gram and small side in the
forward, the product ``grad·qinfo`` and grad in the backward; with a group
also the row count, the buffer for the all-reduce and the all-reduce (and with centring the
all-gather of the ranks' means).
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import Tensor

from ... import reference, series
from .registry import MODULES
from . import small_side as _small
from . import cpu_native, stages


@functools.lru_cache(maxsize=256)
def _default_degree(estimator: str, kappa: float, tol: float) -> int:
    """``reference.default_degree``, cached (it scans degrees: ~0.1 ms per call at kappa 65)."""
    return reference.default_degree(estimator, kappa, tol)


def small_side_call(g: Tensor, colsum: Tensor, count: Tensor | None, mu: float, m: int, d: int,
                    feature: bool, centering: bool, estimator: str, degree: int, tol: float,
                    need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(R, Q, v, qinfo)``: ``mmae_fast.ops.tcr.small_side.small_side`` from the op's
    arguments; ``degree`` 0 means the estimator's default (series: from ``tol`` and kappa =
    1 + mu·m/d); ``count`` None: the row count is exactly ``m`` (no group). The body of the
    custom op ``small_side_op``."""
    if estimator == _small.UNIFORMITY:
        constants = _small.uniformity_constants(m=m, feature=feature, need_grad=need_grad,
                                                grouped=count is not None)
        inputs = (g, colsum) if count is None else (g, colsum, count)
        return _small.CACHE.run(_run_small_side, inputs, constants)
    _small.warn_if_taylor_diverges(estimator, mu, m, d)
    degree = degree or _default_degree(estimator, series.kappa(mu, m, d), tol)
    constants = _small.Constants.of(mu=mu, m=m, d=d, feature=feature, centering=centering,
                                    estimator=estimator, degree=degree, need_grad=need_grad,
                                    grouped=count is not None, inverse=_small.inverse_choice(),
                                    products=_small.products_choice(g.device.type, estimator))
    inputs = (g, colsum) if count is None else (g, colsum, count)
    return _small.CACHE.run(_run_small_side, inputs, constants)


#: ``torch.ops.mmae_fast.small_side``: ``small_side_call`` as one opaque op for torch.compile,
#: fake tensors and dispatch modes (``_small_side``)
small_side_op = torch.library.custom_op("mmae_fast::small_side", small_side_call,
                                        mutates_args=())


def _small_side(*args):
    """Stage 2: the custom op while torch.compile traces or a dispatch mode (fake tensors, export,
    an op recorder) is active; in plain eager mode its body directly (the same function, without
    the dispatcher's per-call cost)."""
    if not cpu_native.plain_eager():
        return torch.ops.mmae_fast.small_side(*args)
    return small_side_call(*args)


def _run_small_side(g, colsum, *rest):
    """``small_side(g, colsum, count or None, constants)`` from ``GraphCache.run``'s call."""
    *count, constants = rest
    return _small.small_side(g, colsum, count[0] if count else None, constants)


@small_side_op.register_fake
def _small_side_fake(g, colsum, count, mu, m, d, feature, centering, estimator, degree, tol,
                     need_grad):
    n = g.shape[0]
    q = g.new_empty((n, n) if need_grad else (0, 0))
    v = g.new_empty((d,) if (need_grad and centering and feature) else (0,))
    return g.new_empty(()), q, v, g.new_empty((2,))


def _module(backend: str):
    return MODULES[backend]


def _gram(h, backend, feature, centering, group):
    """Stage 1 (and, with a group, the all-reduce): ``(G, rinv, colsum, count, m_bound)`` with G
    of the centred rows when ``centering`` (``stages.centred_gram``, every backend);
    ``count`` is None without a group (exactly m rows), else the summed row count (0-d)."""
    m, d = h.shape
    if centering:
        g, rinv, colsum = stages.centred_gram(h, feature)
    else:
        g, rinv = _module(backend).gram(h, feature)
        colsum = g.new_empty((0,))
    if group is None:
        return g, rinv, colsum, None, m
    count = torch.full((), m, dtype=g.dtype, device=g.device)
    # one buffer [G_r, s_r, m_r] summed over the ranks; with centring G_r is centred on the
    # rank's own mean and the between-rank scatter Σ_r m_r (z̄_r - z̄)(z̄_r - z̄)ᵀ is added from
    # the gathered (s_r, m_r) (d + 1 numbers per rank; no cancellation)
    local = torch.cat([colsum, count.reshape(1)])
    buf = torch.cat([g.reshape(-1), local])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    g = buf[: d * d].view(d, d)
    colsum, count = buf[d * d: -1], buf[-1]
    if centering:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local, group=group)  # (gloo has no all_gather_into_tensor)
        gathered = torch.stack(parts).double()
        sums, counts = gathered[:, :d], gathered[:, d:]
        dev = sums / counts - colsum.double() / count.double()
        g = g + ((dev * counts).mT @ dev).to(g.dtype)
    return g, rinv, colsum, count, m * dist.get_world_size(group)  # equal shards assumed


class _StagedTCR(torch.autograd.Function):
    """R of the rows of h (and, with a group, of every rank's rows); backward through stage 3.
    Autocast is off inside (the Gram and the small side keep their precision in an AMP step)."""

    @staticmethod
    def forward(ctx, h, backend, mu, estimator, degree, tol, centering, need_grad, group,
                grad_scale):
        d = h.shape[1]
        feature = group is not None or d <= h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            g, rinv, colsum, count, m_bound = _gram(h, backend, feature, centering, group)
            value, q, v, qinfo = _small_side(g, colsum, count, mu, m_bound, d, feature,
                                             centering, estimator, degree, tol, need_grad)
        ctx.save_for_backward(h, rinv, q, v, qinfo)
        ctx.backend, ctx.feature, ctx.grad_scale = backend, feature, grad_scale
        return value

    @staticmethod
    def backward(ctx, grad_value):
        h, rinv, q, v, qinfo = ctx.saved_tensors
        if q.numel() == 0:
            raise RuntimeError("the staged TCR forward ran without need_grad; call it with "
                               "requires_grad inputs under grad mode to differentiate")
        if torch.is_grad_enabled():  # backward(create_graph=True): a gradient penalty
            raise RuntimeError("the fused TCR kernels have no double backward (create_graph="
                               "True); use backend='reference' without group= or torch.compile")
        with torch.autocast(h.device.type, enabled=False):
            # coef = [grad·qscale, grad·alpha] = [s, t]: the scale of Q, and its radial shift,
            # which rows with ||h_i|| <= EPS (not projected) must lose (stages.py)
            dh = _module(ctx.backend).grad(grad_value * qinfo, h, rinv, q, v, ctx.feature,
                                           ctx.grad_scale)
        return dh, None, None, None, None, None, None, None, None, None


def tcr(h: Tensor, *, backend: str, mu: float, centering: bool, estimator: str, degree: int = 0,
        tol: float = reference.SERIES_TOL, group=None, grad_scale: float = 1.0) -> Tensor:
    """``-logdet(I + mu/d·ZᵀZ)`` of the normalised (optionally centred) rows of h (m, d) through
    the staged ops of ``backend``; with ``group``, of the rows of every rank (each rank's
    gradient is that of its own rows, times ``grad_scale``). 0-d, float64 for float64 h, else
    float32; ``degree``: series degree / Taylor order (0: the default, series from ``tol``;
    ignored by "exact")."""
    need_grad = torch.is_grad_enabled() and h.requires_grad
    return _StagedTCR.apply(h, backend, float(mu), estimator, int(degree), float(tol),
                            bool(centering), need_grad, group, float(grad_scale))


def uniformity(h: Tensor, *, backend: str, group=None, grad_scale: float = 1.0) -> Tensor:
    """U-MAE's uniformity ``||ZᵀZ||_F² / M²`` of the normalised rows of h (m, d) through the same
    stages (stage 2: ``small_side.uniformity_side``; one Gram of the smaller side); with
    ``group``, of the rows of every rank (M the all-reduced count, shards of any sizes; each
    rank's gradient is that of its own rows, times ``grad_scale``). 0-d, float64 for float64 h, else float32."""
    need_grad = torch.is_grad_enabled() and h.requires_grad
    return _StagedTCR.apply(h, backend, 0.0, _small.UNIFORMITY, 0, reference.SERIES_TOL, False,
                            need_grad, group, float(grad_scale))
