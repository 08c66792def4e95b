"""Assembly of an ``ImageDataset`` from a list of image files, shared by folders and dataset zips.

It decodes each file with ``load_image``, applies the channel rule and the ``skip_invalid``
policy, and attaches the labels of a ``dataset.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import torch
from PIL import UnidentifiedImageError

from pathlength.data.dataset import DatasetError, ImageDataset
from pathlength.data.images import DECODE_ERRORS, IMAGE_EXTENSIONS, load_image
from pathlength.data.labels import assign_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEntry:
    """One image file of a dataset source.

    ``name`` is the path relative to the dataset root with forward slashes (the key used in
    ``dataset.json``), ``display`` names the file in messages, and ``open`` returns a seekable
    binary file object, raising OSError when the file cannot be read.
    """

    name: str
    display: str
    open: Callable[[], BinaryIO]


def build_dataset(
    entries: Sequence[ImageEntry],
    *,
    name: str,
    where: str,
    resolution: int,
    channels: int | None,
    skip_invalid: bool,
    labels: Mapping[str, int] | None,
    labels_where: str = "dataset.json",
) -> ImageDataset:
    """Decode ``entries`` in the given order and return them as an ``ImageDataset``.

    With ``channels=None`` the dataset has 1 channel when every image is grayscale and 3
    otherwise, and grayscale images are then repeated over the three channels.
    ``where`` names the source (folder or zip) in messages.

    Raises:
        DatasetError: when ``entries`` is empty, when an image is invalid and ``skip_invalid``
            is False, when every image is invalid, or when an image has no label in ``labels``.
    """
    if not entries:
        extensions = ", ".join(IMAGE_EXTENSIONS)
        raise DatasetError(f"no images found in {where}. Expected files ending in {extensions}.")

    stored_channels = 3 if channels is None else channels
    images = torch.empty((len(entries), stored_channels, resolution, resolution), dtype=torch.uint8)
    is_grayscale = torch.zeros(len(entries), dtype=torch.bool)
    kept_names: list[str] = []
    skipped: list[str] = []

    for entry in entries:
        try:
            with entry.open() as file:
                pixels = load_image(file, resolution, channels)
        except DECODE_ERRORS as error:
            if not skip_invalid:
                raise DatasetError(
                    f"invalid image {entry.display}: {_describe_error(error)}. "
                    "Remove the file, or pass skip_invalid=True to skip invalid images."
                ) from error
            skipped.append(entry.display)
            continue

        row = len(kept_names)
        images[row, : pixels.shape[0]] = pixels
        is_grayscale[row] = pixels.shape[0] == 1
        kept_names.append(entry.name)

    if skipped:
        logger.warning(
            "skipped %d invalid image(s) of %d in %s, first %s. The dataset lists them in skipped_files.",
            len(skipped),
            len(entries),
            where,
            skipped[0],
        )

    if not kept_names:
        raise DatasetError(
            f"none of the {len(entries)} images in {where} could be read (first invalid file: {skipped[0]}). "
            "Check that the files are images."
        )

    count = len(kept_names)
    images = _apply_channel_rule(images[:count], is_grayscale[:count], channels)

    label_tensor = None
    if labels is not None:
        label_tensor = assign_labels(kept_names, labels, labels_where)
        _warn_unused_labels(labels, [entry.name for entry in entries], labels_where)

    dataset = ImageDataset(images, label_tensor, name=name, skipped_files=skipped)
    logger.info("loaded %s from %s", dataset, where)
    return dataset


def _apply_channel_rule(
    images: torch.Tensor,
    is_grayscale: torch.Tensor,
    channels: int | None,
) -> torch.Tensor:
    if channels is not None:
        return images

    if bool(is_grayscale.all()):
        return images[:, :1].clone()

    # Grayscale images filled only channel 0; repeating it equals Pillow's "L" -> "RGB".
    images[is_grayscale, 1:] = images[is_grayscale, :1]
    return images


def _describe_error(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image in a format Pillow can read"
    return f"{type(error).__name__}: {error}"


def _warn_unused_labels(labels: Mapping[str, int], names: Sequence[str], where: str) -> None:
    unused = set(labels) - set(names)
    if unused:
        logger.warning(
            "%s lists %d path(s) that match no image file, for example %r. They are ignored.",
            where,
            len(unused),
            min(unused),
        )
