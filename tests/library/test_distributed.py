"""Two gloo processes on the CPU: the all-reduced TCR equals one process on the whole batch, and
both equal the independent float64 eigenvalue formulas (tests/independent.py) on the concatenated
batch, so a bug shared by the distributed and the one-process path cannot hide."""
import itertools

import pytest
import torch
import torch.distributed as dist

import independent as ind
import mmae_fast as mf
from mmae_fast import series
from tests.gloo import spawn

# uneven shards: the global count must come from the all-reduce; the series takes its interval
# from K·m_r (equal shards, mmae_fast.distributed; uneven ones give NaN: test_staged_distributed)
ROWS = {"exact": (7, 12), "taylor": (7, 12), "series": (9, 9), None: (7, 12)}
WIDTHS = (9, 30)  # M > d and M < d (one process then takes the sample side)
CASES = list(itertools.product(WIDTHS, (False, True), ("exact", "series", "taylor"),
                               ("exact", "per_rank")))


def _batch(d, seed=0, estimator=None):
    g = torch.Generator().manual_seed(seed + d)
    return torch.randn(sum(ROWS[estimator]), d, generator=g, dtype=torch.float64) + 0.3


def _shard(x, rank, estimator=None):
    rows = ROWS[estimator]
    start = sum(rows[:rank])
    return x[start: start + rows[rank]]


def _model(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 9).double()


def _worker(rank, world):
    results = {}
    for d, centering, estimator, semantics in CASES:
        z = _shard(_batch(d, estimator=estimator), rank, estimator).clone().requires_grad_()
        order = 3 if estimator == "taylor" else None
        loss = mf.tcr_loss(z, 0.3, centering=centering, estimator=estimator, order=order,
                           group=dist.group.WORLD, grad_semantics=semantics)
        loss.backward()
        results[(d, centering, estimator, semantics)] = (loss.detach(), z.grad)
    for semantics in ("exact", "per_rank"):  # DDP: average the parameter gradients over ranks
        model = _model()
        x = _shard(_batch(5, seed=7), rank)
        mf.tcr_loss(model(x), 3.0, group=dist.group.WORLD, grad_semantics=semantics).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
            g /= dist.get_world_size()
        results[("ddp", semantics)] = grads
    return results


@pytest.fixture(scope="module")
def rank_results():
    return spawn(_worker)


def _independent_value(x, centering, estimator):
    """The value from numpy eigenvalues on the concatenated batch x (M, d): exact and taylor
    exactly; series as exact, within its stated a-priori relative bound (default tol 1e-4)."""
    if estimator == "taylor":
        return ind.tcr_taylor(x, 0.3, 3, centering), 1e-12
    exact = ind.tcr_exact(x, 0.3, centering)
    if estimator == "exact":
        return exact, 1e-12
    kappa = series.kappa(0.3, x.shape[0], x.shape[1])
    return exact, series.relative_error_bound(kappa, series.series_degree(kappa, 1e-4))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_distributed_value_and_gradient_semantics(rank_results, case):
    d, centering, estimator, semantics = case
    x = _batch(d, estimator=estimator)
    expected, rtol = _independent_value(x, centering, estimator)
    z = x.clone().requires_grad_()
    order = 3 if estimator == "taylor" else None
    ref = mf.tcr_loss(z, 0.3, centering=centering, estimator=estimator, order=order)
    (g_full,) = torch.autograd.grad(ref, z)
    if estimator == "exact":  # the gradient from its closed form, numpy float64
        g_closed = torch.from_numpy(ind.tcr_exact_grad(x, 0.3, centering))
        assert torch.allclose(g_full, g_closed, rtol=1e-10, atol=1e-13)
    k = 2
    # every rank holds the same all-reduced Gram, so the same value, bit for bit
    assert torch.equal(rank_results[0][case][0], rank_results[1][case][0])
    for rank in range(k):
        value, grad = rank_results[rank][case]
        assert value.item() == pytest.approx(expected, rel=rtol)
        assert value.item() == pytest.approx(ref.item(), rel=1e-12)
        expected_grad = _shard(g_full, rank, estimator) * (k if semantics == "exact" else 1)
        assert torch.allclose(grad, expected_grad, rtol=1e-9, atol=1e-12), (rank, case)


def test_ddp_averaged_gradient(rank_results):
    """"exact": DDP's average = the full-batch gradient; "per_rank" (official): 1/K of it. The
    full-batch gradient of the linear layer from the closed form: dR/dW = Gᵀx, dR/db = Σ_i G_i."""
    model = _model()
    x = _batch(5, seed=7)
    g_h = torch.from_numpy(ind.tcr_exact_grad(model(x), 3.0))
    closed = [g_h.T @ x, g_h.sum(0)]
    mf.tcr_loss(model(x), 3.0).backward()
    for p, c, g_exact, g_rank in zip(model.parameters(), closed, rank_results[0][("ddp", "exact")],
                                     rank_results[0][("ddp", "per_rank")]):
        assert torch.allclose(p.grad, c, rtol=1e-10, atol=1e-13)
        assert torch.allclose(g_exact, c, rtol=1e-9, atol=1e-12)
        assert torch.allclose(g_rank, c / 2, rtol=1e-9, atol=1e-12)
    for a, b in zip(rank_results[0][("ddp", "exact")], rank_results[1][("ddp", "exact")]):
        assert torch.equal(a, b)  # every rank holds the same averaged gradient
