"""Tiny training runs and a shared classifier cache for the tests of the diagnostic verbs and reports."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pathlength import cli
from pathlength.training import TrainConfig, train

# A model small enough that four training steps take about a second on one CPU core.
TINY_RUN = {
    "resolution": 8,
    "batch_size": 4,
    "z_dim": 8,
    "w_dim": 8,
    "channel_base": 32,
    "channel_max": 8,
    "num_samples": 4,
    "pl_interval": 2,
    "r1_interval": 2,
    "steps": 4,
    "log_interval": 1,
    "device": "cpu",
}


def tiny_config(out, **overrides) -> TrainConfig:
    """Return a config that trains an 8x8 model with 8 channels in well under a second per step."""
    values = dict(
        data="digits",
        out=str(out),
        resolution=8,
        steps=4,
        batch_size=4,
        z_dim=8,
        w_dim=8,
        channel_base=32,
        channel_max=8,
        pl_interval=2,
        r1_interval=2,
        num_samples=4,
        log_interval=2,
        sample_interval=2,
        checkpoint_interval=2,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def train_tiny_run(out: Path, **overrides) -> Path:
    """Train a 4-step run of the tiny model into ``out`` and return the run folder."""
    train(TrainConfig(out=str(out), **dict(TINY_RUN, **overrides)), progress=False)
    return out


@contextlib.contextmanager
def diagnostics_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run on one CPU thread with PATHLENGTH_CACHE in one folder of the test session, then restore both.

    The shared cache folder makes the digits classifier train once per session. One thread is used
    because on a shared, oversubscribed CPU two threads ran the tiny networks about ten times slower.
    """
    folder = tmp_path_factory.getbasetemp() / "pathlength-classifier-cache"
    folder.mkdir(exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PATHLENGTH_CACHE", str(folder))
            yield folder
    finally:
        torch.set_num_threads(threads)


def run_cli(arguments) -> tuple[int, str, str]:
    """Run ``pathlength ARGUMENTS`` in-process and return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(argument) for argument in arguments])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()
