"""Two gloo ranks through the staged op (``tcr_loss(..., group=...)``): the value equals one
process on the concatenated batch computed by numpy's eigenvalues (tests/independent.py), and
the local gradients follow the chosen semantics; with unequal shards the series (whose interval
comes from kappa = 1 + mu·K·m_r/d) refuses with NaN instead of a silently wrong value."""
import numpy as np
import pytest
import torch
import torch.distributed as dist

import mmae_fast as mf
from mmae_fast import reference
from tests import independent as ind
from tests.gloo import spawn
from tests.op_names import OpNames

D = 11
MU = 0.7
CASES = [(c, e, s) for c in (False, True) for e in ("exact", "series", "taylor")
         for s in ("exact", "per_rank")]


F32_CASES = [(c, e) for c in (False, True) for e in ("exact", "series")]


def _batch(rows):
    g = torch.Generator().manual_seed(5)
    return torch.randn(rows, D, generator=g, dtype=torch.float64) * 0.8 + 0.4


def _worker(rank, world, rows):
    x = _batch(sum(rows))
    start = sum(rows[:rank])
    results = {}
    for centering, estimator, semantics in CASES:
        z = x[start: start + rows[rank]].clone().requires_grad_()
        loss = mf.tcr_loss(z, MU, centering=centering, estimator=estimator,
                           order=3 if estimator == "taylor" else None,
                           group=dist.group.WORLD, grad_semantics=semantics)
        loss.backward()
        results[(centering, estimator, semantics)] = (loss.detach(), z.grad)
    # float32 on the kernel backend where one runs here (Triton's interpreter on the CPU),
    # recording the ops that ran: the staged path, not a fallback
    backend = "triton" if "triton" in mf.available_backends() else "reference"
    for centering, estimator in F32_CASES:
        z = x[start: start + rows[rank]].float().requires_grad_()
        with OpNames() as ops:
            loss = mf.tcr_loss(z, MU, centering=centering, estimator=estimator,
                               group=dist.group.WORLD, grad_semantics="exact", backend=backend)
            loss.backward()
        results[("f32", centering, estimator)] = (loss.detach(), z.grad, backend, ops.names)
    return results


@pytest.fixture(scope="module")
def equal():
    return spawn(_worker, (8, 8))


@pytest.mark.parametrize("centering,estimator,semantics", CASES)
def test_equal_shards(equal, centering, estimator, semantics):
    x = _batch(16)
    if estimator == "taylor":  # the order-3 series itself, from the same eigenvalues
        expected, tol = ind.tcr_taylor(x, MU, 3, centering), 1e-12
    else:  # the series within its tolerance of the exact value
        expected, tol = ind.tcr_exact(x, MU, centering), {"exact": 1e-12, "series": 1e-4}[estimator]
    full = x.clone().requires_grad_()
    ref = reference.tcr(full, MU, centering=centering, estimator=estimator,
                        degree=3 if estimator == "taylor" else None)
    ref.backward()
    for rank in range(2):
        value, grad = equal[rank][(centering, estimator, semantics)]
        assert abs(value.item() - expected) <= tol * abs(expected)
        assert value.item() == pytest.approx(ref.item(), rel=1e-12)
        factor = 2.0 if semantics == "exact" else 1.0  # exact: K x the local slice
        want = factor * full.grad[8 * rank: 8 * rank + 8]
        assert torch.allclose(grad, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("centering,estimator", F32_CASES)
def test_equal_shards_float32_on_the_fused_path(equal, centering, estimator):
    """float32 shards on the kernel backend (Triton's interpreter here): the staged ops ran
    (gram uncentred, small side, grad) and value and gradients match float64 on the full batch."""
    x = _batch(16)
    full = x.clone().requires_grad_()
    reference.tcr(full, MU, centering=centering, estimator=estimator).backward()
    expected = ind.tcr_exact(x.float().double(), MU, centering)
    for rank in range(2):
        value, grad, backend, names = equal[rank][("f32", centering, estimator)]
        assert backend == ("triton" if "triton" in mf.available_backends() else "reference")
        assert "mmae_fast.small_side.default" in names
        if backend != "reference":
            assert (f"mmae_fast.{backend}_gram.default" in names) == (not centering)
            assert f"mmae_fast.{backend}_grad.default" in names
        assert abs(value.item() - expected) <= (1e-5 if estimator == "exact" else 1e-4) * abs(expected)
        want = 2.0 * full.grad[8 * rank: 8 * rank + 8]  # "exact" semantics: K x the local slice
        assert float((grad.double() - want).norm() / want.norm()) <= 1e-4


def test_unequal_shards():
    """Exact and Taylor need no row-count assumption; the series does (NaN on the rank whose
    kappa bound K·m_r is below the true M)."""
    results = spawn(_worker, (5, 9))
    x = _batch(14)
    for centering in (False, True):
        expected = ind.tcr_exact(x, MU, centering)
        for rank in range(2):
            value, _ = results[rank][(centering, "exact", "exact")]
            assert abs(value.item() - expected) <= 1e-12 * abs(expected)
        assert np.isnan(results[0][(centering, "series", "exact")][0].item())
        # ... and its gradient too: never a finite, silently wrong one
        assert torch.isnan(results[0][(centering, "series", "exact")][1]).all()
        value = results[1][(centering, "series", "exact")][0].item()
        assert abs(value - expected) <= 1e-4 * abs(expected)
