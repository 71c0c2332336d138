"""torchrun support: process group setup, DDP wrapping and cross-rank averaging.

Without ``WORLD_SIZE`` > 1 in the environment everything here is a no-op, so a plain
``python -m training`` and ``torchrun --nproc_per_node=N -m training ...`` (or
``torchrun --no-python --nproc_per_node=N python -m training ...``) run the same code: gloo on
CPU, nccl on CUDA, one shard of the batches per rank, rank 0 writes the artifact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; under torchrun each rank gets its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available (use --device cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _reduce(self, values: Sequence[float]) -> list[float]:
        # float64 on CPU for gloo, on the rank's GPU for nccl.
        where = self.device if self.device.type == "cuda" else torch.device("cpu")
        tensor = torch.tensor(list(values), dtype=torch.float64, device=where)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values) if self.enabled else list(values)

    def all_reduce_mean(self, values: Sequence[float]) -> list[float]:
        if not self.enabled:
            return list(values)
        return [v / self.world_size for v in self._reduce(values)]

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable objects; a no-op without DDP)."""
        if not self.enabled:
            return value
        holder = [value if self.is_main else None]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def close(self) -> None:
        if self.initialised and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.initialised = False


def setup(device_name: str) -> DistContext:
    """Read torchrun's environment and initialise the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, initialised=True)
