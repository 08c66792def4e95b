"""The single entry point that loads a dataset from a bundled name, an image folder or a dataset zip."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from pathlength.data.archive import load_archive
from pathlength.data.bundled import BUNDLED_DATASETS, load_bundled
from pathlength.data.dataset import DatasetError, ImageDataset, validate_channels, validate_resolution
from pathlength.data.folder import load_folder


def load_dataset(
    source: str | os.PathLike,
    resolution: int,
    channels: int | None = None,
    skip_invalid: bool = False,
) -> ImageDataset:
    """Load ``source`` as an ``ImageDataset`` of square images at ``resolution``.

    ``source`` is tried in this order:

    1. A bundled dataset name (``BUNDLED_DATASETS``, such as "digits"). A bundled name wins over
       a folder of the same name in the working directory, so write "./digits" for the folder.
    2. A folder: its images are found recursively (see ``load_folder``).
    3. A zip archive, recognised by its content (see ``load_archive``).

    Images are center-cropped, resized and converted as ``load_image`` describes. With
    ``channels=None`` the dataset is grayscale when every image is grayscale and RGB otherwise.
    ``skip_invalid=True`` drops unreadable image files instead of raising, counts them in
    ``dataset.num_skipped`` and logs one warning. Bundled datasets ignore it.

    Raises:
        ValueError: when ``resolution`` is not a power of two >= 4 or ``channels`` is not
            1, 3 or None.
        DatasetError (a ValueError): when ``source`` is neither a bundled name nor an existing
            folder or zip, when it contains no images, or on an invalid image or ``dataset.json``.

    Example:
        >>> dataset = load_dataset("digits", 32)
        >>> images, labels = dataset.get_batch(torch.arange(8))
        >>> images.shape, images.dtype, labels.dtype
        (torch.Size([8, 1, 32, 32]), torch.float32, torch.int64)
    """
    validate_resolution(resolution)
    validate_channels(channels)

    if isinstance(source, str) and source in BUNDLED_DATASETS:
        return load_bundled(source, resolution, channels)

    path = Path(source)
    if path.is_dir():
        return load_folder(path, resolution, channels, skip_invalid)

    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(
                f"{str(path)!r} is a file but not a zip archive. Pass a folder of images, "
                f"a dataset zip or a bundled dataset name ({_bundled_names()})."
            )
        return load_archive(path, resolution, channels, skip_invalid)

    raise DatasetError(
        f"dataset {str(source)!r} not found: it is not a bundled dataset name "
        f"(valid names: {_bundled_names()}) and no folder or zip file exists at that path."
    )


def _bundled_names() -> str:
    return ", ".join(repr(name) for name in BUNDLED_DATASETS)
