"""Datasets read from a zip archive in the layout of StyleGAN2-ADA's dataset tool.

The archive contains image files, possibly in subfolders such as ``00000/img00000000.png``,
and an optional ``dataset.json`` of labels at its root.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from pathlength.data.collection import ImageEntry, build_dataset
from pathlength.data.dataset import DatasetError, ImageDataset, validate_channels, validate_resolution
from pathlength.data.images import is_image_name
from pathlength.data.labels import LABELS_FILE_NAME, parse_labels_json

# Errors that zipfile raises when one member cannot be read: a bad CRC or header (BadZipFile),
# an encrypted member (RuntimeError) or an unsupported compression method (NotImplementedError).
_MEMBER_READ_ERRORS = (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError)


def list_archive_images(archive: zipfile.ZipFile) -> list[str]:
    """Return the image members of ``archive`` as sorted paths.

    Members count as images by extension (``IMAGE_EXTENSIONS``, any case). Folders, hidden
    files (a path part starting with ".") and macOS metadata under ``__MACOSX/`` are left out.
    """
    names = []
    for info in archive.infolist():
        parts = info.filename.split("/")
        if info.is_dir() or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
            continue
        if is_image_name(info.filename):
            names.append(info.filename)
    return sorted(names)


def load_archive(
    path: str | os.PathLike,
    resolution: int,
    channels: int | None = None,
    skip_invalid: bool = False,
) -> ImageDataset:
    """Load every image in the zip archive at ``path`` as an ``ImageDataset``.

    Images are converted as ``load_image`` describes. Labels come from ``dataset.json`` at the
    archive's root when it exists (see ``parse_labels_json``). Otherwise the dataset is
    unlabeled. The dataset's name is the file name without ``.zip``.

    Raises:
        ValueError: on an invalid ``resolution`` or ``channels``.
        DatasetError: when the file is missing or not a valid zip, when it contains no images,
            when an image is invalid and ``skip_invalid`` is False, or when ``dataset.json`` is
            invalid.

    Example:
        >>> dataset = load_archive("ffhq-64x64.zip", 64)
    """
    validate_resolution(resolution)
    validate_channels(channels)

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset zip not found: {str(path)!r}. Check the path.")

    try:
        with zipfile.ZipFile(path) as archive:
            return _load_open_archive(archive, path, resolution, channels, skip_invalid)
    except zipfile.BadZipFile as error:
        raise DatasetError(
            f"{str(path)!r} is not a valid zip archive ({error}). Rebuild the archive."
        ) from error


def _load_open_archive(
    archive: zipfile.ZipFile,
    path: Path,
    resolution: int,
    channels: int | None,
    skip_invalid: bool,
) -> ImageDataset:
    labels = None
    labels_where = f"{LABELS_FILE_NAME} in {str(path)!r}"
    if LABELS_FILE_NAME in archive.namelist():
        try:
            text = archive.read(LABELS_FILE_NAME)
        except _MEMBER_READ_ERRORS as error:
            raise DatasetError(f"cannot read {labels_where}: {error}. Rebuild the archive.") from error
        labels = parse_labels_json(text, labels_where)

    entries = [
        ImageEntry(
            name=name,
            display=f"{name!r} in {str(path)!r}",
            open=lambda name=name: io.BytesIO(_read_member(archive, name)),
        )
        for name in list_archive_images(archive)
    ]

    return build_dataset(
        entries,
        name=path.stem,
        where=f"zip {str(path)!r}",
        resolution=resolution,
        channels=channels,
        skip_invalid=skip_invalid,
        labels=labels,
        labels_where=labels_where,
    )


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    # OSError is what build_dataset treats as an invalid file, which skip_invalid may skip.
    try:
        return archive.read(name)
    except _MEMBER_READ_ERRORS as error:
        raise OSError(f"cannot read the member from the archive: {error}") from error
