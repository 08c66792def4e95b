"""The trainer's ``compile`` option: path length steps through `CompiledPathLengthPenalty`."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from pathlength import cli
from pathlength.compiled import CompiledPathLengthPenalty
from pathlength.data import load_dataset
from pathlength.training import ConfigError, train
from pathlength.training.checkpoint import load_training_state
from pathlength.training.latents import map_with_style_mixing
from pathlength.training.loop import Trainer
from pathlength.training.losses import StyleGAN2Loss
from tiny_runs import tiny_config

# aot_eager traces the same graph as inductor in seconds; inductor itself is covered by the slow
# test below and by tests/test_compiled.py.
FAST_BACKEND = {"compile": True, "compile_backend": "aot_eager"}


def _trainer(config) -> Trainer:
    return Trainer(config, load_dataset(config.data, config.resolution), torch.device("cpu"))


def _path_length_gradients(trainer: Trainer, noise: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], float]:
    """Run one due path length phase of ``trainer`` and return the generator's gradients and pl_mean."""
    trainer.G.requires_grad_(True)
    try:
        trainer.G.zero_grad(set_to_none=True)
        if noise is not None:
            # The eager step with the compiled step's y, on the same ws.
            penalty = trainer.path_length_penalty
            z, c = trainer.sampler.sample(trainer.local_batch_size)
            ws = map_with_style_mixing(trainer.G, trainer.sampler, z, c, trainer.config.style_mixing_prob)
            result = penalty.run(trainer.G.synthesis, ws, noise=noise)
            assert result is not None and not result.skipped
        else:
            result = trainer.loss.generator_path_length(trainer.local_batch_size)
            assert result is not None and result.stats["pl_skipped"] == 0
        result.loss.backward()
        gradients = {name: p.grad.detach().clone() for name, p in trainer.G.named_parameters() if p.grad is not None}
        return gradients, float(trainer.path_length_penalty.pl_mean)
    finally:
        trainer.G.requires_grad_(False)


def test_compiled_phase_matches_eager_phase(tmp_path, monkeypatch):
    # Two trainers with the same seed start from the same weights and latent stream. At step 0
    # every noise_strength is 0, so the synthesis noise, which the two paths draw differently,
    # changes nothing. The compiled step's y is recorded and passed to the eager step.
    compiled_trainer = _trainer(tiny_config(tmp_path / "compiled", **FAST_BACKEND))
    eager_trainer = _trainer(tiny_config(tmp_path / "eager"))
    assert compiled_trainer.compiled_penalty is not None and eager_trainer.compiled_penalty is None

    drawn = []
    draw_noise = CompiledPathLengthPenalty._draw_noise

    def record_noise(self, ws):
        noise = draw_noise(self, ws)
        drawn.append(noise)
        return noise

    monkeypatch.setattr(CompiledPathLengthPenalty, "_draw_noise", record_noise)
    compiled_gradients, compiled_pl_mean = _path_length_gradients(compiled_trainer, None)
    eager_gradients, eager_pl_mean = _path_length_gradients(eager_trainer, drawn[0])

    assert compiled_trainer.compiled_penalty.compiled, compiled_trainer.compiled_penalty.fallback_reason
    assert compiled_pl_mean == pytest.approx(eager_pl_mean, rel=1e-6)
    assert compiled_pl_mean > 0
    # The mapping network's gradients arrive through ws, the synthesis network's directly.
    assert any(name.startswith("mapping.") for name in compiled_gradients)
    reaching = [name for name, gradient in eager_gradients.items() if gradient.abs().max() > 0]
    assert any(name.startswith("mapping.") for name in reaching) and any(name.startswith("synthesis.") for name in reaching)
    # The gradient of a noise_strength is the noise times the upstream gradient, so it differs
    # between the two noise draws. Every other gradient must agree.
    compared = [name for name in reaching if not name.endswith("noise_strength")]
    assert len(compared) > 10
    for name in compared:
        expected, actual = eager_gradients[name], compiled_gradients[name]
        scale = expected.abs().max()
        assert (actual - expected).abs().max() <= 1e-5 * scale + 1e-9, name


def test_compiled_run_trains_and_resumes(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="pathlength"):
        train(tiny_config(out, steps=2, **FAST_BACKEND), progress=False)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        penalties = [record["Loss/G/pl_penalty"] for record in records if "Loss/G/pl_penalty" in record]
        assert penalties and all(math.isfinite(value) for value in penalties)

        # The compiled object has no state of its own. pl_mean and the step count are the
        # penalty's buffers, so a resume continues from the checkpoint.
        result = train(tiny_config(out, steps=4, **FAST_BACKEND), resume=True, progress=False)
    assert result.step == 4
    state = load_training_state(result.checkpoint)["path_length_penalty"]
    assert int(state["step"]) == 4
    assert float(state["pl_mean"]) > 0
    assert not [record.message for record in caplog.records if "eagerly" in record.message]


def test_compile_without_pl_builds_nothing(tmp_path):
    trainer = _trainer(tiny_config(tmp_path / "run", pl_weight=0.0, **FAST_BACKEND))
    assert trainer.compiled_penalty is None


def test_compile_under_torchrun_runs_eagerly_with_warning(tmp_path, caplog):
    # The DDP wrappers would not all-reduce gradients that the compiled step adds outside their
    # forward, so a distributed trainer keeps the eager step and logs a warning.
    trainer = SimpleNamespace(config=tiny_config(tmp_path / "run", **FAST_BACKEND), context=SimpleNamespace(distributed=True))
    with caplog.at_level(logging.WARNING, logger="pathlength"):
        assert Trainer._compiled_penalty(trainer) is None
    assert any("compile is ignored under torchrun" in record.message for record in caplog.records)


def test_compile_rejects_mixed_precision(tmp_path):
    with pytest.raises(ConfigError, match=r"compile needs precision 'fp32', got precision 'bf16'.*--precision fp32"):
        tiny_config(tmp_path / "run", compile=True, precision="bf16")


def test_compile_rejects_non_boolean(tmp_path):
    with pytest.raises(ConfigError, match="compile must be true or false, got 'yes'"):
        tiny_config(tmp_path / "run", compile="yes")


def test_loss_rejects_accumulating_compiled_penalty(tmp_path):
    trainer = _trainer(tiny_config(tmp_path / "run"))
    accumulating = CompiledPathLengthPenalty(trainer.path_length_penalty, trainer.G.synthesis, backend=None)
    with pytest.raises(ValueError, match="accumulate=False"):
        StyleGAN2Loss(
            trainer.G,
            trainer.D,
            trainer.sampler,
            trainer.path_length_penalty,
            r1_gamma=0.1,
            r1_interval=2,
            style_mixing_prob=0.9,
            compiled_penalty=accumulating,
        )


def test_cli_compile_flag_sets_config(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--out", str(tmp_path / "run"), "--compile"])
    assert cli.train_config_from_arguments(args).compile is True
    args = parser.parse_args(["train", "--out", str(tmp_path / "run")])
    assert cli.train_config_from_arguments(args).compile is False


@pytest.mark.slow
def test_inductor_compiled_run_stays_compiled(tmp_path):
    trainer = _trainer(tiny_config(tmp_path / "run", compile=True))
    gradients, pl_mean = _path_length_gradients(trainer, None)
    assert trainer.compiled_penalty.compiled, trainer.compiled_penalty.fallback_reason
    assert pl_mean > 0 and all(torch.isfinite(gradient).all() for gradient in gradients.values())
