"""Exact Jacobian spectrum: singular values on toy generators and the path length estimator against ||J||_F."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from diagnostics_toys import ConstantGenerator, IsometricGenerator, LinearWGenerator, small_stylegan2, single_thread  # noqa: F401 (fixture)
from pathlength.diagnostics import JacobianTooLargeError, jacobian_spectrum

pytestmark = pytest.mark.usefixtures("single_thread")


def _latents(generator, count: int = 2, seed: int = 0) -> torch.Tensor:
    z = torch.randn(count, generator.z_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        return generator.mapping(z)


def test_linear_singular_values_equal_matrix():
    generator = LinearWGenerator()
    spectrum = jacobian_spectrum(generator.synthesis, _latents(generator), noise_draws=8)

    expected = generator.singular_values()
    for index in range(2):
        torch.testing.assert_close(spectrum.singular_values[index], expected, rtol=1e-10, atol=1e-12)
    assert spectrum.condition_number[0] == pytest.approx(float(expected[0] / expected[-1]), rel=1e-10)


def test_isometric_condition_number_is_one():
    generator = IsometricGenerator(scale=0.5)
    spectrum = jacobian_spectrum(generator.synthesis, _latents(generator), noise_draws=8)

    torch.testing.assert_close(spectrum.singular_values, torch.full_like(spectrum.singular_values, 0.5), rtol=1e-10, atol=0)
    torch.testing.assert_close(spectrum.condition_number, torch.ones(2, dtype=torch.float64), rtol=1e-10, atol=0)


def test_frobenius_norm_matches_estimator():
    generator = LinearWGenerator()
    spectrum = jacobian_spectrum(generator.synthesis, _latents(generator), noise_draws=512)

    frobenius_squared = float(generator.A.detach().square().sum())
    expected = frobenius_squared / (generator.img_resolution**2 * generator.num_ws)
    assert spectrum.frobenius_norm[0] ** 2 == pytest.approx(frobenius_squared, rel=1e-10)
    assert spectrum.expected_squared_length[0] == pytest.approx(expected, rel=1e-10)
    # The estimator is a mean of 512 draws, so it lies within a few standard errors of the exact value.
    deviation = (spectrum.estimated_squared_length - spectrum.expected_squared_length).abs()
    assert torch.all(deviation < 4 * spectrum.standard_error)
    assert torch.all(spectrum.relative_error < 0.1)


def test_non_square_images_scale_by_height_times_width():
    matrix = torch.randn(3 * 4 * 6, 2 * 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def synthesis(ws: torch.Tensor) -> torch.Tensor:
        return (ws.reshape(ws.shape[0], -1) @ matrix.T).reshape(-1, 3, 4, 6)

    ws = torch.randn(1, 2, 5, dtype=torch.float64)
    spectrum = jacobian_spectrum(synthesis, ws, noise_draws=2048)

    expected = float(matrix.square().sum()) / (4 * 6 * 2)
    assert spectrum.image_shape == (3, 4, 6)
    assert spectrum.expected_squared_length[0] == pytest.approx(expected, rel=1e-10)
    assert abs(float(spectrum.estimated_squared_length[0]) - expected) < 4 * float(spectrum.standard_error[0])


def test_stylegan2_estimator_agrees_with_exact():
    generator = small_stylegan2()
    ws = generator.mapping(torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0))).detach()
    spectrum = jacobian_spectrum(lambda latents: generator.synthesis(latents, noise_mode="const"), ws, noise_draws=256)

    assert spectrum.singular_values.shape == (2, 64)
    assert torch.all(spectrum.condition_number >= 1)
    deviation = (spectrum.estimated_squared_length - spectrum.expected_squared_length).abs()
    assert torch.all(deviation < 5 * spectrum.standard_error)


def test_crop_differentiates_window_only():
    generator = LinearWGenerator(img_channels=1)
    spectrum = jacobian_spectrum(generator.synthesis, _latents(generator, 1), crop=(1, 2, 2, 2), noise_draws=8)

    rows = torch.arange(16).reshape(4, 4)[1:3, 2:4].reshape(-1)
    expected = torch.linalg.svdvals(generator.A.detach()[rows])
    assert spectrum.image_shape == (1, 2, 2)
    torch.testing.assert_close(spectrum.singular_values[0], expected, rtol=1e-10, atol=1e-12)


def test_too_large_jacobian_names_size_and_crop():
    generator = LinearWGenerator()
    ws = _latents(generator, 1)

    with pytest.raises(ValueError) as caught:
        jacobian_spectrum(generator.synthesis, ws, max_elements=500)
    message = str(caught.value)

    assert isinstance(caught.value, JacobianTooLargeError)
    assert "576 elements" in message  # 2*4*4 outputs times 3*6 inputs
    assert "MiB at 8 bytes each" in message
    side = int(re.search(r"crop=\(top, left, (\d+), \1\)", message).group(1))
    assert side == 3  # floor(sqrt(500 / (2 * 18)))
    spectrum = jacobian_spectrum(generator.synthesis, ws, crop=(0, 0, side, side), max_elements=500, noise_draws=8)
    assert spectrum.image_shape == (2, side, side)


def test_constant_generator_zero_jacobian():
    generator = ConstantGenerator()
    spectrum = jacobian_spectrum(generator.synthesis, _latents(generator, 1), noise_draws=8)

    assert torch.count_nonzero(spectrum.singular_values) == 0
    assert math.isinf(float(spectrum.condition_number[0]))
    assert float(spectrum.estimated_squared_length[0]) == 0.0
    assert float(spectrum.relative_error[0]) == 0.0
    assert json.loads(json.dumps(spectrum.to_dict()))["condition_number"] == [None]


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        ((0, 0, 5, 1), "does not fit in the 4x4 image"),
        ((0, 0, 0, 2), "does not fit"),
        ((0, 0, 2), "crop must be four integers"),
    ],
)
def test_invalid_crop_raises(crop, message):
    generator = LinearWGenerator()
    with pytest.raises(ValueError, match=message):
        jacobian_spectrum(generator.synthesis, _latents(generator, 1), crop=crop)


def test_latents_of_wrong_rank_raise():
    generator = LinearWGenerator()
    with pytest.raises(ValueError, match=r"ws must have shape \[K, D\] \(W\) or \[K, L, D\] \(W\+\), got shape \(6,\)"):
        jacobian_spectrum(generator.synthesis, torch.zeros(6, dtype=torch.float64))
