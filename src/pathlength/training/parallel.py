"""Data-parallel training under torchrun: the process group set up from the launcher's environment,
DistributedDataParallel wrappers for the networks the loss phases call, collectives that keep the
processes in agreement, and the per-process random seeds."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pathlength.training.config import ConfigError

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

# The random streams of one process. Their order fixes the seeds derived from them.
RANDOM_STREAMS = ("latents", "data", "noise")


@dataclass(frozen=True)
class ProcessContext:
    """Rank, process count and device of this process in a data-parallel run.

    Attributes:
        rank: this process's rank in the process group (0 writes the run folder).
        world_size: the number of processes; 1 without torchrun.
        local_rank: the rank on this node, which picks the CUDA device.
        device: the device this process trains on.
        backend: the process group backend ("gloo" or "nccl"), or None for one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains (the networks are wrapped in DistributedDataParallel)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, metrics, samples and checkpoints (rank 0)."""
        return self.rank == 0


def launch_environment() -> tuple[int, int, int] | None:
    """Return (rank, world_size, local_rank) from the variables torchrun sets, or None outside torchrun.

    Raises:
        ConfigError: when WORLD_SIZE is set but RANK or LOCAL_RANK is missing or not an integer.
    """
    if "WORLD_SIZE" not in os.environ:
        return None

    values = []
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = os.environ.get(name)
        try:
            values.append(int(text))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(
                f"environment variable {name}={text!r} is not an integer; launch data-parallel training with "
                "torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK"
            ) from None
    rank, world_size, local_rank = values
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"invalid torchrun environment RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
    return rank, world_size, local_rank


def process_device(device: torch.device, local_rank: int) -> torch.device:
    """Return the device of the process with ``local_rank``: cuda:LOCAL_RANK for CUDA, the CPU otherwise.

    Raises:
        ConfigError: for a CUDA device with an explicit index, or a local rank without a visible GPU.
    """
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(
            f"device {str(device)!r} names one GPU, but under torchrun each process uses cuda:LOCAL_RANK; "
            "pass --device cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local_rank} has no GPU: {torch.cuda.device_count()} are visible; start at most that "
            "many processes per node (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[ProcessContext]:
    """Join the data-parallel run that torchrun started, and leave it at the end.

    Outside torchrun, or with one process, this yields a one-process context on ``device`` and
    creates no process group. Otherwise it initializes the default process group from torchrun's
    environment: gloo on the CPU, nccl on CUDA with device cuda:LOCAL_RANK. A process group that
    the caller initialized already is used as it is and left open.

    Raises:
        ConfigError: for an invalid torchrun environment or device (see `process_device`).
    """
    environment = launch_environment()
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = environment[2] if environment is not None else rank % max(1, torch.cuda.device_count())
        device = process_device(device, local_rank) if world_size > 1 else device
        yield ProcessContext(rank, world_size, local_rank, device, dist.get_backend())
        return

    if environment is None or environment[1] == 1:
        yield ProcessContext(device=device)
        return

    rank, world_size, local_rank = environment
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; train with one process")
    device = process_device(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)

    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        yield ProcessContext(rank, world_size, local_rank, device, backend)
    finally:
        dist.destroy_process_group()


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Return each process's share of the global ``batch_size``.

    Raises:
        ConfigError: when ``batch_size`` is not a multiple of ``world_size``.

    Example:
        >>> local_batch_size(32, 4)
        8
    """
    if batch_size % world_size != 0:
        smaller = max(world_size, batch_size - batch_size % world_size)
        raise ConfigError(
            f"batch_size {batch_size} cannot be split evenly over {world_size} processes; pass a multiple of "
            f"{world_size}, such as {smaller} or {smaller + world_size}"
        )
    return batch_size // world_size


@contextlib.contextmanager
def quiet_unless_main(context: ProcessContext) -> Iterator[None]:
    """Raise the ``pathlength`` loggers to WARNING on every process but rank 0, so INFO lines appear once."""
    package_logger = logging.getLogger("pathlength")
    previous_level = package_logger.level
    if not context.is_main:
        package_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package_logger.setLevel(previous_level)


def wrap_networks(generator: nn.Module, discriminator: nn.Module, context: ProcessContext) -> tuple[Any, nn.Module]:
    """Return the generator and discriminator that the loss phases call.

    With one process these are the networks themselves. With several, the mapping network, the
    synthesis network and the discriminator are each wrapped in DistributedDataParallel, which
    all-reduces their gradients in the backward pass, and the generator comes back as a
    `DataParallelGenerator` whose ``mapping`` and ``synthesis`` are the wrappers. Calling the inner
    modules instead would leave each process with its own gradients.

    Buffers are synced once, from rank 0, when the wrappers are built, and not before every forward:
    the tracked ``w_avg`` is averaged by `average_over_processes_` after each update instead.
    """
    if not context.distributed:
        return generator, discriminator

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    buffer_options = _no_forward_buffer_sync()
    wrapped = []
    for module in (generator.mapping, generator.synthesis, discriminator):
        flags = [parameter.requires_grad for parameter in module.parameters()]
        # DistributedDataParallel registers its gradient hooks only on parameters that require grad
        # when it is built, and the trainer keeps every network frozen outside its own phases.
        module.requires_grad_(True)
        wrapped.append(DistributedDataParallel(module, device_ids=device_ids, **buffer_options))
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)

    mapping, synthesis, wrapped_discriminator = wrapped
    return DataParallelGenerator(mapping, synthesis, generator.num_ws), wrapped_discriminator


@dataclass(frozen=True)
class DataParallelGenerator:
    """The halves of a generator as the loss phases call them: DistributedDataParallel wrappers.

    ``mapping(z, c, update_w_avg=...)`` and ``synthesis(ws)`` take the arguments of the wrapped
    `MappingNetwork` and `SynthesisNetwork`; ``num_ws`` is the generator's number of ws.
    """

    mapping: nn.Module
    synthesis: nn.Module
    num_ws: int


def _no_forward_buffer_sync() -> dict[str, bool]:
    # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, which (by its FutureWarning)
    # still syncs the buffers once when the wrapper is built.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def run_on_main(context: ProcessContext, function: Callable[[], Result]) -> Result:
    """Run ``function`` on rank 0 only and return its result on every process.

    The other processes wait until rank 0 has finished, so this is also a barrier. When the call
    raises on rank 0, every process raises the same exception, so none waits forever for a
    collective that rank 0 will not reach. The result and the exception must pickle.
    """
    if not context.distributed:
        return function()

    outcome: list[Any] = [None]
    if context.is_main:
        try:
            outcome[0] = ("ok", function())
        except Exception as error:
            outcome[0] = ("error", _picklable(error))
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)

    status, value = outcome[0]
    if status == "error":
        raise value
    return value


def run_everywhere(context: ProcessContext, function: Callable[[], Result]) -> Result:
    """Run ``function`` on every process and raise on all of them when it raised on any.

    A process whose own call raised re-raises its exception. The others raise the exception of the
    lowest rank that failed, so every process stops at the same point.
    """
    if not context.distributed:
        return function()

    error: Exception | None = None
    result = None
    try:
        result = function()
    except Exception as caught:
        error = caught

    errors: list[Any] = [None] * context.world_size
    dist.all_gather_object(errors, None if error is None else _picklable(error))
    if error is not None:
        raise error
    for failed in errors:
        if failed is not None:
            raise failed
    return result  # type: ignore[return-value]


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception that does not round-trip is replaced
        return RuntimeError(f"{type(error).__name__}: {error}")


def derive_seed(seed: int, stream: str, rank: int, step: int) -> int:
    """Return the seed of random ``stream`` for process ``rank`` at training ``step``.

    NumPy's SeedSequence mixes the four numbers, so neighbouring ranks and steps get unrelated
    streams. The result fits torch's 64-bit seeds and is the same on every machine.

    Example:
        >>> derive_seed(0, "latents", rank=1, step=10) == derive_seed(0, "latents", rank=1, step=10)
        True
    """
    if stream not in RANDOM_STREAMS:
        raise ValueError(f"stream must be one of {RANDOM_STREAMS}, got {stream!r}")
    words = np.random.SeedSequence([seed, RANDOM_STREAMS.index(stream), rank, step]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@torch.no_grad()
def average_over_processes_(tensor: Tensor) -> Tensor:
    """Replace ``tensor`` in place by its mean over all processes and return it.

    The all-reduce gives every process the same sum, so the result is bit-identical everywhere.
    Without a process group the tensor is left as it is.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.div_(dist.get_world_size())


def average_metrics(context: ProcessContext, metrics: dict[str, float]) -> dict[str, float]:
    """Return the metrics of all processes combined by `combine_metrics`, identical on every process.

    Every process must call this at the same step.
    """
    if not context.distributed:
        return dict(metrics)

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, metrics)
    return combine_metrics(gathered)


def combine_metrics(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-process metric summaries into the summary of the global batch.

    Each process summarizes its own share of the global batch, and every share has the same size,
    so a mean over the global batch is the mean of the processes' means. ``pl_lengths/std`` (a
    population standard deviation) is combined through the second moment:
    std^2 = mean_r(std_r^2 + mean_r^2) - mean^2. A key that only some processes report is
    averaged over those.

    Example:
        >>> combine_metrics([{"Loss/G/main": 1.0}, {"Loss/G/main": 3.0}])
        {'Loss/G/main': 2.0}
    """
    names = sorted({name for summary in summaries for name in summary})
    combined = {}
    for name in names:
        values = [summary[name] for summary in summaries if name in summary]
        combined[name] = sum(values) / len(values)

    pooled = [summary for summary in summaries if "pl_lengths/std" in summary and "pl_lengths/mean" in summary]
    if pooled:
        mean = sum(summary["pl_lengths/mean"] for summary in pooled) / len(pooled)
        second_moment = sum(summary["pl_lengths/std"] ** 2 + summary["pl_lengths/mean"] ** 2 for summary in pooled) / len(pooled)
        # Rounding can leave a tiny negative variance when all lengths are equal.
        combined["pl_lengths/std"] = max(0.0, second_moment - mean**2) ** 0.5
    return combined


def state_checksum(state: dict[str, Tensor]) -> str:
    """Return a SHA-256 hex digest of a state dict: keys in sorted order, each with dtype, shape and bytes.

    Two state dicts have the same digest exactly when every tensor is bit-identical, so processes can
    compare their weights without sending them.

    Example:
        >>> state_checksum({"w": torch.zeros(2)}) == state_checksum({"w": torch.zeros(2)})
        True
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
