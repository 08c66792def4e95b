"""The digits classifier: held-out accuracy, reproducible training, and its safetensors cache."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pathlength.data import load_dataset
from pathlength.diagnostics import DigitsClassifier, cache_dir, load_digits_classifier, prepare_images, train_digits_classifier
from pathlength.diagnostics import classifier as classifier_module
from pathlength.diagnostics.classifier import classifier_path

from diagnostics_toys import single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classifier-cache")


@pytest.fixture(scope="module")
def trained(cache_folder) -> DigitsClassifier:
    return load_digits_classifier(folder=cache_folder)


def test_heldout_accuracy_above_ninety_five_percent(trained):
    # Measured 0.986 on 359 held-out digits with seed 0.
    assert trained.heldout_accuracy is not None
    assert trained.heldout_accuracy >= 0.95


def test_training_is_reproducible(trained):
    again = train_digits_classifier(seed=0)

    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert again.heldout_accuracy == trained.heldout_accuracy


def test_cache_reloads_without_training(trained, cache_folder, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the classifier was retrained although a cache file exists")

    monkeypatch.setattr(classifier_module, "train_digits_classifier", fail)
    reloaded = load_digits_classifier(folder=cache_folder)

    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    assert reloaded.heldout_accuracy == pytest.approx(trained.heldout_accuracy, abs=0)


def test_cache_write_leaves_no_temporary_files(trained, cache_folder):
    names = sorted(path.name for path in cache_folder.iterdir())

    assert names == [classifier_path(0, cache_folder).name]
    assert names[0].endswith(".safetensors")


def test_corrupt_cache_is_retrained(tmp_path, monkeypatch, caplog):
    path = classifier_path(0, tmp_path)
    path.write_bytes(b"not a safetensors file")
    replacement = DigitsClassifier()
    replacement.heldout_accuracy = 0.5
    monkeypatch.setattr(classifier_module, "train_digits_classifier", lambda seed: replacement)

    with caplog.at_level(logging.WARNING, logger="pathlength.diagnostics.classifier"):
        loaded = load_digits_classifier(folder=tmp_path)

    assert loaded is replacement
    assert "Could not read the cached digits classifier" in caplog.text
    assert load_digits_classifier(folder=tmp_path).heldout_accuracy == 0.5


def test_cache_folder_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHLENGTH_CACHE", str(tmp_path / "custom"))
    assert cache_dir() == tmp_path / "custom"

    monkeypatch.delenv("PATHLENGTH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "pathlength"


def test_any_resolution_and_channels_classified(trained):
    small = load_dataset("digits", 8, channels=1)
    large_rgb = load_dataset("digits", 32, channels=3)
    indices = torch.arange(0, len(small), 4)

    with torch.no_grad():
        labels = small.labels[indices]
        small_accuracy = (trained(small.get_batch(indices)[0]).argmax(1) == labels).float().mean()
        large_accuracy = (trained(large_rgb.get_batch(indices)[0]).argmax(1) == labels).float().mean()

    assert large_rgb.get_batch(indices)[0].shape[1:] == (3, 32, 32)
    # Resizing 32x32 back to 8x8 does not give the original pixels, so accuracy may drop a little.
    assert large_accuracy >= 0.9
    assert small_accuracy >= 0.95


def test_prepare_images_rejects_four_channels():
    with pytest.raises(ValueError, match=r"C of 1 or 3, got \(2, 4, 8, 8\)"):
        prepare_images(torch.zeros(2, 4, 8, 8))
