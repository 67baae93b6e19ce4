"""The process's place in a torchrun job: device, rank, world, process group."""
from __future__ import annotations

import os

import torch

from ..mae.errors import RankLocalError


class Distributed:
    """torchrun environment: NCCL on CUDA, gloo on the CPU; a no-op for one process."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_arg != "cpu"
        if device_arg in ("auto", "cuda") and cuda:
            self.device = torch.device("cuda", self.local_rank)
        elif device_arg == "auto":
            self.device = torch.device("cpu")
        else:
            self.device = torch.device(device_arg)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {device_arg}: no CUDA device here; use --device cpu")
            if self.device.index is not None and self.device.index >= torch.cuda.device_count():
                raise RankLocalError(f"--device {device_arg}: this machine has "
                                     f"{torch.cuda.device_count()} CUDA device(s), indices "
                                     f"from 0")
            torch.cuda.set_device(self.device)
        self.group = None
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.group = dist.group.WORLD

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over the ranks (a device collective; no host sync)."""
        if self.world == 1:
            return t
        import torch.distributed as dist
        t = t.clone()
        dist.all_reduce(t, group=self.group)
        return t / self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()
