"""Sample grids: images from a generator for fixed latents, tiled into one PNG with Pillow."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pathlength.data import float_to_uint8
from pathlength.models import Generator
from pathlength.training.latents import one_hot


def grid_shape(num_images: int, columns: int | None = None) -> tuple[int, int]:
    """Return (rows, columns) of a grid for ``num_images``; columns default to ceil(sqrt(n)).

    Example:
        >>> grid_shape(64), grid_shape(10), grid_shape(20, columns=10)
        ((8, 8), (3, 4), (2, 10))
    """
    if num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    if columns is None:
        columns = math.ceil(math.sqrt(num_images))
    if columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns}")
    return math.ceil(num_images / columns), columns


def make_grid(
    images: Tensor,
    columns: int | None = None,
    padding: int = 0,
    scale: int = 1,
    pad_value: int = 128,
) -> Image.Image:
    """Tile uint8 images [N, C, R, R] (C = 1 or 3) into one Pillow image, row by row.

    Each image is enlarged ``scale`` times with nearest-neighbour sampling, so pixels stay sharp,
    and cells are separated and framed by ``padding`` pixels of ``pad_value``. The result is
    ``columns * (R * scale + padding) + padding`` pixels wide (rows likewise); cells after the
    last image are filled with ``pad_value``.

    Example:
        >>> make_grid(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), columns=3).size
        (24, 16)
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, C, R, R] with C = 1 or 3, got {images.dtype} {tuple(images.shape)}")
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got scale={scale}, padding={padding}")

    count, channels, height, width = images.shape
    rows, columns = grid_shape(count, columns)
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cell_height, cell_width = height * scale, width * scale

    canvas = torch.full(
        (channels, rows * (cell_height + padding) + padding, columns * (cell_width + padding) + padding),
        pad_value,
        dtype=torch.uint8,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (cell_height + padding)
        left = padding + column * (cell_width + padding)
        canvas[:, top : top + cell_height, left : left + cell_width] = images[index]

    array = np.ascontiguousarray(canvas.permute(1, 2, 0).cpu().numpy())
    if channels == 1:
        return Image.fromarray(array[:, :, 0])
    return Image.fromarray(array)


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Save ``image`` as PNG through a temporary file and ``os.replace``, so readers never see half a file."""
    path = Path(path)
    temporary = path.with_name(f".tmp-{path.name}")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)


def fixed_latents(
    generator: Generator, num_images: int, seed: int, labels_per_column: bool = True
) -> tuple[Tensor, Tensor | None, int | None]:
    """Return the latents z [N, z_dim], labels c [N, c_dim] or None, and the grid columns for a sample grid.

    The latents come from their own ``torch.Generator`` seeded with ``seed``, so the same seed
    gives the same grid in every run and after every resume, and the global random state is left
    alone. A conditional generator gets one class per column (0, 1, ..., c_dim - 1) when
    ``labels_per_column`` is set, so every class appears in every row.
    """
    draws = torch.Generator().manual_seed(seed)
    z = torch.randn(num_images, generator.z_dim, generator=draws)
    if generator.c_dim == 0:
        return z, None, None

    columns = generator.c_dim if labels_per_column else None
    classes = torch.arange(num_images) % generator.c_dim
    return z, one_hot(classes, generator.c_dim), columns


@torch.no_grad()
def generate_images(
    generator: Generator,
    z: Tensor,
    c: Tensor | None = None,
    truncation_psi: float = 1.0,
    batch_size: int = 64,
) -> Tensor:
    """Run the generator on z [N, z_dim] with constant noise and return uint8 images [N, C, R, R] on the CPU.

    Constant noise (the generator's ``noise_const`` buffers) makes the images a function of z
    alone and draws nothing from the global random state.
    """
    device = next(generator.parameters()).device
    batches = []
    for start in range(0, z.shape[0], batch_size):
        z_batch = z[start : start + batch_size].to(device)
        c_batch = c[start : start + batch_size].to(device) if c is not None else None
        images = generator(z_batch, c_batch, truncation_psi=truncation_psi, noise_mode="const")
        batches.append(float_to_uint8(images).cpu())
    return torch.cat(batches)


def display_scale(resolution: int, minimum_cell: int = 64) -> int:
    """Return the nearest-neighbour enlargement that makes a cell at least ``minimum_cell`` pixels wide."""
    return max(1, math.ceil(minimum_cell / resolution))
