"""Perceptual path length: sampling, spaces, filtering, gradients and reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diagnostics_toys import ConstantGenerator, LinearWGenerator, small_stylegan2, single_thread  # noqa: F401 (fixture)
from pathlength.diagnostics import (
    DigitsClassifier,
    FeatureDistance,
    PixelDistance,
    lerp,
    path_length_statistics,
    perceptual_path_length,
    slerp,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _randn(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_linear_generator_end_and_full_agree_in_w():
    generator = LinearWGenerator()
    end = perceptual_path_length(generator, 256, space="w", sampling="end")
    full = perceptual_path_length(generator, 256, space="w", sampling="full")

    # Images linear in w change by A (w_1 - w_0) epsilon wherever t lies on the line.
    torch.testing.assert_close(end.distances, full.distances, rtol=1e-8, atol=0)
    assert float(end) == pytest.approx(float(full), rel=1e-8)


def test_full_sampling_moves_along_path_in_z():
    generator = LinearWGenerator()
    end = perceptual_path_length(generator, 256, space="z", sampling="end")
    full = perceptual_path_length(generator, 256, space="z", sampling="full")

    # The mapping network is nonlinear in z, so each sample's speed depends on where t lies.
    assert not torch.allclose(end.distances, full.distances, rtol=0.01)


@pytest.mark.parametrize("space", ["z", "w"])
@pytest.mark.parametrize("sampling", ["end", "full"])
def test_constant_generator_gives_exactly_zero(space, sampling):
    result = perceptual_path_length(ConstantGenerator(), 64, space=space, sampling=sampling)

    assert float(result) == 0.0
    assert torch.count_nonzero(result.distances) == 0
    assert result.num_kept == 64


def test_distances_divided_by_epsilon_squared():
    generator = LinearWGenerator()
    start, end = _randn(32, generator.w_dim, seed=1), _randn(32, generator.w_dim, seed=2)
    step = (end - start).unsqueeze(1).repeat(1, generator.num_ws, 1).reshape(32, -1)
    expected = (step @ generator.A.detach().T).square().mean(dim=1)

    for epsilon in (1e-4, 1e-2):
        result = perceptual_path_length(
            generator, 32, space="w", epsilon=epsilon, latents=(start, end), lower_percentile=None, upper_percentile=None
        )
        # Pixel distance of an epsilon step is epsilon^2 * mean((A step)^2); dividing removes epsilon.
        torch.testing.assert_close(result.distances, expected, rtol=1e-7, atol=0)


def test_percentile_filtering_matches_numpy():
    result = perceptual_path_length(small_stylegan2(), 200, space="w", sampling="full")
    values = result.distances.numpy()
    lower = np.percentile(values, 1, method="lower")
    upper = np.percentile(values, 99, method="higher")
    kept = (values >= lower) & (values <= upper)

    assert result.lower_bound == lower
    assert result.upper_bound == upper
    assert np.array_equal(result.kept.numpy(), kept)
    assert result.num_kept < 200
    assert float(result) == pytest.approx(values[kept].mean(), rel=1e-12)


def test_percentile_filtering_can_be_disabled():
    result = perceptual_path_length(small_stylegan2(), 100, lower_percentile=None, upper_percentile=None)

    assert result.num_kept == 100
    assert result.lower_bound is None
    assert float(result) == pytest.approx(float(result.distances.mean()), rel=1e-12)


def test_z_space_slerps_before_mapping():
    generator = LinearWGenerator()
    start, end = _randn(16, generator.z_dim, seed=3), _randn(16, generator.z_dim, seed=4)
    epsilon = 1e-3
    result = perceptual_path_length(
        generator, 16, space="z", epsilon=epsilon, latents=(start, end), lower_percentile=None, upper_percentile=None
    )

    def path_distance(path_next: torch.Tensor) -> torch.Tensor:
        images = generator.synthesis(generator.mapping(start / start.norm(dim=1, keepdim=True)))
        images_next = generator.synthesis(generator.mapping(path_next))
        return PixelDistance()(images, images_next) / epsilon**2

    spherical = path_distance(slerp(start, end, torch.full((16,), epsilon, dtype=torch.float64)))
    linear = path_distance(lerp(start, end, torch.full((16,), epsilon, dtype=torch.float64)))

    torch.testing.assert_close(result.distances, spherical.detach(), rtol=1e-6, atol=0)
    # A straight line between two random Gaussians moves more slowly in angle than the great circle.
    assert not torch.allclose(result.distances, linear.detach(), rtol=0.1)


def test_w_space_lerps_after_mapping():
    generator = small_stylegan2()
    z_start, z_end = _randn(8, 16, seed=5, dtype=torch.float32), _randn(8, 16, seed=6, dtype=torch.float32)
    with torch.no_grad():
        w_start, w_end = generator.mapping(z_start), generator.mapping(z_end)
        t = torch.full((8,), 1e-4)
        images = generator.synthesis(torch.cat([w_start, lerp(w_start, w_end, t)]), noise_mode="const")
    expected = PixelDistance()(*images.chunk(2)).double() / 1e-8

    result = perceptual_path_length(
        generator, 8, space="w", latents=(w_start, w_end), lower_percentile=None, upper_percentile=None
    )

    torch.testing.assert_close(result.distances, expected, rtol=1e-6, atol=0)


def test_w_space_accepts_single_w_broadcast():
    generator = small_stylegan2()
    with torch.no_grad():
        w_plus = generator.mapping(_randn(4, 16, seed=7, dtype=torch.float32)), generator.mapping(_randn(4, 16, seed=8, dtype=torch.float32))
    single = (w_plus[0][:, 0], w_plus[1][:, 0])

    broadcast = perceptual_path_length(generator, 4, latents=single, lower_percentile=None, upper_percentile=None)
    layered = perceptual_path_length(generator, 4, latents=w_plus, lower_percentile=None, upper_percentile=None)

    torch.testing.assert_close(broadcast.distances, layered.distances, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("space", "shape", "message"),
    [
        ("z", (4, 6), r"space='z' must have shape \[4, 8\] \(z_dim=8\), got \[4, 6\]. They match the W latents"),
        ("z", (4, 3, 6), r"space='z' must have shape \[4, 8\].*They match the W latents"),
        ("w", (4, 8), r"space='w' must have shape \[4, 6\] or \[4, 3, 6\] \(w_dim=6\), got \[4, 8\]. They match the Z latents"),
        ("w", (4, 5), r"space='w' must have shape .* got \[4, 5\]\.$"),
    ],
)
def test_wrong_space_latents_raise(space, shape, message):
    generator = LinearWGenerator(z_dim=8, w_dim=6, num_ws=3)
    latents = (_randn(*shape, seed=0), _randn(*shape, seed=1))

    with pytest.raises(ValueError, match=message):
        perceptual_path_length(generator, 4, space=space, latents=latents)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"space": "x"}, "space must be 'z' .* or 'w' .*, got 'x'"),
        ({"sampling": "middle"}, "sampling must be 'end' .* or 'full' .*, got 'middle'"),
        ({"epsilon": 0.0}, r"epsilon must be a number in \(0, 1\)"),
        ({"lower_percentile": 99, "upper_percentile": 1}, "lower_percentile must be below upper_percentile"),
        ({"upper_percentile": 101}, r"upper_percentile must be in \[0, 100\] or None, got 101"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ],
)
def test_invalid_settings_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        perceptual_path_length(LinearWGenerator(), 8, **arguments)


def test_runs_without_gradients_by_default():
    generator = small_stylegan2()
    result = perceptual_path_length(generator, 16)

    assert not result.value.requires_grad
    assert not result.distances.requires_grad
    assert all(parameter.grad is None for parameter in generator.parameters())


def test_requires_grad_keeps_graph():
    generator = small_stylegan2()
    with torch.no_grad():
        result = perceptual_path_length(generator, 16, requires_grad=True)
    result.value.backward()

    gradients = [parameter.grad for parameter in generator.synthesis.parameters() if parameter.grad is not None]
    assert result.value.requires_grad
    assert gradients
    assert any(torch.count_nonzero(gradient) > 0 for gradient in gradients)


@pytest.mark.parametrize("space", ["z", "w"])
@pytest.mark.parametrize("distance_name", ["pixel", "feature"])
def test_identical_endpoints_zero_with_finite_gradients(space, distance_name):
    generator = small_stylegan2()
    distance = PixelDistance() if distance_name == "pixel" else FeatureDistance(DigitsClassifier())
    z = _randn(8, 16, seed=9, dtype=torch.float32)
    with torch.no_grad():
        latent = z if space == "z" else generator.mapping(z)

    result = perceptual_path_length(
        generator, 8, space=space, sampling="full", distance=distance, latents=(latent, latent.clone()), requires_grad=True
    )
    result.value.backward()

    assert float(result) == 0.0
    for name, parameter in generator.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name


def test_constant_generator_gradients_finite():
    generator = ConstantGenerator()
    result = perceptual_path_length(generator, 16, space="z", requires_grad=True)
    result.value.backward()

    assert float(result) == 0.0
    assert torch.isfinite(generator.image.grad).all()
    assert torch.count_nonzero(generator.image.grad) == 0


def test_batch_size_does_not_change_value():
    toy = LinearWGenerator()
    toy_small = perceptual_path_length(toy, 50, space="z", sampling="full", batch_size=7)
    toy_large = perceptual_path_length(toy, 50, space="z", sampling="full", batch_size=64)
    generator = small_stylegan2()
    small = perceptual_path_length(generator, 50, space="z", sampling="full", batch_size=7)
    large = perceptual_path_length(generator, 50, space="z", sampling="full", batch_size=64)

    torch.testing.assert_close(toy_small.distances, toy_large.distances, rtol=1e-9, atol=0)
    # float32 kernels round differently per batch size, and dividing by epsilon^2 magnifies that.
    assert float(small) == pytest.approx(float(large), rel=1e-3)


def test_seed_fixes_value():
    generator = small_stylegan2()
    first = perceptual_path_length(generator, 32, seed=3)
    second = perceptual_path_length(generator, 32, seed=3)
    other = perceptual_path_length(generator, 32, seed=4)

    assert float(first) == float(second)
    assert float(first) != float(other)


def test_conditional_generator_takes_labels():
    generator = small_stylegan2(c_dim=10)
    labels = torch.nn.functional.one_hot(torch.arange(8) % 10, 10).float()

    drawn = perceptual_path_length(generator, 8)
    given = perceptual_path_length(generator, 8, labels=labels)

    assert float(drawn) > 0
    assert float(given) > 0
    with pytest.raises(ValueError, match=r"labels must have shape \[8, 10\]"):
        perceptual_path_length(generator, 8, labels=labels[:, :5])


def test_to_dict_is_json_serialisable():
    result = perceptual_path_length(small_stylegan2(), 16, space="z", sampling="full")
    decoded = json.loads(json.dumps(result.to_dict(include_distances=True)))

    assert decoded["ppl"] == pytest.approx(float(result))
    assert decoded["settings"]["space"] == "z"
    assert decoded["settings"]["distance"] == "pixel"
    assert len(decoded["distances"]) == 16


def test_docs_say_ppl_and_statistic_not_comparable():
    ppl_doc = " ".join(perceptual_path_length.__doc__.split())
    statistic_doc = " ".join(path_length_statistics.__doc__.split())

    assert "not the regularizer's training statistic" in ppl_doc
    assert "the two numbers are not comparable" in ppl_doc
    assert "The two numbers are not comparable" in statistic_doc


def test_slerp_keeps_unit_norm_and_constant_speed():
    a, b = _randn(5, 7, seed=10), _randn(5, 7, seed=11)
    positions = [torch.full((5,), value, dtype=torch.float64) for value in (0.0, 0.25, 0.5, 1.0)]
    points = [slerp(a, b, t) for t in positions]
    angle = torch.acos((points[0] * points[-1]).sum(dim=1))

    torch.testing.assert_close(points[0], a / a.norm(dim=1, keepdim=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(points[-1], b / b.norm(dim=1, keepdim=True), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(points[2].norm(dim=1), torch.ones(5, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.acos((points[0] * points[1]).sum(dim=1)), angle / 4, rtol=1e-8, atol=0)


def test_slerp_equal_endpoints_exact():
    a = _randn(3, 4, seed=12).requires_grad_(True)
    point = slerp(a, a, torch.full((3,), 0.3, dtype=torch.float64))
    (gradient,) = torch.autograd.grad(point.sum(), a)

    assert torch.equal(point, a / a.norm(dim=1, keepdim=True))
    assert torch.isfinite(gradient).all()


def test_slerp_rejects_opposite_latents():
    a = _randn(2, 4, seed=13)
    with pytest.raises(ValueError, match="opposite latents is ambiguous"):
        slerp(a, -a, torch.zeros(2, dtype=torch.float64))
