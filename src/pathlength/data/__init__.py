"""Training datasets: the bundled digits, folders of images and StyleGAN2-ADA dataset zips.

``load_dataset`` is the entry point, and every loader returns an ``ImageDataset`` that stores
uint8 images [N, C, R, R] and returns float32 images in [-1, 1].
"""

from pathlength.data.archive import load_archive
from pathlength.data.bundled import BUNDLED_DATASETS, load_bundled
from pathlength.data.dataset import (
    DatasetError,
    ImageDataset,
    float_to_uint8,
    uint8_to_float,
    validate_resolution,
)
from pathlength.data.folder import load_folder
from pathlength.data.images import IMAGE_EXTENSIONS, load_image
from pathlength.data.sources import load_dataset

__all__ = [
    "BUNDLED_DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "ImageDataset",
    "float_to_uint8",
    "load_archive",
    "load_bundled",
    "load_dataset",
    "load_folder",
    "load_image",
    "uint8_to_float",
    "validate_resolution",
]
