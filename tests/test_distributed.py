"""Path length regularization under DistributedDataParallel: 2 CPU processes on gloo, localhost only."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pathlength import PathLengthPenalty
from pathlength.distributed import all_reduce_mean

WORLD_SIZE = 2
LOCAL_BATCH = 3
ITERATIONS = 3


class TinySynthesis(nn.Module):
    """A modulated toy generator whose 1x1 output bias gets no gradient from J^T y."""

    def __init__(self) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(1, 4, 4, 4))
        self.affine = nn.Linear(8, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.to_rgb = nn.Conv2d(4, 3, 1)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = self.const * self.affine(ws[:, 0])[:, :, None, None]
        x = F.leaky_relu(self.conv(x), 0.2)
        x = x * self.affine(ws[:, 1])[:, :, None, None]
        return self.to_rgb(x)


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    batch = WORLD_SIZE * LOCAL_BATCH
    ws = torch.randn(ITERATIONS, batch, 2, 8, generator=generator)
    noise = torch.randn(ITERATIONS, batch, 3, 4, 4, generator=generator) / 4.0
    return ws, noise


def train(model: nn.Module, plr: PathLengthPenalty, ws: torch.Tensor, noise: torch.Tensor) -> list[dict]:
    """Interleave a plain generator step and a PLR step; return gradients and pl_mean of each PLR step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    history = []
    for iteration in range(ITERATIONS):
        # An ordinary generator step, so DDP runs forward/backward pairs of both kinds.
        optimizer.zero_grad()
        model(ws[iteration]).square().mean().backward()
        optimizer.step()

        optimizer.zero_grad()
        latents = ws[iteration].clone().requires_grad_(True)
        result = plr(model(latents), latents, noise[iteration])
        result.loss.backward()
        grads = {name.removeprefix("module."): param.grad.detach().clone() for name, param in model.named_parameters()}
        history.append({"grads": grads, "pl_mean": plr.pl_mean.clone()})
        optimizer.step()
    return history


def run_rank(rank: int, port: int, out_dir: str, sync: bool) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(TinySynthesis())
        plr = PathLengthPenalty(interval=1, sync=all_reduce_mean if sync else None)
        ws, noise = make_inputs()
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        history = train(model, plr, ws[:, local], noise[:, local])
        torch.save(history, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(tmp_path: Path, sync: bool) -> list[list[dict]]:
    mp.spawn(run_rank, args=(free_port(), str(tmp_path), sync), nprocs=WORLD_SIZE, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def one_process_reference() -> list[dict]:
    torch.manual_seed(0)
    model = TinySynthesis()
    plr = PathLengthPenalty(interval=1)
    ws, noise = make_inputs()
    return train(model, plr, ws, noise)


@pytest.mark.slow
def test_synced_ddp_matches_one_process(tmp_path):
    ranks = run_two_processes(tmp_path, sync=True)
    reference = one_process_reference()

    for iteration in range(ITERATIONS):
        # pl_mean is the same all-reduced float32 value on every rank.
        assert torch.equal(ranks[0][iteration]["pl_mean"], ranks[1][iteration]["pl_mean"])
        # Averaging over 2 ranks and over 6 samples round differently: float32 tolerance.
        torch.testing.assert_close(ranks[0][iteration]["pl_mean"], reference[iteration]["pl_mean"], rtol=1e-6, atol=1e-7)

        for name, expected in reference[iteration]["grads"].items():
            # DDP averages gradients with one all-reduce, so the ranks agree bit for bit.
            assert torch.equal(ranks[0][iteration]["grads"][name], ranks[1][iteration]["grads"][name]), name
            torch.testing.assert_close(ranks[0][iteration]["grads"][name], expected, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_unsynced_ddp_keeps_rank_averages(tmp_path):
    ranks = run_two_processes(tmp_path, sync=False)

    first = ranks[0][0]["pl_mean"]
    second = ranks[1][0]["pl_mean"]
    assert not torch.equal(first, second)
    for name in ranks[0][0]["grads"]:
        assert torch.equal(ranks[0][0]["grads"][name], ranks[1][0]["grads"][name]), name


def test_output_bias_gets_gradient_from_penalty_alone():
    torch.manual_seed(0)
    model = TinySynthesis()
    ws = torch.randn(2, 2, 8, requires_grad=True)
    PathLengthPenalty(interval=1)(model(ws), ws).loss.backward()

    # J^T y does not depend on the output bias; the zero-valued tie-in term still gives it a
    # gradient, which DistributedDataParallel needs to finish its all-reduce.
    assert model.to_rgb.bias.grad is not None
    assert torch.count_nonzero(model.to_rgb.bias.grad) == 0
