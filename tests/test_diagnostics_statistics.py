"""Path-length statistics: the training statistic's distribution against closed forms on toy generators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diagnostics_toys import ConstantGenerator, IsometricGenerator, LinearWGenerator, small_stylegan2, single_thread  # noqa: F401 (fixture)
from pathlength import path_lengths
from pathlength.diagnostics import path_length_statistics, summarize_lengths
from pathlength.diagnostics.protocol import sample_generator, scaled_noise

pytestmark = pytest.mark.usefixtures("single_thread")


def _pixels_times_layers(generator) -> int:
    return generator.img_resolution**2 * (generator.num_ws or 1)


def test_linear_mean_square_matches_frobenius():
    generator = LinearWGenerator()
    stats = path_length_statistics(generator, num_latents=1024, noise_draws=4)

    singular = generator.singular_values()
    expected = float(singular.square().sum()) / _pixels_times_layers(generator)
    # 4096 draws of a quadratic form with relative std below 0.4 give a standard error under 0.7%.
    assert stats.mean_square == pytest.approx(expected, rel=0.03)


def test_linear_squared_length_cv_closed_form():
    generator = LinearWGenerator()
    stats = path_length_statistics(generator, num_latents=1024, noise_draws=4)

    singular = generator.singular_values().numpy()
    expected_cv = math.sqrt(2 * np.sum(singular**4)) / np.sum(singular**2)
    squares = stats.lengths.double().numpy().reshape(-1) ** 2
    measured_cv = squares.std() / squares.mean()
    # Var(sum s_i^2 g_i^2) = 2 sum s_i^4 for independent standard normal g_i.
    assert measured_cv == pytest.approx(expected_cv, rel=0.06)


def test_isometric_length_cv_matches_chi():
    generator = IsometricGenerator(scale=0.5)
    stats = path_length_statistics(generator, num_latents=1024, noise_draws=4)

    # With k equal singular values s, length = s / sqrt(H*W*L) * chi_k.
    k = generator.num_ws * generator.w_dim
    chi_mean = math.sqrt(2) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))
    expected_cv = math.sqrt(k - chi_mean**2) / chi_mean
    expected_mean = 0.5 / math.sqrt(_pixels_times_layers(generator)) * chi_mean

    assert stats.cv == pytest.approx(expected_cv, rel=0.06)
    assert stats.mean == pytest.approx(expected_mean, rel=0.01)


def test_plain_w_generator_drops_layer_count():
    generator = LinearWGenerator(num_ws=None, w_dim=10)
    stats = path_length_statistics(generator, num_latents=512, noise_draws=4)

    expected = float(generator.singular_values().square().sum()) / generator.img_resolution**2
    assert stats.mean_square == pytest.approx(expected, rel=0.04)


def test_constant_generator_zero_lengths():
    stats = path_length_statistics(ConstantGenerator(), num_latents=64, noise_draws=2)
    summary = stats.to_dict()

    assert torch.count_nonzero(stats.lengths) == 0
    assert stats.mean == 0.0
    assert stats.cv == 0.0
    assert all(value == 0.0 for value in summary["quantiles"].values())
    assert sum(summary["histogram"]["counts"]) == 128
    assert all(math.isfinite(edge) for edge in summary["histogram"]["edges"])


def test_lengths_equal_training_path_lengths():
    generator = small_stylegan2()
    stats = path_length_statistics(generator, num_latents=8, noise_draws=3, seed=5)

    z = torch.randn(8, generator.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ws = generator.mapping(z[:1])
    ws = ws.repeat_interleave(3, dim=0).requires_grad_(True)
    images = generator.synthesis(ws, noise_mode="const")
    noise = scaled_noise((3, *images.shape[1:]), sample_generator(5, 0))
    direct = path_lengths(images, ws, noise, create_graph=False)

    torch.testing.assert_close(stats.lengths[0], direct.detach(), rtol=1e-5, atol=0)


def test_batch_size_does_not_change_lengths():
    generator = small_stylegan2()
    small_batches = path_length_statistics(generator, num_latents=20, noise_draws=2, batch_size=3)
    one_batch = path_length_statistics(generator, num_latents=20, noise_draws=2, batch_size=64)

    # Batched float32 kernels may round differently for different batch sizes.
    torch.testing.assert_close(small_batches.lengths, one_batch.lengths, rtol=1e-4, atol=1e-7)


def test_histogram_and_quantiles_consistent():
    stats = path_length_statistics(small_stylegan2(), num_latents=32, noise_draws=2, bins=10)
    values = stats.lengths.double().numpy().reshape(-1)

    assert sum(stats.histogram_counts) == 64
    assert len(stats.histogram_edges) == 11
    assert list(stats.quantiles) == [1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0]
    assert stats.quantiles[50.0] == pytest.approx(float(np.median(values)), rel=1e-12)
    assert np.all(np.diff(list(stats.quantiles.values())) >= 0)


def test_to_dict_is_json_serialisable():
    stats = path_length_statistics(small_stylegan2(), num_latents=16, noise_draws=2)
    text = json.dumps(stats.to_dict(include_lengths=True))
    decoded = json.loads(text)

    assert decoded["num_lengths"] == 32
    assert decoded["mean"] == pytest.approx(stats.mean)
    assert decoded["settings"]["noise_mode"] == "const"


def test_generator_parameters_get_no_gradient():
    generator = small_stylegan2()
    path_length_statistics(generator, num_latents=8, noise_draws=2)

    assert all(parameter.grad is None for parameter in generator.parameters())


def test_runs_inside_no_grad_block():
    generator = LinearWGenerator()
    with torch.no_grad():
        stats = path_length_statistics(generator, num_latents=16, noise_draws=2)

    assert stats.mean > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_latents": 0}, "num_latents must be a positive integer, got 0"),
        ({"noise_draws": 1.5}, "noise_draws must be a positive integer"),
        ({"quantiles": (50.0, 150.0)}, "quantiles must be percents in \\[0, 100\\], got 150.0"),
        ({"noise_mode": "bogus"}, "noise_mode must be one of"),
    ],
)
def test_invalid_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        path_length_statistics(LinearWGenerator(), **arguments)


def test_summary_rejects_non_finite_lengths():
    with pytest.raises(ValueError, match="1 of 3 path lengths are NaN or inf"):
        summarize_lengths(torch.tensor([1.0, float("nan"), 2.0]))


def test_identical_rows_zero_between_spread():
    row = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    stats = summarize_lengths(row.repeat(5, 1))

    # The row has mean 3 and squared deviations 4 + 1 + 0 + 9 = 14 over 3 degrees of freedom.
    assert stats.cv_within == pytest.approx(math.sqrt(14 / 3) / 3, rel=1e-12)
    assert stats.cv_between == pytest.approx(0.0, abs=1e-12)


def test_constant_rows_zero_within_spread():
    means = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    stats = summarize_lengths(means.unsqueeze(1).repeat(1, 3))

    # The row means 2, 4, 6 have mean 4 and sample variance (4 + 0 + 4) / 2 = 4.
    assert stats.cv_within == pytest.approx(0.0, abs=1e-12)
    assert stats.cv_between == pytest.approx(2.0 / 4.0, rel=1e-12)


def test_between_spread_removes_draw_noise():
    rng = np.random.default_rng(0)
    draws = rng.uniform(0.5, 1.5, size=(2000, 4))
    stats = summarize_lengths(torch.from_numpy(draws))
    uncorrected = draws.mean(axis=1).std(ddof=1) / draws.mean()

    # Equal scales mean no spread across w. The uncorrected spread of the row means is that of a
    # mean of 4 uniform draws, (1 / sqrt(12)) / 2 = 0.144, while the corrected estimate stays within
    # the sampling error of 2000 latents (below 0.035 for seeds 0 to 9).
    assert uncorrected > 0.12
    assert stats.cv_between < 0.06
    assert stats.cv_within == pytest.approx(1 / math.sqrt(12), rel=0.03)


def test_between_spread_recovers_scales():
    rng = np.random.default_rng(1)
    scales = rng.uniform(0.5, 1.5, size=(2000, 1))
    draws = rng.uniform(0.5, 1.5, size=(2000, 4))
    stats = summarize_lengths(torch.from_numpy(scales * draws))

    # With E[u] = 1 the CV across w is that of the scales, 1 / sqrt(12), and the CV across y is
    # sqrt(E[scale^2] Var(u)) = sqrt((1 + 1/12) / 12); 2000 latents give about 2% sampling error.
    assert stats.cv_between == pytest.approx(1 / math.sqrt(12), rel=0.05)
    assert stats.cv_within == pytest.approx(math.sqrt((1 + 1 / 12) / 12), rel=0.04)
    assert stats.cv**2 == pytest.approx(stats.cv_within**2 + stats.cv_between**2, abs=1e-3)


def test_one_draw_between_is_plain_spread():
    lengths = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    stats = summarize_lengths(lengths)
    summary = json.loads(json.dumps(stats.to_dict()))

    assert stats.cv_within is None
    assert stats.cv_between == pytest.approx(math.sqrt(14 / 3) / 3, rel=1e-12)
    assert summary["cv_within"] is None
    assert summary["cv_between"] == pytest.approx(stats.cv_between, rel=1e-12)


def test_zero_lengths_zero_split_spread():
    stats = path_length_statistics(ConstantGenerator(), num_latents=16, noise_draws=2)

    assert stats.cv_within == 0.0
    assert stats.cv_between == 0.0


def test_isometric_length_spread_is_within():
    generator = IsometricGenerator(scale=0.5)
    stats = path_length_statistics(generator, num_latents=512, noise_draws=4)

    # The Jacobian is the same at every w, so the spread across w is 0 up to the sampling error of
    # 512 latents (0.019 to 0.026 for seeds 0 to 4, against a pooled CV of 0.17).
    assert stats.cv_between < 0.05
    assert stats.cv_within == pytest.approx(stats.cv, rel=0.05)


def test_statistics_docstring_says_not_ppl():
    doc = " ".join(path_length_statistics.__doc__.split())

    assert "training statistic, not perceptual path length" in doc
    assert "not comparable" in doc
