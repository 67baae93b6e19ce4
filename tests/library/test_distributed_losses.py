"""Two gloo ranks: ``group=`` of uniformity_loss, matrix_entropy and effective_rank, and the
``mmae_fast.nn`` modules with ``distributed=True``. The value equals the independent float64
formula on the concatenated batch (tests/independent.py), each rank's gradient is its slice of
the independent full-batch gradient times K ("exact") or 1 ("per_rank")."""
import numpy as np
import pytest
import torch
import torch.distributed as dist

import independent as ind
import mmae_fast as mf
from mmae_fast import nn as mnn
from tests.gloo import spawn
from tests.op_names import OpNames
from tests.tolerances import STAGED_BACKEND

D = 6
ROWS = (7, 12)  # uneven shards: M comes from the all-reduced count
SEMANTICS = ("exact", "per_rank")
ALPHAS = (1.0, 2.0, 0.5)
#: (name, function of (z, group, semantics), independent value, independent gradient)
LOSSES = [("uniformity", lambda z, g, s: mf.uniformity_loss(z, group=g, grad_semantics=s),
           ind.uniformity, ind.uniformity_grad),
          ("effective_rank", lambda z, g, s: mf.effective_rank(z, group=g, grad_semantics=s),
           ind.effective_rank,
           lambda x: ind.matrix_entropy_grad(x) * ind.effective_rank(x))]
LOSSES += [(f"entropy-{a}",
            (lambda a: lambda z, g, s: mf.matrix_entropy(z, a, group=g, grad_semantics=s))(a),
            (lambda a: lambda x: ind.matrix_entropy(x, a))(a),
            (lambda a: lambda x: ind.matrix_entropy_grad(x, a))(a)) for a in ALPHAS]
CASES = [(name, s) for name, *_ in LOSSES for s in SEMANTICS]
MODULES = {"uniformity": lambda: mnn.UniformityLoss(distributed=True),
           "tcr": lambda: mnn.TCRLoss(0.7, distributed=True),
           "entropy-2.0": lambda: mnn.MatrixEntropy(2.0, distributed=True),
           "effective_rank": lambda: mnn.EffectiveRank(distributed=True, grad_semantics="per_rank")}


#: two-view losses over ranks: name -> function of (z1, z2, group, semantics); the settings keep
#: the Taylor series convergent (lam·‖Z1Z2ᵀ‖ < 1 for MEC) so every term matters
PAIRS = {"mec": lambda a, b, g, s: mf.mec_loss(a, b, eps_sq=4.0, order=3, group=g,
                                               grad_semantics=s),
         "mce": lambda a, b, g, s: mf.matrix_cross_entropy(a, b, mu=0.8, order=3, group=g,
                                                           grad_semantics=s)}
PAIR_ONE_PROCESS = {"mec": lambda a, b: mf.mec_loss(a, b, eps_sq=4.0, order=3),
                    "mce": lambda a, b: mf.matrix_cross_entropy(a, b, mu=0.8, order=3)}
PAIR_INDEPENDENT = {"mec": lambda a, b: ind.mec(a, b, eps_sq=4.0, order=3),
                    "mce": lambda a, b: ind.matrix_cross_entropy(a, b, mu=0.8, order=3)}
PAIR_MODULES = {"mec": lambda: mnn.MECLoss(eps_sq=4.0, order=3, distributed=True),
                "mce": lambda: mnn.MatrixCrossEntropy(mu=0.8, order=3, distributed=True,
                                                      grad_semantics="per_rank")}


def _second_view(x):
    g = torch.Generator().manual_seed(4)
    return x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype)


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(sum(ROWS), D, generator=g, dtype=torch.float64) * 0.8 + 0.4


def _shard(x, rank):
    start = sum(ROWS[:rank])
    return x[start: start + ROWS[rank]]


def _worker(rank, world):
    x = _batch()
    out = {}
    for name, fn, *_ in LOSSES:
        for semantics in SEMANTICS:
            z = _shard(x, rank).clone().requires_grad_()
            loss = fn(z, dist.group.WORLD, semantics)
            loss.backward()
            out[(name, semantics)] = (loss.detach(), z.grad)
    # the modules with distributed=True take the default group (no group= given)
    for name, make in MODULES.items():
        z = _shard(x, rank).clone().requires_grad_()
        loss = make()(z)
        loss.backward()
        out[("module", name)] = (loss.detach(), z.grad)
    # float32 on the kernel backend where one runs (Triton's interpreter on the CPU)
    backend = "triton" if "triton" in mf.available_backends() else "reference"
    z = _shard(x, rank).float().requires_grad_()
    with OpNames() as ops:
        loss = mf.uniformity_loss(z, group=dist.group.WORLD, backend=backend)
        loss.backward()
    out["f32"] = (loss.detach(), z.grad, backend, ops.names)
    # the two-view losses with a d×d cross-Gram form, and their modules
    y = _second_view(x)
    for name, fn in PAIRS.items():
        for semantics in SEMANTICS:
            z1 = _shard(x, rank).clone().requires_grad_()
            z2 = _shard(y, rank).clone().requires_grad_()
            loss = fn(z1, z2, dist.group.WORLD, semantics)
            loss.backward()
            out[(name, semantics)] = (loss.detach(), z1.grad, z2.grad)
    for name, make in PAIR_MODULES.items():
        z1 = _shard(x, rank).clone().requires_grad_()
        z2 = _shard(y, rank).clone().requires_grad_()
        loss = make()(z1, z2)
        loss.backward()
        out[("module", name)] = (loss.detach(), z1.grad, z2.grad)
    return out


@pytest.fixture(scope="module")
def ranks():
    return spawn(_worker)


def _expected(name):
    _, _, value, grad = next(loss for loss in LOSSES if loss[0] == name)
    x = _batch()
    return value(x), torch.from_numpy(grad(x))


@pytest.mark.parametrize("name,semantics", CASES)
def test_group_equals_the_concatenated_batch(ranks, name, semantics):
    value, grad = _expected(name)
    k = 2 if semantics == "exact" else 1
    assert torch.equal(ranks[0][(name, semantics)][0], ranks[1][(name, semantics)][0])
    for rank in range(2):
        got, got_grad = ranks[rank][(name, semantics)]
        assert got.item() == pytest.approx(value, rel=1e-12)
        assert torch.allclose(got_grad, k * _shard(grad, rank), rtol=1e-9, atol=1e-13), rank


def test_modules_with_distributed_true_use_the_default_group(ranks):
    x = _batch()
    whole = {"uniformity": (mf.uniformity_loss, 2), "tcr": (lambda z: mf.tcr_loss(z, 0.7), 2),
             "entropy-2.0": (lambda z: mf.matrix_entropy(z, 2.0), 2),
             "effective_rank": (mf.effective_rank, 1)}
    for name, (fn, k) in whole.items():
        full = x.clone().requires_grad_()
        ref = fn(full)
        ref.backward()
        for rank in range(2):
            got, got_grad = ranks[rank][("module", name)]
            assert got.item() == pytest.approx(ref.item(), rel=1e-12), name
            assert torch.allclose(got_grad, k * _shard(full.grad, rank), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(ranks[0][("module", "tcr")][0].item(), ind.tcr_exact(x, 0.7),
                               rtol=1e-12)


def test_uniformity_over_ranks_on_the_kernel_backend(ranks):
    value, grad = _expected("uniformity")
    for rank in range(2):
        got, got_grad, backend, names = ranks[rank]["f32"]
        if backend != "reference":
            assert f"mmae_fast.{backend}_gram.default" in names
            assert f"mmae_fast.{backend}_grad.default" in names
        vtol, gtol = STAGED_BACKEND[torch.float32]
        assert abs(got.item() - value) <= vtol * value
        want = 2 * _shard(grad, rank)
        assert float((got_grad.double() - want).norm() / want.norm()) <= gtol


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_two_view_losses_over_ranks_equal_the_concatenated_batch(ranks, name, semantics):
    """MEC and MCE over 2 ranks (uneven shards) = the independent formula on the concatenated
    views; each rank's gradient = its slice of the one-process float64 gradient times K
    ("exact") or 1 ("per_rank")."""
    x = _batch()
    y = _second_view(x)
    assert PAIR_INDEPENDENT[name](x, y) != pytest.approx(
        PAIR_INDEPENDENT[name](x[:ROWS[0]], y[:ROWS[0]]), rel=1e-6)  # a shard alone differs
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    whole = PAIR_ONE_PROCESS[name](a, b)
    whole.backward()
    k = 2 if semantics == "exact" else 1
    for rank in range(2):
        got, g1, g2 = ranks[rank][(name, semantics)]
        assert got.item() == pytest.approx(PAIR_INDEPENDENT[name](x, y), rel=1e-12)
        assert torch.allclose(g1, k * _shard(a.grad, rank), rtol=1e-9, atol=1e-13), rank
        assert torch.allclose(g2, k * _shard(b.grad, rank), rtol=1e-9, atol=1e-13), rank
    module_k = 2 if name == "mec" else 1  # the modules: MEC "exact", MCE "per_rank"
    for rank in range(2):
        got, g1, g2 = ranks[rank][("module", name)]
        assert got.item() == pytest.approx(whole.item(), rel=1e-12)
        assert torch.allclose(g1, module_k * _shard(a.grad, rank), rtol=1e-9, atol=1e-13)
