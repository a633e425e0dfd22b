"""The same fine-tune across processes under ``torchrun`` (DistributedDataParallel, gloo on CPU).

Each process takes its slice of every global batch (``batch_size`` samples per process), DDP
averages the gradients, and the processes agree on when the budget is spent and on Ctrl-C, so
they stay in lock-step and end with identical weights. Only the first process writes files.
A single process (no ``torchrun``) runs without any of this.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """This process's place, joining the process group that ``torchrun`` describes if need be."""
        import torch.distributed as dist

        if not dist.is_available():
            return cls()
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                return cls()
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def wrap(self, runner: nn.Module, partial: bool) -> nn.Module:
        """``runner`` itself, or wrapped in DistributedDataParallel over its trainable parameters.
        ``partial``: some layers are frozen for a while, so DDP must look for unused parameters."""
        if self.size == 1:
            return runner
        params = runner.parameters_by_name()  # type: ignore[operator]
        for i, name in enumerate(sorted(params)):
            runner.register_parameter(f"trained_{i}", params[name])
        return nn.parallel.DistributedDataParallel(runner, find_unused_parameters=partial)

    def agree_max(self, value: float) -> float:
        if self.size == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor[0])

    def agree_any(self, flag: bool) -> bool:
        return self.agree_max(1.0 if flag else 0.0) > 0.0

    def on_first(self, action: Callable[[], None]) -> None:
        if self.rank == 0:
            action()
