"""Image distances: pixels, digits-classifier features and LPIPS from a local weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pathlength.diagnostics import DigitsClassifier, Distance, FeatureDistance, LPIPSDistance, PixelDistance
from pathlength.diagnostics.distances import LPIPS_TAP_CHANNELS, LPIPS_TAPS

from diagnostics_toys import single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(seed: int, shape=(2, 1, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _lpips_slice(index: int) -> int:
    # The lpips package splits VGG16's features into slices that end at the tapped ReLUs.
    return 1 + sum(index > tap for tap in LPIPS_TAPS)


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        features = LPIPSDistance().features.state_dict()
    # Half precision keeps the test files small; the loader converts to float32.
    return {name: tensor.half() for name, tensor in features.items()}


@pytest.fixture(scope="module")
def torchvision_file(vgg_state, tmp_path_factory) -> Path:
    state = {f"features.{name}": tensor for name, tensor in vgg_state.items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def lpips_file(vgg_state, tmp_path_factory) -> Path:
    state = {}
    for name, tensor in vgg_state.items():
        index = int(name.split(".")[0])
        state[f"net.slice{_lpips_slice(index)}.{name}"] = tensor
    for index, channels in enumerate(LPIPS_TAP_CHANNELS):
        state[f"lin{index}.model.1.weight"] = torch.rand(1, channels, 1, 1, generator=torch.Generator().manual_seed(index))
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.pth"
    torch.save(state, path)
    return path


def test_pixel_distance_is_mean_squared_difference():
    images_a = torch.zeros(2, 3, 4, 4)
    images_b = torch.zeros(2, 3, 4, 4)
    images_b[0] = 0.5
    images_b[1, 0] = 3.0

    distance = PixelDistance()(images_a, images_b)

    torch.testing.assert_close(distance, torch.tensor([0.25, 3.0]), rtol=1e-7, atol=0)


def test_distances_follow_protocol():
    assert isinstance(PixelDistance(), Distance)
    assert isinstance(FeatureDistance(DigitsClassifier()), Distance)


def test_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 1, 4, 4\) and \(2, 1, 8, 8\)"):
        PixelDistance()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 8, 8))


def test_feature_distance_zero_for_identical_images():
    distance = FeatureDistance(DigitsClassifier())
    images = _images(0)

    assert torch.equal(distance(images, images.clone()), torch.zeros(2))
    assert torch.all(distance(images, _images(1)) > 0)


def test_feature_distance_symmetric_and_resolution_free():
    distance = FeatureDistance(DigitsClassifier())
    images_a, images_b = _images(0, (2, 1, 8, 8)), _images(1, (2, 1, 8, 8))

    forward, backward = distance(images_a, images_b), distance(images_b, images_a)
    rgb = distance(images_a.expand(-1, 3, -1, -1), images_b.expand(-1, 3, -1, -1))

    torch.testing.assert_close(forward, backward, rtol=1e-6, atol=0)
    # Gray repeated over RGB converts back to the same gray image.
    torch.testing.assert_close(rgb, forward, rtol=1e-6, atol=0)


def test_feature_distance_gradient_finite_at_identical_images():
    distance = FeatureDistance(DigitsClassifier())
    images = torch.zeros(2, 1, 8, 8, requires_grad=True)

    # All-zero input leaves some ReLU activations at exactly 0, where a plain norm has no derivative.
    value = distance(images, images.detach().clone()).sum()
    (gradient,) = torch.autograd.grad(value, images)

    assert float(value.detach()) == 0.0
    assert torch.isfinite(gradient).all()


def test_lpips_from_torchvision_safetensors(torchvision_file):
    distance = LPIPSDistance.from_file(torchvision_file)
    images_a, images_b = _images(0, (2, 3, 16, 16)), _images(1, (2, 3, 16, 16))

    values = distance(images_a, images_b)

    assert not distance.has_linear_weights
    assert values.shape == (2,)
    assert torch.all(values > 0)
    assert torch.equal(distance(images_a, images_a.clone()), torch.zeros(2))


def test_lpips_from_lpips_state_dict(lpips_file, torchvision_file, vgg_state):
    distance = LPIPSDistance.from_file(lpips_file)
    unweighted = LPIPSDistance.from_file(torchvision_file)
    images_a, images_b = _images(2, (1, 1, 32, 32)), _images(3, (1, 1, 32, 32))

    assert distance.has_linear_weights
    torch.testing.assert_close(distance.features[0].weight, vgg_state["0.weight"].float(), rtol=0, atol=0)
    # Channel weights in [0, 1) can only shrink the unweighted distance.
    assert float(distance(images_a, images_b)) < float(unweighted(images_a, images_b))


def test_lpips_linear_weights_from_second_file(torchvision_file, lpips_file, tmp_path):
    linear = {key: value for key, value in torch.load(lpips_file, weights_only=True).items() if key.startswith("lin")}
    linear_path = tmp_path / "linear.pth"
    torch.save(linear, linear_path)

    distance = LPIPSDistance.from_file(torchvision_file, linear_path=linear_path)
    reference = LPIPSDistance.from_file(lpips_file)
    images_a, images_b = _images(4, (1, 3, 32, 32)), _images(5, (1, 3, 32, 32))

    assert distance.has_linear_weights
    torch.testing.assert_close(distance(images_a, images_b), reference(images_a, images_b), rtol=1e-5, atol=0)


def test_lpips_gradient_finite_at_identical_images(torchvision_file):
    distance = LPIPSDistance.from_file(torchvision_file)
    images = torch.full((1, 3, 16, 16), -1.0, requires_grad=True)

    value = distance(images, images.detach().clone()).sum()
    (gradient,) = torch.autograd.grad(value, images)

    assert float(value.detach()) == 0.0
    assert torch.isfinite(gradient).all()


def test_lpips_missing_file_raises(tmp_path):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors' not found; pathlength downloads nothing"):
        LPIPSDistance.from_file(missing)


def test_lpips_mismatched_keys_raise(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.0.weight": torch.zeros(3, 3)}, path)

    with pytest.raises(ValueError, match=r"missing VGG16 weights features.0.weight, features.0.bias.*26 of 26 missing.*found encoder.0.weight"):
        LPIPSDistance.from_file(path)


def test_lpips_wrong_shape_raises(vgg_state, tmp_path):
    state = {f"features.{name}": tensor for name, tensor in vgg_state.items()}
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "gray_vgg.safetensors"
    save_file(state, path)

    with pytest.raises(ValueError, match=r"features.0.weight has shape \[64, 1, 3, 3\], expected \[64, 3, 3, 3\]"):
        LPIPSDistance.from_file(path)


def test_lpips_incomplete_linear_weights_raise(torchvision_file, tmp_path):
    path = tmp_path / "partial.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, path)

    with pytest.raises(ValueError, match="must be lin0 ... lin4, found lin0"):
        LPIPSDistance.from_file(torchvision_file, linear_path=path)


def test_lpips_rejects_pickled_objects(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"features": torch.nn.Linear(2, 2)}, path)

    with pytest.raises(ValueError, match="weights_only=True"):
        LPIPSDistance.from_file(path)
