"""Decoding of one image file into a square uint8 tensor of the requested channels and resolution.

Folders and dataset zips use these conversions. ``load_image`` is public so that other callers,
such as a projection target, can prepare an image the same way as the training data.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from pathlength.data.dataset import validate_channels, validate_resolution

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Pillow's decoders raise any of these on corrupt, truncated or unsupported input.
DECODE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def is_image_name(name: str) -> bool:
    """Return whether a file name ends in one of ``IMAGE_EXTENSIONS``, ignoring case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def load_image(
    file: str | os.PathLike | BinaryIO,
    resolution: int,
    channels: int | None = None,
) -> torch.Tensor:
    """Decode an image and return it as uint8 [C, resolution, resolution].

    The steps are:

    1. Apply the EXIF orientation, so photos appear upright.
    2. Composite transparency (RGBA, LA, palette or tRNS transparency) on black, so a fully
       transparent pixel becomes 0, which maps to -1 like the background of the bundled digits.
    3. Scale 16-bit grayscale to 8 bits by dividing by 257.
    4. Convert to ``channels``: 1 uses Pillow's "L" (ITU-R 601-2 luma), 3 uses "RGB".
       With ``channels=None`` a file in a grayscale mode (1, L, LA, 16-bit I) gives 1 channel
       and any other file 3. A palette image counts as color even when its palette is all gray.
    5. Center-crop to a square and resize to ``resolution`` with Lanczos resampling.

    Args:
        file: path or binary file object (seekable) of a PNG, JPEG, WEBP or BMP file.
            Pillow decides the format from the content, so other formats it reads work too.
        resolution: output side length, a power of two >= 4.
        channels: 1, 3 or None.

    Raises:
        ValueError: on an invalid ``resolution`` or ``channels``.
        OSError, ValueError and the other ``DECODE_ERRORS``: when the file is not a readable
            image. Pillow chooses the type.

    Example:
        >>> load_image("photo.jpg", 64, channels=3).shape
        torch.Size([3, 64, 64])
    """
    validate_resolution(resolution)
    validate_channels(channels)

    with Image.open(file) as opened:
        # load() decodes every pixel, which is where truncated files fail.
        opened.load()
        image = ImageOps.exif_transpose(opened)

    image = _flatten_to_l_or_rgb(image)

    if channels == 1 and image.mode != "L":
        image = image.convert("L")
    elif channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")

    image = _center_crop_resize(image, resolution)

    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def _flatten_to_l_or_rgb(image: Image.Image) -> Image.Image:
    """Return the image in mode "L" (for grayscale modes) or "RGB" (for the others), alpha removed."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values to 255 instead of scaling them.
        pixels = np.asarray(image).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")

    if image.mode == "1":
        return image.convert("L")

    # A tRNS transparency entry (one color or palette alphas) becomes a real alpha channel.
    has_transparency = "transparency" in image.info
    if image.mode == "La" or (image.mode == "L" and has_transparency):
        image = image.convert("LA")
    elif image.mode in ("PA", "RGBa") or (image.mode in ("RGB", "P") and has_transparency):
        image = image.convert("RGBA")

    if image.mode == "LA":
        return _composite_on_black(image, "L")
    if image.mode == "RGBA":
        return _composite_on_black(image, "RGB")
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("RGB")


def _composite_on_black(image: Image.Image, mode: str) -> Image.Image:
    # Pasting with the alpha channel as mask blends color * alpha over the black background.
    background = Image.new(mode, image.size, 0)
    background.paste(image.convert(mode), mask=image.getchannel("A"))
    return background


def _center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)

    # A real crop, unlike resize(box=...), keeps the filter from reading pixels outside the
    # square. An odd margin puts the extra pixel on the right or bottom.
    if width != height:
        left = (width - side) // 2
        top = (height - side) // 2
        image = image.crop((left, top, left + side, top + side))

    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image
