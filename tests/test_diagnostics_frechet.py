"""Frechet distance: closed forms on Gaussian statistics, and real against generated digits."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics_toys import small_stylegan2, single_thread  # noqa: F401 (fixture)
from pathlength.data import load_dataset
from pathlength.diagnostics import (
    classifier_frechet_distance,
    frechet_distance,
    frechet_distance_from_statistics,
    load_digits_classifier,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class ReplayGenerator(nn.Module):
    """A 'generator' that returns real images, picked by its latent, to give a near-zero distance."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.z_dim = self.w_dim = 4
        self.num_ws = None
        self.img_resolution = images.shape[-1]
        self.img_channels = images.shape[1]
        self.register_buffer("images", images)

    def mapping(self, z, c=None):
        return z

    def synthesis(self, ws, noise_mode="random"):
        indices = (ws[:, 0].abs() * 1e6).long() % self.images.shape[0]
        return self.images[indices]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return load_digits_classifier(folder=tmp_path_factory.mktemp("classifier-cache"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 16)


def _features(count: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("method", ["scipy", "eigh"])
def test_identical_sets_give_zero(method):
    features = _features(400, 6, seed=0)

    assert frechet_distance(features, features.clone(), method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["scipy", "eigh"])
def test_shifted_set_gives_squared_shift(method):
    features = _features(400, 6, seed=1)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)

    # A shift leaves the covariance unchanged, so only ||shift||^2 = 14.25 remains.
    assert frechet_distance(features, features + shift, method=method) == pytest.approx(14.25, rel=1e-8)


@pytest.mark.parametrize("method", ["scipy", "eigh"])
def test_commuting_gaussians_closed_form(method):
    rotation, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))
    variances_a = np.array([1.0, 2.0, 0.5, 4.0, 0.1])
    variances_b = np.array([2.0, 0.5, 0.5, 1.0, 0.3])
    covariance_a = rotation @ np.diag(variances_a) @ rotation.T
    covariance_b = rotation @ np.diag(variances_b) @ rotation.T
    mean_a, mean_b = np.zeros(5), np.arange(5.0)

    value = frechet_distance_from_statistics(mean_a, covariance_a, mean_b, covariance_b, method=method)

    # Commuting covariances: d^2 = ||mu_a - mu_b||^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(variances_a) - np.sqrt(variances_b)) ** 2)
    assert value == pytest.approx(expected, rel=1e-9)


def test_scipy_and_eigh_agree():
    features_a, features_b = _features(300, 10, seed=3), _features(200, 10, seed=4) * 1.5 + 0.2

    scipy_value = frechet_distance(features_a, features_b, method="scipy")
    eigh_value = frechet_distance(features_a, features_b, method="eigh")

    assert scipy_value == pytest.approx(eigh_value, rel=1e-7)


def test_singular_covariance_stays_finite():
    # Fewer samples than features leaves both covariances singular.
    features_a, features_b = _features(5, 12, seed=5), _features(6, 12, seed=6)

    value = frechet_distance(features_a, features_b, method="eigh")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        automatic = frechet_distance(features_a, features_b, method="auto")

    assert np.isfinite(value)
    assert value > 0
    # "auto" gives the same value without passing scipy's singular-matrix warning on.
    assert automatic == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    ("features_b", "message"),
    [
        (torch.zeros(1, 3), r"features_b must have shape \[N, D\] with N >= 2, got \(1, 3\)"),
        (torch.zeros(4, 2), "same feature size, got 3 and 2"),
        (torch.full((4, 3), float("nan")), "features_b contains NaN or inf"),
    ],
)
def test_invalid_features_raise(features_b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(torch.randn(4, 3), features_b)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method must be one of"):
        frechet_distance(torch.randn(4, 3), torch.randn(4, 3), method="svd")


def test_replayed_digits_score_below_untrained_generator(classifier, digits):
    real, _ = digits.get_batch(torch.arange(len(digits)))
    replay = classifier_frechet_distance(ReplayGenerator(real), digits, num=600, num_real=600, classifier=classifier)
    untrained = classifier_frechet_distance(small_stylegan2(img_resolution=16), digits, num=600, num_real=600, classifier=classifier)

    # Real digits against other real digits differ only by sampling; noise from an untrained network does not look like digits.
    assert replay.value < 0.2 * untrained.value
    assert replay.num_real == 600
    assert replay.feature_dim == 64
    assert replay.classifier_heldout_accuracy == classifier.heldout_accuracy


def test_accepts_tensor_of_real_images(classifier, digits):
    real, _ = digits.get_batch(torch.arange(300))
    result = classifier_frechet_distance(small_stylegan2(), real, num=100, classifier=classifier)
    decoded = json.loads(json.dumps(result.to_dict()))

    assert result.num_real == 300
    assert decoded["frechet_distance"] == pytest.approx(result.value)
    assert decoded["settings"]["noise_mode"] == "random"


def test_seed_fixes_result(classifier, digits):
    generator = small_stylegan2()
    first = classifier_frechet_distance(generator, digits, num=100, num_real=200, classifier=classifier, seed=1)
    second = classifier_frechet_distance(generator, digits, num=100, num_real=200, classifier=classifier, seed=1)

    assert first.value == second.value


def test_too_many_real_images_raise(classifier, digits):
    with pytest.raises(ValueError, match="num_real is 5000 but the dataset contains only 1797 images"):
        classifier_frechet_distance(small_stylegan2(), digits, num=10, num_real=5000, classifier=classifier)


def test_docs_say_not_inception_fid():
    doc = " ".join(classifier_frechet_distance.__doc__.split())

    assert "It is not Inception FID" in doc
