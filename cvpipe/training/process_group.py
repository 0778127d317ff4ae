"""This process' place in a (torchrun) training job: rank, world size, device, and the process group.

Kept apart from `cvpipe.training.distributed` (the torchrun entry point, which imports the whole training run)
so that the trainer can use it without an import cycle.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist


@dataclass
class DistInfo:
    """This process' place in the job (defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average scalars over all processes (for logging)."""
        if self.world_size == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        tdist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def weight_spread(self, model: torch.nn.Module) -> float:
        """The largest difference of any parameter between processes (0.0 alone): DDP keeps the ranks' weights
        identical, so anything else means they stopped synchronising."""
        if self.world_size == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
        high, low = flat.clone(), flat.clone()
        tdist.all_reduce(high, op=tdist.ReduceOp.MAX)
        tdist.all_reduce(low, op=tdist.ReduceOp.MIN)
        return float((high - low).max())


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (a single-process DistInfo outside it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, dev)
