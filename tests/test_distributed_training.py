"""Data-parallel training through torchrun (2 CPU processes on gloo, localhost only), resume with
another process count, mixed precision, and the helpers behind them."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pathlength import PathLengthPenalty
from pathlength.data import load_dataset
from pathlength.models import Discriminator, Generator
from pathlength.training import ConfigError, TrainConfig, train
from pathlength.training.checkpoint import load_training_state, read_network_weights
from pathlength.training.loop import Trainer
from pathlength.training.losses import r1_penalty
from pathlength.training.parallel import (
    ProcessContext,
    combine_metrics,
    derive_seed,
    local_batch_size,
    state_checksum,
)
from tiny_runs import TINY_RUN, run_cli

# Four steps of the tiny model, a checkpoint every two, one metric record per step.
TINY_DDP_RUN = dict(TINY_RUN, sample_interval=2, checkpoint_interval=2)
NETWORKS = ("G", "G_ema", "D")
TORCHRUN_TIMEOUT = 300

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible here")


@pytest.fixture
def one_thread():
    """Run the in-process trainings on one CPU thread, which is faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_environment() -> dict[str, str]:
    """Return this environment without torchrun's variables, with one thread per process."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    environment["OMP_NUM_THREADS"] = "1"
    return environment


def torchrun(arguments: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc-per-node PROCESSES -m pathlength ARGUMENTS`` on localhost in ``cwd``."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "pathlength",
        *arguments,
    ]
    return subprocess.run(
        command, cwd=cwd, env=subprocess_environment(), capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT
    )


def run_pathlength(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m pathlength ARGUMENTS`` as one process in ``cwd``."""
    command = [sys.executable, "-m", "pathlength", *arguments]
    return subprocess.run(
        command, cwd=cwd, env=subprocess_environment(), capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_rank_records(folder: Path, world_size: int) -> list[dict]:
    return [json.loads((folder / f"rank-{rank}.json").read_text()) for rank in range(world_size)]


def checkpoint_checksum(checkpoint: Path, name: str) -> str:
    state, _ = read_network_weights(checkpoint, name)
    return state_checksum(state)


@dataclass
class TorchrunRun:
    folder: Path
    completed: subprocess.CompletedProcess

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "step-0000004"


def start_torchrun_run(folder: Path, *extra: str) -> TorchrunRun:
    (folder / "tiny.json").write_text(json.dumps(TINY_DDP_RUN))
    arguments = ["train", "--config", "tiny.json", "--out", "run", "--no-progress", "--rank-checksums", "ranks", *extra]
    completed = torchrun(arguments, cwd=folder)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return TorchrunRun(folder, completed)


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory) -> TorchrunRun:
    return start_torchrun_run(tmp_path_factory.mktemp("ddp"))


# ---------------------------------------------------------------------------------------------
# Two processes under torchrun. The shared run takes about 10 s and the resume about 6 s on 2 busy
# cores, so these stay in the default suite; further runs are marked slow.


def test_torchrun_writes_one_run_folder(torchrun_run):
    run_dir = torchrun_run.run_dir

    records = read_metrics(run_dir)
    log = (run_dir / "train.log").read_text()
    event_files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # Only rank 0 writes: one record per step, one event file, one start in the log.
    assert sorted(path.name for path in torchrun_run.folder.iterdir()) == ["ranks", "run", "tiny.json"]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert [record["images_seen"] for record in records] == [4, 8, 12, 16]
    assert len(event_files) == 1
    assert log.count("Starting run") == 1
    assert "Data-parallel training on 2 processes (gloo backend): global batch 4, 2 per process" in log
    assert torchrun_run.completed.stdout.count("Trained run to step 4") == 1


def test_torchrun_ranks_end_with_identical_weights(torchrun_run):
    ranks = read_rank_records(torchrun_run.folder / "ranks", 2)

    assert [record["step"] for record in ranks] == [4, 4]
    assert [record["world_size"] for record in ranks] == [2, 2]
    for name in NETWORKS:
        assert ranks[0]["checksums"][name] == ranks[1]["checksums"][name], name


def test_torchrun_checkpoint_holds_rank_weights(torchrun_run):
    ranks = read_rank_records(torchrun_run.folder / "ranks", 2)

    for name in NETWORKS:
        assert checkpoint_checksum(torchrun_run.last_checkpoint, name) == ranks[0]["checksums"][name], name


def test_torchrun_ranks_share_pl_mean(torchrun_run):
    ranks = read_rank_records(torchrun_run.folder / "ranks", 2)
    state = load_training_state(torchrun_run.last_checkpoint)
    saved_pl_mean = state["path_length_penalty"]["pl_mean"]

    # The synced average is the same all-reduced float32 number on both processes.
    assert ranks[0]["pl_mean_hex"] == ranks[1]["pl_mean_hex"]
    assert ranks[0]["pl_mean"] > 0
    assert saved_pl_mean.dtype == torch.float32
    assert float(saved_pl_mean) == ranks[0]["pl_mean"]
    assert read_metrics(torchrun_run.run_dir)[-1]["pl_mean"] == ranks[0]["pl_mean"]


def test_one_process_resume_continues_run(torchrun_run, tmp_path):
    shutil.copytree(torchrun_run.run_dir, tmp_path / "run")
    first_records = read_metrics(tmp_path / "run")

    completed = run_pathlength(["train", "--out", "run", "--resume", "--steps", "6", "--no-progress"], cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr[-4000:]
    records = read_metrics(tmp_path / "run")
    state = load_training_state(tmp_path / "run" / "checkpoints" / "step-0000006")
    log = (tmp_path / "run" / "train.log").read_text()
    assert [record["step"] for record in records] == [1, 2, 3, 4, 5, 6]
    assert records[:4] == first_records
    assert state["step"] == 6
    assert state["images_seen"] == 24
    assert state["world_size"] == 1
    assert int(state["path_length_penalty"]["step"]) == 6
    assert "Resuming run from run/checkpoints/step-0000004 (step 4, 16 images)" in log
    assert "written by 2 process(es) and this run has 1" in log


@pytest.mark.slow
def test_two_process_resume_matches_uninterrupted(torchrun_run, tmp_path):
    shutil.copytree(torchrun_run.run_dir, tmp_path / "run")
    shutil.copy(torchrun_run.folder / "tiny.json", tmp_path / "tiny.json")
    # The run "stopped" after its step-2 checkpoint.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000004")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-0000002\n")

    completed = torchrun(
        ["train", "--out", "run", "--resume", "--steps", "4", "--no-progress", "--rank-checksums", "ranks"], cwd=tmp_path
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    uninterrupted = read_rank_records(torchrun_run.folder / "ranks", 2)
    resumed = read_rank_records(tmp_path / "ranks", 2)
    # The random streams are derived from the seed, rank and step, so the resumed steps draw the
    # samples of the uninterrupted ones.
    for rank in range(2):
        assert resumed[rank]["pl_mean_hex"] == uninterrupted[rank]["pl_mean_hex"], rank
        for name in NETWORKS:
            assert resumed[rank]["checksums"][name] == uninterrupted[rank]["checksums"][name], (rank, name)


@pytest.mark.slow
def test_torchrun_without_pl_sync_keeps_rank_averages(tmp_path):
    run = start_torchrun_run(tmp_path, "--no-pl-sync")

    ranks = read_rank_records(tmp_path / "ranks", 2)
    config = TrainConfig.load(run.run_dir / "config.json")

    # Each process averages the lengths of its own samples, so the averages differ, while DDP still
    # keeps the weights identical.
    assert config.pl_sync is False
    assert ranks[0]["pl_mean_hex"] != ranks[1]["pl_mean_hex"]
    for name in NETWORKS:
        assert ranks[0]["checksums"][name] == ranks[1]["checksums"][name], name


@pytest.mark.slow
def test_torchrun_nonempty_folder_stops_every_process(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_DDP_RUN))

    completed = torchrun(["train", "--config", "tiny.json", "--out", "run", "--no-progress"], cwd=tmp_path)

    # Rank 0 found the folder in use; the other process raised the same error instead of waiting.
    assert completed.returncode != 0
    assert completed.stderr.count("already exists and is not empty") == 2
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# R1 under DistributedDataParallel (2 spawned processes)

R1_WORLD_SIZE = 2
R1_LOCAL_BATCH = 2
R1_ITERATIONS = 3


def tiny_discriminator() -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(img_resolution=8, channel_base=32, channel_max=8)


def r1_inputs() -> torch.Tensor:
    """Return real images [iterations, processes, local batch, 1, 8, 8]."""
    draws = torch.Generator().manual_seed(3)
    return torch.randn(R1_ITERATIONS, R1_WORLD_SIZE, R1_LOCAL_BATCH, 1, 8, 8, generator=draws)


def r1_steps(call, discriminator: Discriminator, real: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Alternate a plain discriminator step and an R1 step through ``call`` (the module or its DDP
    wrapper) on real [iterations, chunks, batch, ...]; return the discriminator's gradients of each R1 step.

    Each chunk runs through the discriminator on its own and the losses are averaged, because the
    minibatch standard deviation layer makes D(x) depend on the other samples of its batch.
    """
    optimizer = torch.optim.SGD(discriminator.parameters(), lr=0.05)
    history = []
    for iteration in range(R1_ITERATIONS):
        chunks = real[iteration]

        optimizer.zero_grad()
        torch.stack([call(chunk, None).mean() for chunk in chunks]).mean().backward()
        optimizer.step()

        optimizer.zero_grad()
        torch.stack([r1_penalty(call, chunk, None).mean() for chunk in chunks]).mean().backward()
        grads = {name: parameter.grad.detach().clone() for name, parameter in discriminator.named_parameters()}
        history.append(grads)
        optimizer.step()
    return history


def r1_rank(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=R1_WORLD_SIZE)
    try:
        discriminator = tiny_discriminator()
        own_chunk = r1_inputs()[:, rank : rank + 1]
        history = r1_steps(DistributedDataParallel(discriminator), discriminator, own_chunk)
        torch.save(history, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_r1_under_ddp_matches_one_process(tmp_path):
    mp.spawn(r1_rank, args=(free_port(), str(tmp_path)), nprocs=R1_WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(R1_WORLD_SIZE)]
    discriminator = tiny_discriminator()
    reference = r1_steps(discriminator, discriminator, r1_inputs())

    for iteration in range(R1_ITERATIONS):
        for name, expected in reference[iteration].items():
            # DDP averages with one all-reduce, so the processes agree bit for bit. The average over
            # processes rounds differently from the one-process average, hence the tolerance.
            assert torch.equal(ranks[0][iteration][name], ranks[1][iteration][name]), name
            torch.testing.assert_close(ranks[0][iteration][name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_r1_penalty_gives_output_bias_gradient():
    discriminator = tiny_discriminator()
    real = torch.randn(2, 1, 8, 8).requires_grad_(True)

    (input_grad,) = torch.autograd.grad(discriminator(real, None).sum(), real, create_graph=True)
    plain_bias_grad = torch.autograd.grad(input_grad.square().sum(), discriminator.out.bias, allow_unused=True)[0]
    r1_penalty(discriminator, real, None).mean().backward()

    # grad_x D(x) does not depend on the output bias, so the plain penalty leaves it without a
    # gradient. The zero-valued term gives it an exact zero, which DDP needs.
    assert plain_bias_grad is None
    assert discriminator.out.bias.grad is not None
    assert torch.count_nonzero(discriminator.out.bias.grad) == 0


def test_r1_penalty_scaled_equals_unscaled():
    discriminator = tiny_discriminator()
    real = torch.randn(3, 1, 8, 8)

    plain = r1_penalty(discriminator, real, None)
    scaled = r1_penalty(discriminator, real, None, grad_scale=2.0**16)

    # A power-of-two scale multiplies and divides exactly in float32.
    assert torch.equal(scaled, plain)


# ---------------------------------------------------------------------------------------------
# Batch split, random streams, metrics and checksums


def test_local_batch_size_splits_global_batch():
    assert local_batch_size(32, 4) == 8


def test_indivisible_batch_names_processes():
    with pytest.raises(ConfigError, match="batch_size 5 cannot be split evenly over 2 processes; pass a multiple of 2"):
        local_batch_size(5, 2)


def test_trainer_rejects_indivisible_batch(tmp_path):
    dataset = load_dataset("digits", 8)
    config = TrainConfig(out=str(tmp_path), **dict(TINY_RUN, batch_size=5))
    context = ProcessContext(rank=0, world_size=2)

    with pytest.raises(ConfigError, match="batch_size 5 cannot be split evenly over 2 processes"):
        Trainer(config, dataset, torch.device("cpu"), context)


def test_derived_seeds_differ_by_rank_step_stream():
    base = derive_seed(0, "latents", rank=0, step=5)

    assert derive_seed(0, "latents", rank=0, step=5) == base
    assert derive_seed(0, "latents", rank=1, step=5) != base
    assert derive_seed(0, "latents", rank=0, step=6) != base
    assert derive_seed(0, "data", rank=0, step=5) != base
    assert derive_seed(1, "latents", rank=0, step=5) != base
    assert 0 <= base < 2**63


def test_combined_metrics_pool_lengths():
    first, second = np.array([1.0, 2.0, 2.5]), np.array([3.0, 5.0, 7.0])
    summaries = [
        {"Loss/G/main": 1.0, "pl_lengths/mean": first.mean(), "pl_lengths/std": first.std()},
        {"Loss/G/main": 2.0, "pl_lengths/mean": second.mean(), "pl_lengths/std": second.std()},
    ]
    pooled = np.concatenate([first, second])

    combined = combine_metrics(summaries)

    assert combined["Loss/G/main"] == 1.5
    assert combined["pl_lengths/mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    # The second-moment formula loses a few digits to cancellation; 1e-9 is far above that.
    assert combined["pl_lengths/std"] == pytest.approx(pooled.std(), rel=1e-9)


def test_state_checksum_detects_one_ulp():
    state = {"weight": torch.linspace(0, 1, 5), "w_avg": torch.zeros(3)}
    changed = {name: value.clone() for name, value in state.items()}
    changed["weight"][2] = torch.nextafter(changed["weight"][2], torch.tensor(2.0))

    assert state_checksum(state) == state_checksum({name: value.clone() for name, value in state.items()})
    assert state_checksum(state) != state_checksum(changed)


def test_skipped_path_length_step_is_reported(tmp_path, one_thread):
    dataset = load_dataset("digits", 8)
    config = TrainConfig(out=str(tmp_path), **TINY_RUN)
    trainer = Trainer(config, dataset, torch.device("cpu"))
    trainer.path_length_penalty.on_nonfinite = "skip"
    # A NaN toRGB weight makes every image NaN, which the penalty skips.
    trainer.G.synthesis.blocks[-1].torgb.weight.data.fill_(float("nan"))

    trainer.G.requires_grad_(True)
    result = trainer.loss.generator_path_length(trainer.local_batch_size)

    assert result is not None
    assert result.stats["pl_skipped"].item() == 1.0
    assert "pl_lengths" not in result.stats
    assert float(trainer.path_length_penalty.pl_mean) == 0.0


# ---------------------------------------------------------------------------------------------
# Mixed precision


def test_fp16_on_cpu_exits_2(tmp_path):
    code, _, err = run_cli(["train", "--out", tmp_path / "run", "--device", "cpu", "--precision", "fp16", "--steps", "1"])

    assert code == 2
    assert "precision fp16 needs a CUDA device" in err
    assert not (tmp_path / "run").exists()


def test_bf16_run_keeps_float32_pl_mean(tmp_path, monkeypatch, one_thread):
    autocast_states = []
    original_forward = PathLengthPenalty.forward

    def recording_forward(self, images, ws, *args, **kwargs):
        autocast_states.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original_forward(self, images, ws, *args, **kwargs)

    monkeypatch.setattr(PathLengthPenalty, "forward", recording_forward)

    config = TrainConfig(out=str(tmp_path / "run"), precision="bf16", **dict(TINY_RUN, steps=2, pl_interval=1))

    result = train(config, progress=False)

    state = load_training_state(result.checkpoint)
    pl_mean = state["path_length_penalty"]["pl_mean"]
    records = read_metrics(result.run_dir)
    # pl_interval 1 over 2 steps: regularization at steps 0 and 1, both under bfloat16 autocast.
    assert autocast_states == [(True, torch.bfloat16), (True, torch.bfloat16)]
    assert pl_mean.dtype == torch.float32
    assert math.isfinite(float(pl_mean))
    assert float(pl_mean) > 0
    assert [record["pl_skipped"] for record in records if "pl_skipped" in record] == [0.0, 0.0]
    assert all(math.isfinite(record["Loss/G/main"]) for record in records)


@pytest.mark.cuda
@requires_cuda
def test_fp16_penalty_within_1e2_of_fp32():
    torch.manual_seed(0)
    generator = Generator(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=32).cuda()
    ws = generator.mapping(torch.randn(4, 16, device="cuda"), None).detach().requires_grad_(True)
    noise = torch.randn(4, 1, 16, 16, device="cuda") / 16
    scaler = torch.amp.GradScaler("cuda")

    full = PathLengthPenalty(interval=1)(generator.synthesis(ws, noise_mode="const"), ws, noise)
    with torch.autocast("cuda", dtype=torch.float16):
        half = PathLengthPenalty(interval=1)(generator.synthesis(ws, noise_mode="const"), ws, noise, scaler=scaler)

    assert not half.skipped
    assert half.pl_mean.dtype == torch.float32
    torch.testing.assert_close(half.penalty, full.penalty, rtol=1e-2, atol=0)


@pytest.mark.cuda
@requires_cuda
def test_fp16_training_run_on_cuda(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), **dict(TINY_RUN, device="cuda", precision="fp16"))

    result = train(config, progress=False)

    state = load_training_state(result.checkpoint)
    records = read_metrics(result.run_dir)
    assert state["path_length_penalty"]["pl_mean"].dtype == torch.float32
    assert state["grad_scaler_G"]["scale"] > 0
    assert all("loss_scale/G" in record for record in records)
    assert all("pl_skipped" in record for record in records if "Loss/G/pl_penalty" in record)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="nccl data-parallel training needs 2 CUDA devices, one per process",
)
def test_nccl_torchrun_ranks_end_identical(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(dict(TINY_DDP_RUN, device="cuda")))

    completed = torchrun(
        ["train", "--config", "tiny.json", "--out", "run", "--no-progress", "--rank-checksums", "ranks"], cwd=tmp_path
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = read_rank_records(tmp_path / "ranks", 2)
    assert "(nccl backend)" in (tmp_path / "run" / "train.log").read_text()
    assert ranks[0]["pl_mean_hex"] == ranks[1]["pl_mean_hex"]
    for name in NETWORKS:
        assert ranks[0]["checksums"][name] == ranks[1]["checksums"][name], name
