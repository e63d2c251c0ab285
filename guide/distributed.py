"""Data parallelism under a launcher (`torchrun`): which rank this process is, how a global batch is
split, and the collectives training needs. With one process (no launcher) every helper is the
identity, so a one-rank run computes exactly what it computed before this module existed.

Under `torchrun --nproc-per-node N`, the launcher sets WORLD_SIZE, RANK and LOCAL_RANK; `World.
from_environment()` joins the process group (gloo on the CPU, NCCL on CUDA). Every rank draws the
same global batch from the same generator and trains on its own contiguous slice of it;
DistributedDataParallel averages the gradients, so N ranks take the step one process would take on
the whole batch, up to the order of float sums.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls, device: str = "cpu") -> "World":
        """The launcher's world (one process when no launcher set WORLD_SIZE), joined."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        world = cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return world

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes artifacts and logs."""
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of n (n must divide evenly)."""
        if n % self.size:
            raise ValueError(f"a batch of {n} does not split evenly over {self.size} ranks")
        k = n // self.size
        return slice(self.rank * k, (self.rank + 1) * k) if self.size > 1 else slice(None)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as training calls it: DistributedDataParallel over the ranks, or itself."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a tensor over the ranks (itself with one rank)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.size

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
