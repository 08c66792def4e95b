"""Tests of the compiled path length regularization step against the eager module."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from pathlength import NonFinitePathLengthError, PathLengthPenalty
from pathlength.compiled import CompiledPathLengthPenalty
from pathlength.models import Generator

# Float32 gradients of two differently ordered computations of the same double backward agree to
# about 1e-6 relative; the contract is 1e-5.
GRAD_RTOL = 1e-5
CONST_NOISE = {"noise_mode": "const"}
STEPS = 3
BATCH = 4


def small_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(z_dim=16, w_dim=16, img_resolution=8, channel_base=64, channel_max=16)


def latents(step: int) -> torch.Tensor:
    return torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(100 + step))


def run_eager(generator: Generator, plr: PathLengthPenalty, step: int):
    torch.manual_seed(step)
    ws = generator.mapping(latents(step))
    result = plr(generator.synthesis(ws, **CONST_NOISE), ws, step=step)
    result.loss.backward()
    return result


def run_compiled(generator: Generator, compiled: CompiledPathLengthPenalty, step: int):
    torch.manual_seed(step)
    return compiled(generator.mapping(latents(step)), step=step)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def eager_and_compiled():
    """Three steps of the eager module and of the aot_eager-compiled step from equal generators."""
    eager_generator = small_generator()
    compiled_generator = copy.deepcopy(eager_generator)
    eager_plr = PathLengthPenalty()
    compiled_plr = PathLengthPenalty()
    compiled = CompiledPathLengthPenalty(compiled_plr, compiled_generator.synthesis, backend="aot_eager", synthesis_kwargs=CONST_NOISE)

    eager_results, compiled_results = [], []
    for step in range(STEPS):
        eager_results.append(run_eager(eager_generator, eager_plr, step))
        compiled_results.append(run_compiled(compiled_generator, compiled, step))
    return {
        "eager_generator": eager_generator,
        "compiled_generator": compiled_generator,
        "eager_results": eager_results,
        "compiled_results": compiled_results,
        "compiled": compiled,
    }


def test_compiled_step_stays_compiled(eager_and_compiled):
    assert eager_and_compiled["compiled"].compiled, eager_and_compiled["compiled"].fallback_reason


def test_parameter_gradients_match_eager(eager_and_compiled):
    eager = dict(eager_and_compiled["eager_generator"].named_parameters())
    compiled = dict(eager_and_compiled["compiled_generator"].named_parameters())

    # Mapping parameters get their gradient through ws, synthesis parameters directly.
    for name, parameter in eager.items():
        assert compiled[name].grad is not None, f"{name} has no gradient"
        error = relative_error(compiled[name].grad, parameter.grad)
        assert error <= GRAD_RTOL, f"{name}: relative error {error:.2e} > {GRAD_RTOL}"


def test_pl_mean_matches_eager(eager_and_compiled):
    # Compiled code blurs and upsamples with shifted sums instead of convolutions, so the values
    # agree to float32 rounding rather than bit for bit.
    pairs = zip(eager_and_compiled["eager_results"], eager_and_compiled["compiled_results"])
    for step, (eager, compiled) in enumerate(pairs):
        torch.testing.assert_close(compiled.pl_mean, eager.pl_mean, rtol=1e-6, atol=0, msg=f"step {step}")


def test_result_fields_match_eager(eager_and_compiled):
    pairs = zip(eager_and_compiled["eager_results"], eager_and_compiled["compiled_results"])
    for eager, compiled in pairs:
        torch.testing.assert_close(compiled.lengths, eager.lengths, rtol=1e-6, atol=0)
        torch.testing.assert_close(compiled.penalty, eager.penalty, rtol=1e-5, atol=0)
        torch.testing.assert_close(compiled.loss, eager.loss.detach(), rtol=1e-5, atol=0)
        assert not compiled.loss.requires_grad
        assert compiled.skipped is False


def test_failing_backend_logs_one_warning(caplog):
    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("backend cannot lower this graph")

    generator = small_generator()
    reference = copy.deepcopy(generator)
    compiled = CompiledPathLengthPenalty(PathLengthPenalty(), generator.synthesis, backend=failing_backend, synthesis_kwargs=CONST_NOISE)
    reference_plr = PathLengthPenalty()

    with caplog.at_level(logging.WARNING, logger="pathlength.compiled"):
        for step in range(2):
            run_compiled(generator, compiled, step)
            run_eager(reference, reference_plr, step)

    warnings = [record for record in caplog.records if record.name == "pathlength.compiled"]
    assert len(warnings) == 1
    assert "backend cannot lower this graph" in warnings[0].getMessage()
    assert compiled.compiled is False
    assert "backend cannot lower this graph" in compiled.fallback_reason
    assert torch.equal(compiled.plr.pl_mean, reference_plr.pl_mean)
    error = relative_error(generator.synthesis.blocks[0].conv1.weight.grad, reference.synthesis.blocks[0].conv1.weight.grad)
    assert error <= GRAD_RTOL


def test_sync_set_falls_back_to_eager(caplog):
    generator = small_generator()
    compiled = CompiledPathLengthPenalty(PathLengthPenalty(sync=lambda value: value), generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)

    with caplog.at_level(logging.WARNING, logger="pathlength.compiled"):
        result = run_compiled(generator, compiled, 0)

    assert compiled.compiled is False
    assert "sync" in compiled.fallback_reason
    assert len([record for record in caplog.records if record.name == "pathlength.compiled"]) == 1
    assert result.pl_mean.item() > 0


def test_nonfinite_image_raises_and_keeps_state():
    generator = small_generator()
    with torch.no_grad():
        generator.synthesis.blocks[0].const.fill_(math.nan)
    plr = PathLengthPenalty()
    compiled = CompiledPathLengthPenalty(plr, generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)

    with pytest.raises(NonFinitePathLengthError, match="images contain NaN"):
        run_compiled(generator, compiled, 0)

    assert plr.pl_mean.item() == 0.0
    assert generator.synthesis.blocks[0].conv1.weight.grad is None


def test_nonfinite_skip_keeps_state():
    generator = small_generator()
    with torch.no_grad():
        generator.synthesis.blocks[0].const.fill_(math.nan)
    plr = PathLengthPenalty(on_nonfinite="skip")
    compiled = CompiledPathLengthPenalty(plr, generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)

    result = run_compiled(generator, compiled, 0)

    assert result.skipped is True
    assert "images contain NaN" in result.reason
    assert plr.pl_mean.item() == 0.0
    assert generator.synthesis.blocks[0].conv1.weight.grad is None
    assert generator.mapping.layers[0].weight.grad is None


def test_run_follows_interval_and_shrink():
    generator = small_generator()
    plr = PathLengthPenalty(interval=4, batch_shrink=2)
    compiled = CompiledPathLengthPenalty(plr, generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)
    ws = generator.mapping(torch.randn(8, 16)).detach()

    results = [compiled.run(ws) for _ in range(5)]

    assert [result is not None for result in results] == [True, False, False, False, True]
    assert results[0].lengths.shape == (4,)
    assert int(plr.step) == 5


def test_run_scales_loss_by_interval():
    generator = small_generator()
    plr = PathLengthPenalty(weight=2.0, interval=4)
    compiled = CompiledPathLengthPenalty(plr, generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)

    result = compiled.run(generator.mapping(torch.randn(4, 16)), step=0)

    torch.testing.assert_close(result.loss, result.penalty * 8.0, rtol=1e-6, atol=0)


def test_weight_zero_skips_without_gradients():
    generator = small_generator()
    plr = PathLengthPenalty(weight=0.0)
    compiled = CompiledPathLengthPenalty(plr, generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)

    result = compiled(generator.mapping(torch.randn(4, 16)))

    assert result.skipped is True
    assert generator.synthesis.blocks[0].conv1.weight.grad is None
    assert compiled.run(torch.randn(4, generator.num_ws, 16), step=0) is None


def test_noise_of_wrong_shape_raises():
    generator = small_generator()
    compiled = CompiledPathLengthPenalty(PathLengthPenalty(), generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)
    ws = generator.mapping(torch.randn(4, 16))

    with pytest.raises(ValueError, match="noise must have the shape of the images"):
        compiled(ws, torch.randn(4, 1, 4, 4))


def test_gradients_accumulate_like_backward():
    generator = small_generator()
    compiled = CompiledPathLengthPenalty(PathLengthPenalty(), generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)
    weight = generator.synthesis.blocks[1].conv0.weight
    ws = generator.mapping(torch.randn(4, 16)).detach()
    noise = torch.randn(4, 1, 8, 8) / 8

    compiled(ws, noise)
    first = weight.grad.clone()
    compiled.plr.pl_mean.zero_()
    compiled(ws, noise)

    torch.testing.assert_close(weight.grad, 2 * first, rtol=1e-6, atol=0)
    assert weight.grad.stride() == weight.stride()


def test_random_noise_mode_runs_compiled():
    generator = small_generator()
    plr = PathLengthPenalty()
    compiled = CompiledPathLengthPenalty(plr, generator.synthesis, backend="aot_eager", synthesis_kwargs={"noise_mode": "random"})

    result = compiled(generator.mapping(torch.randn(4, 16)))

    assert compiled.compiled, compiled.fallback_reason
    assert torch.isfinite(result.lengths).all()
    assert plr.pl_mean.item() > 0
    assert generator.synthesis.blocks[1].conv0.noise_strength.grad is not None


@pytest.mark.slow
def test_inductor_gradients_match_eager():
    eager_generator = small_generator()
    compiled_generator = copy.deepcopy(eager_generator)
    eager_plr = PathLengthPenalty()
    compiled = CompiledPathLengthPenalty(PathLengthPenalty(), compiled_generator.synthesis, backend="inductor", synthesis_kwargs=CONST_NOISE)

    for step in range(2):
        eager = run_eager(eager_generator, eager_plr, step)
        result = run_compiled(compiled_generator, compiled, step)

    assert compiled.compiled, compiled.fallback_reason
    assert result.pl_mean.item() == pytest.approx(eager.pl_mean.item(), rel=1e-6)
    compiled_parameters = dict(compiled_generator.named_parameters())
    for name, parameter in eager_generator.named_parameters():
        error = relative_error(compiled_parameters[name].grad, parameter.grad)
        assert error <= GRAD_RTOL, f"{name}: relative error {error:.2e} > {GRAD_RTOL}"


def test_deferred_loss_carries_same_gradients():
    generator = small_generator()
    deferred_generator = copy.deepcopy(generator)
    ws_latents = torch.randn(4, 16)
    noise = torch.randn(4, 1, 8, 8) / 8
    immediate = CompiledPathLengthPenalty(PathLengthPenalty(), generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE)
    deferred = CompiledPathLengthPenalty(PathLengthPenalty(), deferred_generator.synthesis, backend=None, synthesis_kwargs=CONST_NOISE, accumulate=False)

    expected = immediate(generator.mapping(ws_latents), noise)
    result = deferred(deferred_generator.mapping(ws_latents), noise)

    assert deferred_generator.synthesis.blocks[0].const.grad is None
    assert result.loss.requires_grad
    assert result.loss.item() == expected.loss.item()
    result.loss.backward()
    deferred_parameters = dict(deferred_generator.named_parameters())
    for name, parameter in generator.named_parameters():
        assert torch.equal(deferred_parameters[name].grad, parameter.grad), name


def test_recompile_limit_falls_back_once(caplog):
    generator = small_generator()
    compiled = CompiledPathLengthPenalty(PathLengthPenalty(), generator.synthesis, backend="aot_eager", synthesis_kwargs=CONST_NOISE)
    torch._dynamo.reset()

    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level(logging.WARNING, logger="pathlength.compiled"):
        compiled(generator.mapping(torch.randn(4, 16)))
        compiled_after_first_shape = compiled.compiled
        result = compiled(generator.mapping(torch.randn(6, 16)))
        compiled(generator.mapping(torch.randn(6, 16)))

    warnings = [record for record in caplog.records if record.name == "pathlength.compiled"]
    assert compiled_after_first_shape is True
    assert compiled.compiled is False
    assert "recompile limit" in compiled.fallback_reason.lower()
    assert len(warnings) == 1
    assert result.lengths.shape == (6,)


def test_first_call_logs_compile_time(caplog):
    generator = small_generator(seed=31)
    step = CompiledPathLengthPenalty(PathLengthPenalty(), generator.synthesis, backend="aot_eager", synthesis_kwargs=CONST_NOISE)
    ws = generator.mapping(torch.randn(2, generator.z_dim)).detach()

    with caplog.at_level(logging.INFO, logger="pathlength.compiled"):
        step(ws)
        step(ws)

    messages = [record.getMessage() for record in caplog.records if "Compiled the path length step" in record.getMessage()]
    assert len(messages) == 1
    assert "ws of shape (2, " in messages[0]
    assert "aot_eager backend" in messages[0]
