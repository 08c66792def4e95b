"""Datasets read from a folder of image files, searched recursively in a fixed order."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pathlength.data.collection import ImageEntry, build_dataset
from pathlength.data.dataset import DatasetError, ImageDataset, validate_channels, validate_resolution
from pathlength.data.images import is_image_name
from pathlength.data.labels import LABELS_FILE_NAME, parse_labels_json


def list_folder_images(folder: str | os.PathLike) -> list[str]:
    """Return the image files under ``folder`` as sorted relative paths with forward slashes.

    Files count as images by extension (``IMAGE_EXTENSIONS``, any case). Hidden files and
    folders (names starting with ".") are left out, and symbolic links to folders are not
    followed. Sorting the relative path strings makes the order the same on every platform
    and the same as for a zip of the same tree.
    """
    root = Path(folder)
    names = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        relative_directory = Path(directory).relative_to(root)

        for file_name in files:
            if file_name.startswith(".") or not is_image_name(file_name):
                continue
            names.append((relative_directory / file_name).as_posix())
    return sorted(names)


def load_folder(
    folder: str | os.PathLike,
    resolution: int,
    channels: int | None = None,
    skip_invalid: bool = False,
) -> ImageDataset:
    """Load every image under ``folder`` (recursively) as an ``ImageDataset``.

    Images are converted as ``load_image`` describes. Labels come from ``folder/dataset.json``
    when it exists (see ``parse_labels_json``). Otherwise the dataset is unlabeled.
    The dataset's name is the folder's name.

    Raises:
        ValueError: on an invalid ``resolution`` or ``channels``.
        DatasetError: when the folder is missing or contains no images, when an image is
            invalid and ``skip_invalid`` is False, or when ``dataset.json`` is invalid.

    Example:
        >>> dataset = load_folder("faces/", 64, channels=3)
    """
    validate_resolution(resolution)
    validate_channels(channels)

    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {str(root)!r}. Check the path.")

    labels_path = root / LABELS_FILE_NAME
    labels = None
    if labels_path.is_file():
        labels = parse_labels_json(labels_path.read_bytes(), str(labels_path))

    entries = [
        ImageEntry(
            name=name,
            display=repr(str(root / name)),
            open=functools.partial(open, root / name, "rb"),
        )
        for name in list_folder_images(root)
    ]

    dataset_name = root.resolve().name or str(root)
    return build_dataset(
        entries,
        name=dataset_name,
        where=f"folder {str(root)!r}",
        resolution=resolution,
        channels=channels,
        skip_invalid=skip_invalid,
        labels=labels,
        labels_where=str(labels_path),
    )
