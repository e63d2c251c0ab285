"""Data parallelism under a launcher (`torchrun`): which rank this process is, how a global batch is
split, and the collectives training needs. With one process (no launcher) every helper is the
identity, so a one-rank run computes exactly what it computed before this module existed.

Under `torchrun --nproc-per-node N`, the launcher sets WORLD_SIZE, RANK and LOCAL_RANK; `World.
from_environment()` joins the process group (gloo on the CPU, NCCL on CUDA). Every rank draws the
same global batch from the same generator and trains on its own contiguous slice of it;
DistributedDataParallel averages the gradients, so N ranks take the step one process would take on
the whole batch, up to the order of float sums. Batch normalization is made to use the statistics of
the global batch as well (`SyncedBatchNorm2d`), so a network with BN also takes the one-process step.
Sampling splits its batches round-robin over the ranks and gathers the images (`owns`, `gather`).
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
        """The model as training calls it: DistributedDataParallel over the ranks, or itself. Its
        BatchNorm2d layers become SyncedBatchNorm2d in place (same parameters, same state-dict keys)."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        sync_batchnorm(model)
        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def owns(self, index: int) -> bool:
        """Whether item `index` of a sequence split round-robin over the ranks is this rank's."""
        return index % self.size == self.rank

    def gather(self, items: dict[int, object]) -> dict[int, object]:
        """Every rank's {index: item}, merged, on every rank (itself with one rank). Tensors travel
        pickled (all_gather_object), so move them to the CPU first."""
        if self.size == 1:
            return items
        import torch.distributed as dist

        parts: list = [None] * self.size
        dist.all_gather_object(parts, items)
        return {k: v for part in parts for k, v in part.items()}

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


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over every rank, with
    gradients through them (differentiable all-reduce). torch's own SyncBatchNorm runs on GPUs only;
    this one runs on any backend, gloo included. Mean and variance are two passes (the centred sum of
    squares is reduced after the mean), as one process computes them. In eval mode, or with one
    process, it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # the differentiable all-reduce torch recommends (torch.distributed.nn.functional's is deprecated)
        from torch.distributed._functional_collectives import all_reduce

        def total(t: torch.Tensor) -> torch.Tensor:
            return all_reduce(t, "sum", dist.group.WORLD)

        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count)
        mean = total(x.sum(dims)) / n
        centred = x - mean[None, :, None, None]
        var = total((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * (n / max(n - 1.0, 1.0)), factor)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d of `model` into a SyncedBatchNorm2d in place, keeping its parameter and
    buffer objects (an optimizer built on the model still holds them)."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            synced = SyncedBatchNorm2d.__new__(SyncedBatchNorm2d)
            synced.__dict__.update(vars(child))  # the same parameters, buffers and settings
            setattr(model, name, synced)
        else:
            sync_batchnorm(child)
    return model
