"""Tests of checkpoints: atomic writes that survive interruption, the latest pointer, retention,
tensor-only training state, random states and `load_generator`."""

from __future__ import annotations

import logging
import os
import random
import stat

import numpy as np
import pytest
import torch

from pathlength.models import Discriminator, Generator
from pathlength.training import CheckpointError, TrainConfig, load_generator, train
from pathlength.training import checkpoint as checkpoint_module
from pathlength.training.checkpoint import (
    find_latest_checkpoint,
    list_checkpoints,
    load_network,
    load_training_state,
    read_network_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from pathlength.training.rng import capture_rng_state, restore_rng_state
from tiny_runs import tiny_config


def tiny_networks(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    generator = Generator(z_dim=8, w_dim=8, img_resolution=8, channel_base=32, channel_max=8)
    generator_ema = Generator(z_dim=8, w_dim=8, img_resolution=8, channel_base=32, channel_max=8)
    discriminator = Discriminator(img_resolution=8, channel_base=32, channel_max=8)
    return {"G": generator, "G_ema": generator_ema, "D": discriminator}


def save_tiny(checkpoints_dir, step, seed=0, keep=0):
    return save_checkpoint(
        checkpoints_dir,
        step,
        tiny_networks(seed),
        {"step": step, "pl_mean": torch.tensor(0.5)},
        {"images_seen": step * 4},
        keep=keep,
    )


class FailingWrites:
    """Replacement for the durable write helper that raises on one chosen call, after writing half of it."""

    def __init__(self, fail_on_call: int, original) -> None:
        self.fail_on_call = fail_on_call
        self.original = original
        self.calls = 0

    def __call__(self, path, data, atomic=False):
        self.calls += 1
        if self.calls == self.fail_on_call:
            # Like the real helper, an atomic write goes to a temporary name first.
            target = path.with_name(f".tmp-{path.name}") if atomic else path
            with open(target, "wb") as handle:
                handle.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device (simulated)")
        return self.original(path, data, atomic=atomic)


def test_checkpoint_folder_holds_every_file(tmp_path):
    path = save_tiny(tmp_path, 3)

    names = sorted(child.name for child in path.iterdir())

    assert path.name == "step-0000003"
    assert names == ["D.safetensors", "G.safetensors", "G_ema.safetensors", "checkpoint.json", "training_state.pt"]
    assert (tmp_path / "latest").read_text().strip() == "step-0000003"


def test_checkpoint_folder_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_tiny(tmp_path, 3)
    finally:
        os.umask(previous)

    # Like the run folder, which mkdir also creates: 0o777 without the umask's bits.
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_network_weights_round_trip_exactly(tmp_path):
    networks = tiny_networks()
    path = save_checkpoint(tmp_path, 1, networks, {}, {})

    loaded = load_network(path, "D")

    for key, value in networks["D"].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.init_kwargs == networks["D"].init_kwargs


@pytest.mark.parametrize("fail_on_call", [1, 2, 4, 5])
def test_interrupted_folder_write_keeps_previous(tmp_path, monkeypatch, fail_on_call):
    save_tiny(tmp_path, 1)
    failing = FailingWrites(fail_on_call, checkpoint_module._write_durably)
    monkeypatch.setattr(checkpoint_module, "_write_durably", failing)

    with pytest.raises(OSError, match="simulated"):
        save_tiny(tmp_path, 2, seed=1)

    assert failing.calls == fail_on_call
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert find_latest_checkpoint(tmp_path).name == "step-0000001"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest", "step-0000001"]
    generator, info = load_generator(tmp_path)
    assert info["step"] == 1


def test_interrupted_pointer_write_uses_newest_complete(tmp_path, monkeypatch, caplog):
    save_tiny(tmp_path, 1)
    # Calls 1-5 write the folder's files; call 6 is the pointer.
    monkeypatch.setattr(checkpoint_module, "_write_durably", FailingWrites(6, checkpoint_module._write_durably))

    with pytest.raises(OSError, match="simulated"):
        save_tiny(tmp_path, 2, seed=1)
    with caplog.at_level(logging.WARNING, logger="pathlength.training.checkpoint"):
        latest = find_latest_checkpoint(tmp_path)

    assert (tmp_path / "latest").read_text().strip() == "step-0000001"
    assert latest.name == "step-0000002"
    assert "newest complete checkpoint is step-0000002" in caplog.text


def test_leftover_temporary_folder_is_ignored_then_removed(tmp_path):
    save_tiny(tmp_path, 1)
    leftover = tmp_path / ".tmp-step-0000002-abc"
    leftover.mkdir()
    (leftover / "G.safetensors").write_bytes(b"partial")

    found = [path.name for path in list_checkpoints(tmp_path)]
    save_tiny(tmp_path, 3)

    assert found == ["step-0000001"]
    assert not leftover.exists()


def test_keep_removes_oldest_checkpoints(tmp_path):
    for step in (1, 2, 3):
        save_tiny(tmp_path, step, keep=2)

    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000003"]


def test_saving_same_step_replaces_folder(tmp_path):
    save_tiny(tmp_path, 1, seed=0)
    path = save_tiny(tmp_path, 1, seed=5)

    state, _ = read_network_weights(path, "G")

    expected = tiny_networks(seed=5)["G"].state_dict()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert [child.name for child in tmp_path.iterdir() if child.name.startswith(".")] == []


def test_training_state_loads_with_weights_only(tmp_path):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1, betas=(0.0, 0.99))
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": capture_rng_state(), "step": 7}
    path = save_checkpoint(tmp_path, 7, tiny_networks(), state, {})

    direct = torch.load(path / "training_state.pt", weights_only=True)
    loaded = load_training_state(path)

    assert direct["step"] == 7
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.0, 0.99)
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_training_state_rejects_arbitrary_objects(tmp_path):
    path = save_tiny(tmp_path, 1)
    # A pickled class instance needs the full unpickler, which weights_only=True refuses.
    torch.save({"object": torch.optim.SGD}, path / "training_state.pt")

    with pytest.raises(CheckpointError, match="cannot read training state"):
        load_training_state(path)


def test_rng_state_restores_every_generator():
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(2))

    restore_rng_state(state)
    second = (random.random(), float(np.random.rand()), torch.rand(2))

    assert first[0] == second[0]
    assert first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_load_generator_accepts_run_and_checkpoint_folder(tmp_path):
    result = train(tiny_config(tmp_path / "run", steps=2, checkpoint_interval=1), progress=False)

    from_run, run_info = load_generator(result.run_dir)
    from_checkpoint, checkpoint_info = load_generator(result.checkpoint)
    raw, raw_info = load_generator(result.checkpoint, ema=False)

    z = torch.randn(2, 8)
    assert run_info["step"] == 2
    assert checkpoint_info["checkpoint"] == str(result.checkpoint)
    assert raw_info["network"] == "G"
    assert torch.equal(from_run(z, noise_mode="const"), from_checkpoint(z, noise_mode="const"))
    assert not torch.equal(from_run.synthesis.blocks[0].const, raw.synthesis.blocks[0].const)
    assert not from_run.training


def test_load_generator_missing_path_names_it(tmp_path):
    missing = tmp_path / "nothing"

    with pytest.raises(CheckpointError, match="nothing"):
        load_generator(missing)


def test_resolve_checkpoint_rejects_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_interrupted_training_checkpoint_resumes(tmp_path, monkeypatch):
    reference = train(tiny_config(tmp_path / "reference", steps=4), progress=False)
    out = tmp_path / "run"
    train(tiny_config(out, steps=2), progress=False)
    # Fail inside the step-4 checkpoint, after G.safetensors is written and halfway into G_ema.
    monkeypatch.setattr(checkpoint_module, "_write_durably", FailingWrites(2, checkpoint_module._write_durably))

    with pytest.raises(OSError, match="simulated"):
        train(tiny_config(out, steps=4), resume=True, progress=False)
    monkeypatch.undo()

    assert find_latest_checkpoint(out / "checkpoints").name == "step-0000002"
    assert load_generator(out)[1]["step"] == 2

    resumed = train(tiny_config(out, steps=4), resume=True, progress=False)

    for name in ("G", "G_ema", "D"):
        expected, _ = read_network_weights(reference.checkpoint, name)
        actual, _ = read_network_weights(resumed.checkpoint, name)
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
