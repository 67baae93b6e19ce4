"""Run a function on ``world`` gloo ranks on the CPU and collect what each rank returns.

``spawn(worker, *args, world=2)`` starts ``world`` processes (torch.multiprocessing, "spawn"
start method), each joining one process group through a ``file://`` store in a fresh temporary
directory (no port to pick, so no race with other processes on the machine), calls
``worker(rank, world, *args)``, saves its return value with ``torch.save`` and leaves the group.
It returns the list of those values, indexed by rank. ``worker`` must be a module-level function
(it is pickled by name into the children); ``dist.group.WORLD`` is its process group.
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_entry(rank, world, store, out_dir, worker, args):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = worker(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(worker, *args, world: int = 2) -> list:
    """``[worker(0, world, *args), ..., worker(world - 1, world, *args)]``, each computed in its
    own gloo rank; a rank that raises makes this raise (torch.multiprocessing's
    ``ProcessRaisedException``, with the rank's traceback)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_entry, args=(world, os.path.join(tmp, "store"), tmp, worker, args),
                           nprocs=world, join=True, start_method="spawn")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False)
                for r in range(world)]
