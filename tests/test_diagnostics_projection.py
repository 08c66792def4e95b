"""Projection: recovering the generator's own images, the schedules, and noise optimisation."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from diagnostics_toys import LinearWGenerator, small_stylegan2, single_thread  # noqa: F401 (fixture)
from pathlength.diagnostics import project, psnr
from pathlength.diagnostics.projection import learning_rate_factor, noise_regularization, w_noise_scale

pytestmark = pytest.mark.usefixtures("single_thread")


def _own_images(generator, count: int, seed: int) -> torch.Tensor:
    z = torch.randn(count, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.synthesis(generator.mapping(z), noise_mode="const")


def _own_images_conditional(generator, seed: int) -> torch.Tensor:
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    label = torch.nn.functional.one_hot(torch.tensor([3]), 10).float()
    with torch.no_grad():
        return generator.synthesis(generator.mapping(z, label), noise_mode="const")


def test_recovers_own_image_above_thirty_db():
    generator = small_stylegan2()
    targets = _own_images(generator, 2, seed=10)

    started = time.perf_counter()
    result = project(generator, targets, steps=300)
    elapsed = time.perf_counter() - started

    assert result.ws.shape == (2, generator.num_ws, generator.w_dim)
    assert result.images.shape == targets.shape
    assert torch.all(result.psnr > 30.0)
    # The pixel distance is the mean squared error, which PSNR is computed from.
    torch.testing.assert_close(result.psnr, 10 * torch.log10(4 / result.distance), rtol=1e-4, atol=0)
    # About 2 s on one CPU core; the bound leaves room for a loaded machine.
    assert elapsed < 30.0


def test_generator_left_untouched():
    generator = small_stylegan2()
    before = {name: tensor.clone() for name, tensor in generator.state_dict().items()}

    project(generator, _own_images(generator, 1, seed=11), steps=20, optimize_noise=True)

    for name, tensor in generator.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(parameter.grad is None for parameter in generator.parameters())


def test_optimized_noise_is_normalized():
    generator = small_stylegan2()
    result = project(generator, _own_images(generator, 2, seed=12), steps=20, optimize_noise=True)

    assert result.noise is not None
    assert len(result.noise) == 2
    for maps in result.noise:
        assert maps
        for name, buffer in maps.items():
            assert name.endswith("noise_const")
            assert abs(float(buffer.mean())) < 1e-5
            assert float(buffer.std()) == pytest.approx(1.0, abs=1e-5)


def test_optimize_noise_without_buffers_raises():
    generator = LinearWGenerator()
    targets = _own_images(generator, 1, seed=0).to(torch.float64)

    with pytest.raises(ValueError, match=r"optimize_noise=True needs noise buffers named '\*noise_const'"):
        project(generator, targets, steps=2, optimize_noise=True)


def test_single_step_starts_at_tracked_w_avg():
    generator = small_stylegan2()
    generator.mapping.w_avg.copy_(torch.linspace(-1, 1, generator.w_dim))

    # The learning rate ramps up from 0, so the first step leaves w at its start.
    result = project(generator, _own_images(generator, 1, seed=13), steps=1)

    expected = generator.mapping.w_avg.expand(1, generator.num_ws, -1)
    torch.testing.assert_close(result.ws, expected, rtol=0, atol=0)


def test_untracked_generator_starts_at_sample_mean():
    generator = small_stylegan2()
    assert torch.count_nonzero(generator.mapping.w_avg) == 0

    result = project(generator, _own_images(generator, 1, seed=14), steps=1, num_w_samples=4000)
    with torch.no_grad():
        samples = generator.mapping(torch.randn(4000, generator.z_dim, generator=torch.Generator().manual_seed(99)))[:, 0]

    # Two means of 4000 samples differ by a few standard errors of the mean at most.
    tolerance = 5 * float(samples.std(dim=0).max()) / math.sqrt(4000)
    torch.testing.assert_close(result.ws[0, 0], samples.mean(dim=0), rtol=0, atol=tolerance)


def test_w_plus_optimizes_each_layer():
    generator = small_stylegan2()
    result = project(generator, _own_images(generator, 1, seed=15), steps=40, w_plus=True)

    assert result.ws.shape == (1, generator.num_ws, generator.w_dim)
    assert not torch.allclose(result.ws[0, 0], result.ws[0, 1])


def test_wrong_target_shape_raises():
    generator = small_stylegan2()
    with pytest.raises(ValueError, match=r"target_images must be float images \[B, 1, 8, 8\].*got torch.float32 \[1, 3, 8, 8\]"):
        project(generator, torch.zeros(1, 3, 8, 8), steps=2)


def test_single_image_without_batch_dimension():
    generator = small_stylegan2()
    result = project(generator, _own_images(generator, 1, seed=16)[0], steps=5)

    assert result.psnr.shape == (1,)
    assert len(result.losses) == 5
    assert json.loads(json.dumps(result.to_dict()))["settings"]["steps"] == 5


def test_psnr_known_values():
    targets = torch.zeros(2, 1, 4, 4)
    images = torch.stack([torch.full((1, 4, 4), 0.02), torch.zeros(1, 4, 4)])

    values = psnr(images, targets)

    # MSE 4e-4 with a peak-to-peak range of 2: 10 * log10(4 / 4e-4) = 40 dB.
    assert float(values[0]) == pytest.approx(40.0, abs=1e-4)
    assert math.isinf(float(values[1]))


def test_learning_rate_ramps_up_then_down():
    factors = [learning_rate_factor(step / 100) for step in range(101)]

    assert factors[0] == 0.0
    assert factors[2] == pytest.approx(0.4)
    assert factors[50] == 1.0
    assert factors[100] == pytest.approx(0.0, abs=1e-12)
    assert all(later <= earlier for earlier, later in zip(factors[75:], factors[76:]))


def test_w_noise_falls_to_zero():
    scales = [w_noise_scale(step / 100, w_std=2.0) for step in range(101)]

    assert scales[0] == pytest.approx(0.1)
    assert all(later <= earlier for earlier, later in zip(scales, scales[1:]))
    assert scales[75] == 0.0


def test_noise_regularization_penalizes_smooth_noise():
    rng = torch.Generator().manual_seed(0)
    white = torch.randn(32, 32, generator=rng)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 35, 35, generator=rng), 4, stride=1)[0, 0]
    smooth = (smooth - smooth.mean()) / smooth.std()

    assert float(noise_regularization([smooth])) > 100 * float(noise_regularization([white]))


def test_conditional_generator_takes_one_label():
    generator = small_stylegan2(c_dim=10)
    label = torch.nn.functional.one_hot(torch.tensor(3), 10).float()

    result = project(generator, _own_images_conditional(generator, seed=17), steps=5, labels=label)

    assert result.ws.shape == (1, generator.num_ws, generator.w_dim)
    with pytest.raises(ValueError, match=r"labels must be one label \[c_dim\] with c_dim=10.*got shape \[2, 10\]"):
        project(generator, _own_images_conditional(generator, seed=17), steps=2, labels=label.repeat(2, 1))
