"""Data-parallel helpers for path length regularization: process ranks and a differentiable average.

`PathLengthPenalty(sync=all_reduce_mean)` averages the batch mean of the lengths over all processes
before it updates ``pl_mean``, so every rank has the same average. The average is differentiable:
its backward all-reduces the incoming gradient, so each rank's parameter gradient gets the part that
flows through the other ranks' lengths, and DistributedDataParallel's gradient average then equals
the one-process gradient on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_initialized() -> bool:
    """Return whether a default process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Return this process's rank, 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Return the number of processes, 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Return whether this process writes logs and checkpoints (rank 0)."""
    return get_rank() == 0


class _AllReduceMean(torch.autograd.Function):
    """Mean over processes whose backward is the mean of the incoming gradients over processes.

    For y = (1/R) sum_r x_r, the gradient of the summed loss sum_r L_r with respect to x_r is
    (1/R) sum_r dL_r/dy. DistributedDataParallel then divides the parameter gradients by R, which
    matches the gradient of the loss averaged over ranks.
    """

    @staticmethod
    def forward(ctx, value: Tensor) -> Tensor:  # type: ignore[override]
        result = value.detach().clone()
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        return result / dist.get_world_size()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every rank builds the same graph, so this collective runs in the same order on every rank.
        # NOTE: checked with gloo on 2 CPU processes beside DDP's bucketed all-reduce, not with nccl.
        total = grad.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / dist.get_world_size()


def all_reduce_mean(value: Tensor) -> Tensor:
    """Average a tensor over all processes, with a gradient; the identity without a process group.

    Pass it as ``PathLengthPenalty(sync=all_reduce_mean)``. Every process must call it in the same
    order with tensors of the same shape (an equal per-process regularization batch).
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return value
    return _AllReduceMean.apply(value)


def any_process(flag: Tensor) -> Tensor:
    """Return whether `flag` (a bool or integer tensor) is set on any process (max over processes)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return flag
    combined = flag.detach().to(torch.int64).clone()
    dist.all_reduce(combined, op=dist.ReduceOp.MAX)
    return combined
