"""R over ranks: ``--reg uniformity`` gathered as the official U-MAE loss (2 gloo ranks)."""
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmae_fast.train.regularisers import global_uniformity


def _single(z):
    """U-MAE's loss on the whole batch, written directly: mean((Z Zᵀ)²), Z row-normalised."""
    zn = z / z.norm(dim=1, keepdim=True)
    return (zn @ zn.T).square().mean()


def _worker(rank, world, init, z, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        res = {}
        for semantics in ("exact", "per_rank"):
            rows = z.chunk(world)[rank].clone().requires_grad_(True)
            loss = global_uniformity(rows, dist.group.WORLD, world, semantics)
            loss.backward()
            res[semantics] = {"loss": loss.detach(), "grad": rows.grad}
        torch.save(res, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gathered_uniformity_equals_one_process_on_the_concatenated_batch(gen):
    """Value: that of one process on the 12 rows. Gradient of each rank's rows: K = 2 times
    the single-process one ("exact": DDP's mean then gives the full gradient) or equal to it
    ("per_rank", the official all-gather's)."""
    z = torch.randn(12, 5, generator=gen, dtype=torch.float64).float()
    whole = z.clone().requires_grad_(True)
    ref = _single(whole.double())
    ref.backward()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res")
        mp.spawn(_worker, args=(2, f"file://{tmp}/store", z, out), nprocs=2)
        res = [torch.load(f"{out}.{r}") for r in range(2)]
    for (semantics, scale), r in [((s, k), r) for s, k in (("exact", 2.0), ("per_rank", 1.0))
                                  for r in range(2)]:
        part = res[r][semantics]
        torch.testing.assert_close(part["loss"].double(), ref.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(part["grad"].double(), scale * whole.grad.chunk(2)[r].double(),
                                   rtol=1e-4, atol=1e-6)


def test_single_process_uniformity_matches_the_definition(gen):
    z = torch.randn(9, 4, generator=gen)
    torch.testing.assert_close(global_uniformity(z, None, 1), _single(z.double()).float())
