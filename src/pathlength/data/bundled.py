"""Datasets that ship with installed packages and need no download.

"digits" is scikit-learn's ``load_digits()``: 1797 handwritten digits of 8x8 pixels with
values 0..16 (0 is background, 16 full ink) and class labels 0..9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathlength.data.dataset import DatasetError, ImageDataset, validate_channels, validate_resolution

BUNDLED_DATASETS = ("digits",)

_DIGITS_MAX_VALUE = 16.0


def load_bundled(name: str, resolution: int, channels: int | None = None) -> ImageDataset:
    """Load the bundled dataset ``name`` resized to ``resolution``.

    For "digits", ink intensity v in 0..16 maps to ``v / 16`` in [0, 1]. The 8x8 images are
    resized with bilinear interpolation (antialiased when shrinking to 4x4) and stored as uint8.
    Samples therefore lie in [-1, 1], with -1 for the background and 1 for full ink.
    ``channels=None`` or 1 gives grayscale, and 3 repeats the gray value over RGB.

    Raises:
        ValueError: on an invalid ``resolution`` or ``channels``.
        DatasetError: when ``name`` is not one of ``BUNDLED_DATASETS``.

    Example:
        >>> dataset = load_bundled("digits", 32)
        >>> len(dataset), dataset.image_shape, dataset.num_classes
        (1797, (1, 32, 32), 10)
    """
    validate_resolution(resolution)
    validate_channels(channels)

    if name != "digits":
        valid = ", ".join(repr(n) for n in BUNDLED_DATASETS)
        raise DatasetError(f"unknown bundled dataset {name!r}. Valid names: {valid}.")

    return _load_digits(resolution, channels)


def _load_digits(resolution: int, channels: int | None) -> ImageDataset:
    # Imported here because scikit-learn is slow to import and only the digits need it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    intensities = torch.as_tensor(digits.images, dtype=torch.float32) / _DIGITS_MAX_VALUE
    intensities = intensities.unsqueeze(1)

    # Bilinear interpolation stays inside the input's range, unlike bicubic, so nothing clips.
    resized = F.interpolate(
        intensities,
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=resolution < intensities.shape[-1],
    )
    images = (resized * 255.0).round().clamp(0, 255).to(torch.uint8)

    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()

    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return ImageDataset(images, labels, name="digits", num_classes=10)
