"""The probe under torch.distributed: who writes, and how per-rank sums become global values.

Each rank records its local sums and counts. Once per flush the stacked rows of every rank
are summed with one ``all_reduce`` (never per step); rank 0 then turns them into means and
writes. With equal local batches and each rank's loss its local mean (DDP and FSDP average
gradients), this equals a single process on the global batch:

* element/token sums and counts add up across ranks, so RMS values and means are global;
* the activation gradient on a rank is ``world`` times the global one (its loss is the mean of
  a ``1/world`` share), so squared gradient sums are scaled by ``1/world²``;
* the loss sums add and so do their counts: the recorded loss is the mean of the ranks' losses;
* parameter gradients are already averaged and identical on every rank (DDP), so only rank 0's
  squared norms enter the sum; when parameters are sharded (FSDP), each rank holds a disjoint
  shard and the squared norms of all shards are summed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Ranks", "unwrap", "has_sharded_params"]


class Ranks:
    """The process group a probe reduces over (a single process when not distributed)."""

    def __init__(self, enabled: bool | None = None):
        initialized = dist.is_available() and dist.is_initialized()
        if enabled and not initialized:
            raise RuntimeError(
                "distributed=True but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first or leave distributed=None"
            )
        self.active = initialized if enabled is None else bool(enabled)
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def grad_scale(self) -> float:
        """Factor on squared activation-gradient sums that makes them global (1/world²)."""
        return 1.0 / self.world**2

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / FSDP (v1) / ``torch.compile`` wrappers."""
    while True:
        name = type(model).__name__
        if name in ("DistributedDataParallel", "FullyShardedDataParallel") and hasattr(
            model, "module"
        ):
            model = model.module
        elif hasattr(model, "_orig_mod") and name == "OptimizedModule":
            model = model._orig_mod
        else:
            return model


def has_sharded_params(model: nn.Module) -> bool:
    """True when parameters are sharded across ranks (FSDP1 wrapper or FSDP2 DTensors)."""
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return True
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())
