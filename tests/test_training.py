"""Tests of the reference trainer: the run folder it writes, resume equality, the loss phases,
lazy regularization settings, EMA and the metrics."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from torch import nn

from pathlength.data import load_dataset
from pathlength.penalty import PathLengthPenalty
from pathlength.training import ConfigError, RunFolderError, TrainConfig, train
from pathlength.training.checkpoint import load_training_state, read_network_weights
from pathlength.training.ema import ema_beta, update_ema
from pathlength.training.latents import LatentSampler, map_with_style_mixing
from pathlength.training.loop import Trainer
from pathlength.training.losses import discriminator_logistic_loss, generator_logistic_loss, r1_penalty
from pathlength.training.run_logging import MetricWindow
from pathlength.models import Generator, layers
from tiny_runs import tiny_config

PLR_METRICS = ("Loss/G/pl_penalty", "pl_lengths/mean", "pl_lengths/std")
MAIN_METRICS = ("Loss/G/main", "Loss/D/main", "Loss/D/r1", "pl_mean", "images_per_second")


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    config = tiny_config(out)
    result = train(config, progress=False)
    return config, result


def test_run_writes_config_json(finished_run):
    config, result = finished_run

    saved = TrainConfig.load(result.run_dir / "config.json")

    assert saved == config


def test_run_writes_checkpoints_and_pointer(finished_run):
    _, result = finished_run
    checkpoints = result.run_dir / "checkpoints"

    assert (checkpoints / "step-0000002").is_dir()
    assert (checkpoints / "step-0000004").is_dir()
    assert (checkpoints / "latest").read_text().strip() == "step-0000004"
    assert result.checkpoint == checkpoints / "step-0000004"
    assert result.step == 4
    assert result.images_seen == 16


def test_run_writes_metrics_with_plr_keys(finished_run):
    _, result = finished_run

    records = read_metrics(result.run_dir)

    assert [record["step"] for record in records] == [2, 4]
    for record in records:
        for key in MAIN_METRICS + PLR_METRICS:
            assert key in record, key
            assert math.isfinite(record[key]), key
    assert records[-1]["pl_mean"] > 0
    assert records[-1]["images_seen"] == 16


def test_run_writes_tensorboard_scalars(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = finished_run
    events = list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))

    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()

    assert len(events) == 1
    assert "Loss/G/pl_penalty" in accumulator.Tags()["scalars"]
    assert [event.step for event in accumulator.Scalars("pl_mean")] == [2, 4]
    assert "samples" in accumulator.Tags()["images"]


def test_run_writes_sample_grids(finished_run):
    _, result = finished_run
    samples = result.run_dir / "samples"

    names = sorted(path.name for path in samples.glob("*.png"))
    with Image.open(samples / "latest.png") as latest:
        # 4 samples of 8x8 pixels -> 2x2 grid, each cell enlarged 8 times to 64 px, 2 px padding.
        size = latest.size

    assert names == ["latest.png", "step-0000000.png", "step-0000002.png", "step-0000004.png"]
    assert size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)


def test_run_writes_log_file(finished_run):
    _, result = finished_run

    log = (result.run_dir / "train.log").read_text()

    assert "Starting run" in log
    assert "Outputs: config" in log
    assert "Finished at step 4" in log


def test_resume_matches_uninterrupted_run(tmp_path):
    uninterrupted = train(tiny_config(tmp_path / "full", steps=6), progress=False)
    train(tiny_config(tmp_path / "split", steps=3), progress=False)
    resumed = train(tiny_config(tmp_path / "split", steps=6), resume=True, progress=False)

    for name in ("G", "G_ema", "D"):
        expected, _ = read_network_weights(uninterrupted.checkpoint, name)
        actual, _ = read_network_weights(resumed.checkpoint, name)
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{name}.{key}"

    expected_state = load_training_state(uninterrupted.checkpoint)
    actual_state = load_training_state(resumed.checkpoint)
    assert torch.equal(expected_state["path_length_penalty"]["pl_mean"], actual_state["path_length_penalty"]["pl_mean"])
    assert expected_state["path_length_penalty"]["pl_mean"] > 0
    assert int(actual_state["path_length_penalty"]["step"]) == 6


def test_resume_drops_records_after_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_config(out, steps=3, log_interval=1, checkpoint_interval=2), progress=False)
    first_records = read_metrics(out)
    # The run "stops" before its step-3 checkpoint, so the record of step 3 is orphaned.
    shutil.rmtree(out / "checkpoints" / "step-0000003")

    train(tiny_config(out, steps=4, log_interval=1, checkpoint_interval=2, keep_checkpoints=0), resume=True, progress=False)

    records = read_metrics(out)
    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    scalars = accumulator.Scalars("Loss/G/main")
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert records[:2] == first_records[:2]
    assert [event.step for event in scalars] == [1, 2, 3, 4]
    assert scalars[2].value == pytest.approx(records[2]["Loss/G/main"], rel=1e-6)


def test_no_pl_makes_no_penalty_call(tmp_path, monkeypatch):
    calls = []
    original_run = PathLengthPenalty.run

    def counting_run(self, *args, **kwargs):
        calls.append(1)
        return original_run(self, *args, **kwargs)

    monkeypatch.setattr(PathLengthPenalty, "run", counting_run)

    result = train(tiny_config(tmp_path / "run", pl_weight=0.0), progress=False)

    records = read_metrics(result.run_dir)
    state = load_training_state(result.checkpoint)
    assert calls == []
    assert all(record["pl_mean"] == 0 for record in records)
    assert all("Loss/G/pl_penalty" not in record for record in records)
    assert float(state["path_length_penalty"]["pl_mean"]) == 0.0


def test_pl_runs_every_interval(tmp_path, monkeypatch):
    forward_steps = []
    original_forward = PathLengthPenalty.forward

    def counting_forward(self, images, ws, *args, **kwargs):
        forward_steps.append(kwargs.get("step"))
        # The batch is shrunk from 4 to 4 // pl_batch_shrink = 2.
        assert images.shape[0] == 2
        return original_forward(self, images, ws, *args, **kwargs)

    monkeypatch.setattr(PathLengthPenalty, "forward", counting_forward)

    result = train(tiny_config(tmp_path / "run", steps=5, pl_interval=2), progress=False)

    state = load_training_state(result.checkpoint)
    assert forward_steps == [0, 2, 4]
    assert int(state["path_length_penalty"]["step"]) == 5


def test_resume_rejects_changed_pl_weight(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, steps=2), progress=False)

    with pytest.raises(ConfigError, match="pl_weight"):
        train(tiny_config(out, steps=4, pl_weight=1.0), resume=True, progress=False)


def test_resume_rejects_steps_below_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, steps=4), progress=False)

    with pytest.raises(ConfigError, match="steps 2"):
        train(tiny_config(out, steps=2), resume=True, progress=False)


def test_new_run_rejects_nonempty_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    with pytest.raises(RunFolderError, match="not empty"):
        train(tiny_config(out), progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_failed_dataset_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"

    with pytest.raises(ValueError, match="no_such_dataset"):
        train(tiny_config(out, data=str(tmp_path / "no_such_dataset")), progress=False)
    assert not out.exists()


def test_trainer_uses_lazy_adam_settings(tmp_path):
    dataset = load_dataset("digits", 8)
    config = tiny_config(tmp_path, pl_interval=4, r1_interval=16, lr=0.002, betas=(0.0, 0.99))

    trainer = Trainer(config, dataset, torch.device("cpu"))

    g_group = trainer.optimizer_G.param_groups[0]
    d_group = trainer.optimizer_D.param_groups[0]
    assert g_group["lr"] == pytest.approx(0.002 * 4 / 5, rel=1e-12)
    assert g_group["betas"][1] == pytest.approx(0.99 ** (4 / 5), rel=1e-12)
    assert d_group["lr"] == pytest.approx(0.002 * 16 / 17, rel=1e-12)
    assert d_group["betas"][1] == pytest.approx(0.99 ** (16 / 17), rel=1e-12)


def test_trainer_without_pl_uses_plain_adam(tmp_path):
    dataset = load_dataset("digits", 8)
    config = tiny_config(tmp_path, pl_weight=0.0, lr=0.002)

    trainer = Trainer(config, dataset, torch.device("cpu"))

    assert trainer.optimizer_G.param_groups[0]["lr"] == 0.002
    assert trainer.optimizer_G.param_groups[0]["betas"] == (0.0, 0.99)
    assert trainer.loss.path_length_penalty is None


def test_conditional_run_shows_classes_in_columns(tmp_path):
    config = tiny_config(tmp_path / "run", steps=1, conditional=True, num_samples=20)

    result = train(config, progress=False)

    generator_state, metadata = read_network_weights(result.checkpoint, "G_ema")
    with Image.open(result.run_dir / "samples" / "latest.png") as grid:
        width = grid.size[0]
    assert metadata["init_kwargs"]["c_dim"] == 10
    # 10 columns (one per class) of 64 px cells and 2 px padding.
    assert width == 10 * 64 + 11 * 2


def test_config_rejects_invalid_value_by_name():
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="style_mixing_prob"):
        TrainConfig(style_mixing_prob=1.5)


def test_config_json_round_trip():
    config = TrainConfig(out="somewhere", steps=7, betas=(0.5, 0.9), device="cpu", ema_rampup=None)

    restored = TrainConfig.from_json(config.to_json())

    assert restored == config
    assert restored.betas == (0.5, 0.9)


def test_config_rejects_unknown_key():
    with pytest.raises(ConfigError, match="unknown training config keys"):
        TrainConfig.from_dict({"stepz": 3})


def test_generator_loss_is_softplus_of_negative_logits():
    logits = torch.tensor([[-2.0], [0.0], [3.0]])

    loss = generator_logistic_loss(logits)

    expected = -torch.log(torch.sigmoid(logits)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_discriminator_loss_sums_real_and_fake_terms():
    real = torch.tensor([[1.0], [2.0]])
    fake = torch.tensor([[-1.0], [0.5]])

    loss = discriminator_logistic_loss(real, fake)

    expected = -torch.log(1 - torch.sigmoid(fake)).mean() - torch.log(torch.sigmoid(real)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


class LinearCritic(nn.Module):
    """D(x) = sum(weight * x): its input gradient is the weight, so R1 is ||weight||^2 exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 2, 2))

    def forward(self, images, c=None):
        return (images * self.weight).sum(dim=[1, 2, 3]).unsqueeze(1)


def test_r1_penalty_is_squared_input_gradient():
    critic = LinearCritic()
    real = torch.randn(3, 1, 2, 2)

    penalty = r1_penalty(critic, real, None)

    expected = critic.weight.detach().square().sum()
    assert penalty.shape == (3,)
    assert torch.allclose(penalty, expected.expand(3), rtol=1e-6)
    assert not real.requires_grad


def test_r1_penalty_trains_discriminator():
    critic = LinearCritic()

    r1_penalty(critic, torch.randn(2, 1, 2, 2), None).mean().backward()

    # d/dw ||w||^2 = 2w.
    assert torch.allclose(critic.weight.grad, 2 * critic.weight.detach(), rtol=1e-6)


def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=8, w_dim=8, img_resolution=8, channel_base=32, channel_max=8)


def test_style_mixing_off_keeps_one_latent():
    generator = tiny_generator()
    sampler = LatentSampler(8, "cpu", seed=0)
    z, c = sampler.sample(3)

    ws = map_with_style_mixing(generator, sampler, z, c, style_mixing_prob=0.0)

    assert torch.equal(ws, generator.mapping(z))


def test_style_mixing_always_mixes_after_cutoff():
    generator = tiny_generator()
    sampler = LatentSampler(8, "cpu", seed=0)
    z, c = sampler.sample(3)

    ws = map_with_style_mixing(generator, sampler, z, c, style_mixing_prob=1.0)

    plain = generator.mapping(z)
    same_layers = [torch.equal(ws[:, layer], plain[:, layer]) for layer in range(generator.num_ws)]
    cutoff = same_layers.index(False)
    assert same_layers[0], "the first layer always keeps the first latent"
    assert 1 <= cutoff < generator.num_ws
    assert not any(same_layers[cutoff:])


def test_latent_sampler_state_restores_draws():
    sampler = LatentSampler(4, "cpu", seed=3)
    state = sampler.state_dict()
    first, _ = sampler.sample(2)

    sampler.load_state_dict(state)
    again, _ = sampler.sample(2)

    assert torch.equal(first, again)


def test_ema_beta_halves_after_half_life():
    beta = ema_beta(batch_size=32, images_seen=10**6, half_life_images=3200, rampup=None)

    assert beta ** (3200 / 32) == pytest.approx(0.5, rel=1e-9)


def test_ema_beta_ramps_up_with_images_seen():
    early = ema_beta(batch_size=32, images_seen=640, half_life_images=5000, rampup=0.05)

    # The half-life is capped at 0.05 * 640 = 32 images.
    assert early == pytest.approx(0.5, rel=1e-9)
    assert ema_beta(32, images_seen=0, half_life_images=5000, rampup=0.05) == 0.0


def test_update_ema_interpolates_parameters_and_copies_buffers():
    source = nn.BatchNorm1d(2)
    average = nn.BatchNorm1d(2)
    with torch.no_grad():
        source.weight.fill_(3.0)
        average.weight.fill_(1.0)
        source.running_mean.fill_(7.0)

    update_ema(average, source, beta=0.75)

    assert torch.allclose(average.weight, torch.full((2,), 0.75 * 1.0 + 0.25 * 3.0))
    assert torch.equal(average.running_mean, torch.full((2,), 7.0))


def test_metric_window_pools_lengths():
    window = MetricWindow()
    window.add({"Loss/G/main": torch.tensor(1.0), "pl_lengths": torch.tensor([1.0, 3.0])})
    window.add({"Loss/G/main": torch.tensor(3.0), "pl_lengths": torch.tensor([5.0, 7.0])})
    window.add_step(images=8, seconds=2.0)

    summary = window.summarize()

    assert summary["Loss/G/main"] == pytest.approx(2.0)
    assert summary["pl_lengths/mean"] == pytest.approx(4.0)
    assert summary["pl_lengths/std"] == pytest.approx(math.sqrt(5.0))
    assert summary["images_per_second"] == pytest.approx(4.0)


def test_frechet_distance_logged_without_changing_run(tmp_path, tmp_path_factory):
    from tiny_runs import diagnostics_environment

    with diagnostics_environment(tmp_path_factory):
        measured = train(tiny_config(tmp_path / "measured", frechet_interval=2, frechet_num=16), progress=False)
        plain = train(tiny_config(tmp_path / "plain", frechet_interval=0), progress=False)

    values = [record["Metrics/frechet_distance"] for record in read_metrics(tmp_path / "measured") if "Metrics/frechet_distance" in record]
    assert len(values) == 2
    assert all(math.isfinite(value) and value >= 0 for value in values)
    assert not any("Metrics/frechet_distance" in record for record in read_metrics(tmp_path / "plain"))

    # The evaluation forks the random number generators, so training draws the same numbers.
    expected, _ = read_network_weights(plain.checkpoint, "G")
    actual, _ = read_network_weights(measured.checkpoint, "G")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_path_length_phase_uses_shifted_sums(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run"), load_dataset("digits", 8), torch.device("cpu"))
    settings = []
    trainer.G.synthesis.register_forward_hook(lambda module, inputs, output: settings.append(layers._shifted_sums_requested))

    trainer.loss.generator_main(trainer.local_batch_size)
    result = trainer.loss.generator_path_length(trainer.local_batch_size)

    assert result is not None
    # The main phase keeps the convolutions, and the path length phase's forward runs in the block.
    assert settings == [False, True]
    assert layers._shifted_sums_requested is False


def test_path_length_phase_samples_on_due_steps_only(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path / "run", pl_interval=2), load_dataset("digits", 8), torch.device("cpu"))
    sampled = []
    sample = trainer.sampler.sample
    monkeypatch.setattr(trainer.sampler, "sample", lambda batch_size: sampled.append(batch_size) or sample(batch_size))

    results = [trainer.loss.generator_path_length(trainer.local_batch_size) for _ in range(4)]

    assert [result is not None for result in results] == [True, False, True, False]
    assert sampled == [trainer.local_batch_size] * 2
    assert int(trainer.path_length_penalty.step) == 4
