"""The trainer over ranks (2 gloo ranks): `--reg uniformity` (``mmae_fast.uniformity_loss`` with
the world group) gathered as the official U-MAE loss; `--skip-nonfinite` skips the same steps on
every rank."""
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import independent as ind
from mmae_fast import backends
from mmae_fast.train import regularisers
from tests.gloo import spawn


def _single(z):
    """U-MAE's loss on the whole batch, written directly: mean((Z Zᵀ)²), Z row-normalised."""
    zn = z / z.norm(dim=1, keepdim=True)
    return (zn @ zn.T).square().mean()


def _args(semantics, backend="auto"):
    return SimpleNamespace(reg="uniformity", grad_semantics=semantics, backend=backend)


def _worker(rank, world, z):
    res = {}
    for semantics in ("exact", "per_rank"):
        rows = z.chunk(world)[rank].clone().requires_grad_(True)
        loss = regularisers.build(_args(semantics), dist.group.WORLD, world)(rows)
        loss.backward()
        res[semantics] = {"loss": loss.detach(), "grad": rows.grad}
    return res


def test_gathered_uniformity_equals_one_process_on_the_concatenated_batch(gen):
    """Value: that of one process on the 12 rows (and the independent formula). Gradient of each
    rank's rows: K = 2 times the single-process one ("exact": DDP's mean then gives the full
    gradient) or equal to it ("per_rank", the official all-gather's)."""
    z = torch.randn(12, 5, generator=gen, dtype=torch.float64).float()
    whole = z.clone().requires_grad_(True)
    ref = _single(whole.double())
    ref.backward()
    assert ref.item() == pytest.approx(ind.uniformity(z), rel=1e-12)
    res = spawn(_worker, z)
    for (semantics, scale), r in [((s, k), r) for s, k in (("exact", 2.0), ("per_rank", 1.0))
                                  for r in range(2)]:
        part = res[r][semantics]
        assert part["loss"].dtype == torch.float32
        torch.testing.assert_close(part["loss"].double(), ref.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(part["grad"].double(), scale * whole.grad.chunk(2)[r].double(),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_single_process_uniformity_matches_the_definition(gen, backend):
    """One process, on the backend ``--backend`` names (Triton: its interpreter on the CPU)."""
    if backend == "triton" and backends.availability("triton") is not None:
        pytest.skip(backends.availability("triton"))
    z = torch.randn(9, 4, generator=gen)
    got = regularisers.build(_args("exact", backend), None, 1)(z)
    torch.testing.assert_close(got, _single(z.double()).float())


def _skip_worker(rank, world):
    """Both ranks hold the same Linear; rank 1's first step has a finite loss whose gradient
    overflows (no DDP wrapper: the gradients are not averaged, only the skip flag is)."""
    from mmae_fast.train.step import train_step
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(6, 4)

    def fwd(scale):
        def f(x, noise, labels):
            loss = net(x).square().mean()
            terms = torch.stack([loss, loss, loss * 0, loss * 0, loss * 0]).detach()
            return loss * scale, terms, x
        return f
    before = [p.detach().clone() for p in net.parameters()]
    _, faults, _ = train_step(fwd(1e30 if rank == 1 else 1.0), [(x, None, None)], net=net,
                              opt=opt, scaler=scaler, accum=1, skip_nonfinite=True,
                              group=dist.group.WORLD)
    after_bad = [p.detach().clone() for p in net.parameters()]
    train_step(fwd(1.0), [(x, None, None)], net=net, opt=opt, scaler=scaler, accum=1,
               skip_nonfinite=True, group=dist.group.WORLD)
    return {"before": before, "after_bad": after_bad, "faults": faults,
            "after_good": [p.detach().clone() for p in net.parameters()]}


def test_a_fault_on_one_rank_makes_every_rank_skip():
    res = spawn(_skip_worker)
    assert res[0]["faults"].tolist() == [0.0, 0.0] and res[1]["faults"].tolist() == [1.0, 0.0]
    for r in res:
        assert all(torch.equal(a, b) for a, b in zip(r["before"], r["after_bad"]))
        assert not any(torch.equal(a, b) for a, b in zip(r["before"], r["after_good"]))
    assert all(torch.equal(a, b) for a, b in zip(res[0]["after_good"], res[1]["after_good"]))
