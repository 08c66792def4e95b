"""In-memory image dataset that the trainer and the diagnostics read from.

Images are stored as a uint8 tensor [N, C, R, R] and mapped to float32 in [-1, 1] only when a
sample or batch is requested, which keeps small datasets cheap to hold and fast to sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

SUPPORTED_CHANNELS = (1, 3)


class DatasetError(ValueError):
    """Error for a dataset source that cannot be loaded: a missing path or an invalid image or label."""


def validate_resolution(resolution: int) -> None:
    """Raise ValueError unless ``resolution`` is a power of two of at least 4.

    Example:
        >>> validate_resolution(32)
    """
    is_int = isinstance(resolution, int) and not isinstance(resolution, bool)
    if not is_int or resolution < 4 or resolution & (resolution - 1) != 0:
        raise ValueError(
            f"resolution must be a power of two of at least 4 (4, 8, 16, 32, ...), got {resolution!r}"
        )


def validate_channels(channels: int | None) -> None:
    """Raise ValueError unless ``channels`` is None (choose from the data), 1 (grayscale) or 3 (RGB)."""
    if channels is None:
        return
    is_int = isinstance(channels, int) and not isinstance(channels, bool)
    if not is_int or channels not in SUPPORTED_CHANNELS:
        raise ValueError(
            f"channels must be 1 (grayscale), 3 (RGB) or None (choose from the data), got {channels!r}"
        )


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to float32 in [-1, 1] by ``x / 127.5 - 1``, so 0 -> -1 and 255 -> 1.

    Works on any shape. Example:
        >>> uint8_to_float(torch.tensor([0, 255], dtype=torch.uint8))
        tensor([-1.,  1.])
    """
    return images.to(torch.float32) / 127.5 - 1.0


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map float pixels in [-1, 1] to uint8 by ``round((x + 1) * 127.5)``, clamping values outside.

    The inverse of ``uint8_to_float`` up to rounding. Example:
        >>> float_to_uint8(torch.tensor([-1.0, 0.0, 1.0, 3.0]))
        tensor([  0, 128, 255, 255], dtype=torch.uint8)
    """
    scaled = (images.detach().to(torch.float32) + 1.0) * 127.5
    return scaled.round().clamp(0, 255).to(torch.uint8)


class ImageDataset(Dataset):
    """Square images held in memory as uint8, with optional integer class labels.

    ``dataset[i]`` returns ``(image, label)``: image float32 [C, R, R] in [-1, 1] (see
    ``uint8_to_float``) and label an int64 scalar tensor, -1 when the dataset has no labels.
    ``get_batch`` returns many samples at once without a DataLoader.

    Args:
        images: uint8 tensor [N, C, R, R] with C in (1, 3) and R a power of two >= 4.
        labels: int64 tensor [N] of class indices in [0, num_classes), or None for no labels.
        name: short name of the source, used in logs and run configs.
        num_classes: number of classes, by default ``labels.max() + 1``. Ignored without labels.
        skipped_files: files that ``skip_invalid=True`` dropped while loading.

    Raises:
        ValueError: on a wrong dtype or shape, an empty tensor, or labels out of range.

    Example:
        >>> images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        >>> dataset = ImageDataset(images, torch.tensor([0, 1]), name="toy")
        >>> dataset[1][0].shape, int(dataset[1][1]), dataset.num_classes
        (torch.Size([1, 4, 4]), 1, 2)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        name: str,
        num_classes: int | None = None,
        skipped_files: Sequence[str] = (),
    ) -> None:
        _validate_images(images)
        count = images.shape[0]

        if labels is None:
            self.labels = torch.full((count,), -1, dtype=torch.int64)
            self.num_classes = 0
        else:
            self.labels = _validate_labels(labels, count)
            self.num_classes = _resolve_num_classes(self.labels, num_classes)

        self.images = images.contiguous()
        self.name = name
        self.resolution = int(images.shape[-1])
        self.num_channels = int(images.shape[1])
        self.skipped_files = tuple(skipped_files)

    @property
    def has_labels(self) -> bool:
        """Whether every image carries a class label (``num_classes > 0``)."""
        return self.num_classes > 0

    @property
    def num_skipped(self) -> int:
        """Number of invalid files dropped while loading, 0 unless ``skip_invalid=True`` found some."""
        return len(self.skipped_files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(num_channels, resolution, resolution)``."""
        return (self.num_channels, self.resolution, self.resolution)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return uint8_to_float(self.images[index]), self.labels[index]

    def get_batch(
        self,
        indices: torch.Tensor | Sequence[int],
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return images float32 [B, C, R, R] in [-1, 1] and labels int64 [B] for ``indices``.

        The uint8 images move to ``device`` before the float conversion, so the copy is a
        quarter of the float size. Example:
            >>> images, labels = dataset.get_batch(torch.randint(len(dataset), (16,)))
        """
        index_tensor = torch.as_tensor(indices, dtype=torch.int64)
        if index_tensor.ndim != 1:
            raise ValueError(
                f"indices must be one-dimensional, got shape {tuple(index_tensor.shape)}"
            )

        images = self.images[index_tensor]
        labels = self.labels[index_tensor]
        if device is not None:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        return uint8_to_float(images), labels

    def sample_batch(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` indices uniformly with replacement and return ``get_batch`` of them.

        ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible. Example:
            >>> images, labels = dataset.sample_batch(16, torch.Generator().manual_seed(0))
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

        indices = torch.randint(len(self), (batch_size,), generator=generator)
        return self.get_batch(indices, device=device)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, size={len(self)}, resolution={self.resolution}, "
            f"num_channels={self.num_channels}, num_classes={self.num_classes}, "
            f"num_skipped={self.num_skipped})"
        )


def _validate_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        found = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor [N, C, R, R], got {found}")

    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape [N, C, R, R] (square), got {tuple(images.shape)}")

    if images.shape[0] == 0:
        raise ValueError("images must contain at least one image, got shape with N=0")

    if images.shape[1] not in SUPPORTED_CHANNELS:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")

    validate_resolution(int(images.shape[-1]))


def _validate_labels(labels: torch.Tensor, count: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise ValueError(f"labels must be an integer tensor of class indices, got {labels.dtype}")

    if labels.shape != (count,):
        raise ValueError(f"labels must have shape [{count}] to match the images, got {tuple(labels.shape)}")

    labels = labels.to(torch.int64)
    if labels.min() < 0:
        raise ValueError(f"labels must be class indices >= 0, got minimum {int(labels.min())}")
    return labels


def _resolve_num_classes(labels: torch.Tensor, num_classes: int | None) -> int:
    needed = int(labels.max()) + 1
    if num_classes is None:
        return needed

    if num_classes < needed:
        raise ValueError(f"num_classes must be at least max(labels) + 1 = {needed}, got {num_classes}")
    return int(num_classes)
