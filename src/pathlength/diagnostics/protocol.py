"""The small generator interface the diagnostics run on, and the seeded sampling they share.

Any object with a mapping network ``mapping(z, c) -> ws`` and a synthesis network
``synthesis(ws, noise_mode=...) -> images`` can be measured; the reference StyleGAN2 generator is one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from pathlength.penalty import path_lengths

NOISE_MODES = ("random", "const", "none")


@runtime_checkable
class GeneratorLike(Protocol):
    """A generator split into a mapping network and a synthesis network.

    Attributes:
        z_dim: size of the input latents z [B, z_dim].
        w_dim: size of the intermediate latents w.
        num_ws: number of ws the synthesis network takes ([B, num_ws, w_dim], W+ broadcast), or
            None when it takes plain W latents [B, w_dim].
        img_resolution, img_channels: the images are [B, img_channels, img_resolution, img_resolution].

    ``c_dim`` (label size, 0 for an unconditional generator) is read with ``getattr`` and defaults to 0.
    ``mapping(z, c=None, truncation_psi=1.0)`` returns ws; the diagnostics pass ``truncation_psi`` only
    when it is not 1. ``synthesis(ws, noise_mode=...)`` returns images in about [-1, 1]; the
    diagnostics pass ``noise_mode`` only when it is not None.
    """

    z_dim: int
    w_dim: int
    num_ws: int | None
    img_resolution: int
    img_channels: int

    def mapping(self, z: Tensor, c: Tensor | None = None, **kwargs: Any) -> Tensor: ...

    def synthesis(self, ws: Tensor, **kwargs: Any) -> Tensor: ...


def check_generator(generator: Any) -> None:
    """Raise TypeError unless ``generator`` has the attributes and methods of `GeneratorLike`."""
    missing = [name for name in ("z_dim", "w_dim", "num_ws", "img_resolution", "img_channels") if not hasattr(generator, name)]
    missing += [name for name in ("mapping", "synthesis") if not callable(getattr(generator, name, None))]
    if missing:
        raise TypeError(
            f"generator {type(generator).__name__} lacks {', '.join(missing)}; the diagnostics need a "
            "mapping network .mapping(z, c) -> ws, a synthesis network .synthesis(ws, noise_mode=...) -> "
            "images and the attributes z_dim, w_dim, num_ws, img_resolution, img_channels"
        )


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_noise_mode(noise_mode: str | None) -> None:
    """Raise ValueError unless ``noise_mode`` is None or one of `NOISE_MODES`."""
    if noise_mode is not None and noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES} or None (not passed), got {noise_mode!r}")


def module_device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    """Return the device and floating dtype of the first parameter or buffer, else (cpu, float32)."""
    if isinstance(module, nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def label_size(generator: Any) -> int:
    """Return ``generator.c_dim``, or 0 when the generator has no such attribute."""
    return int(getattr(generator, "c_dim", 0) or 0)


def run_mapping(generator: Any, z: Tensor, c: Tensor | None, truncation_psi: float = 1.0) -> Tensor:
    """Call ``generator.mapping(z, c)``, passing ``truncation_psi`` only when it is not 1."""
    if truncation_psi != 1:
        return generator.mapping(z, c, truncation_psi=truncation_psi)
    return generator.mapping(z, c)


def run_synthesis(generator: Any, ws: Tensor, noise_mode: str | None) -> Tensor:
    """Call ``generator.synthesis(ws)``, passing ``noise_mode`` only when it is not None."""
    if noise_mode is None:
        return generator.synthesis(ws)
    return generator.synthesis(ws, noise_mode=noise_mode)


def draw_labels(
    generator: Any,
    count: int,
    rng: torch.Generator,
    class_pool: Tensor | None = None,
) -> Tensor | None:
    """Draw one-hot labels [count, c_dim] for a conditional generator, or return None when c_dim is 0.

    The classes are drawn uniformly from ``class_pool`` (for example a dataset's labels, which
    follows its class frequencies) when given, else uniformly from 0..c_dim-1.
    """
    c_dim = label_size(generator)
    if c_dim == 0:
        return None

    if class_pool is not None and class_pool.numel() > 0 and int(class_pool.min()) >= 0:
        picks = torch.randint(class_pool.numel(), (count,), generator=rng)
        classes = class_pool.reshape(-1).cpu()[picks]
    else:
        classes = torch.randint(c_dim, (count,), generator=rng)
    return torch.nn.functional.one_hot(classes.clamp(max=c_dim - 1), c_dim).to(torch.float32)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` for sample ``index`` of a run with ``seed``.

    Seeds come from numpy's ``SeedSequence([seed, index])``, so every sample draws the same numbers
    however the samples are batched.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNGs for the duration of the block and restore them afterwards.

    The reference synthesis network draws its "random" noise from the global RNG, so seeding it makes
    a measurement with ``noise_mode="random"`` repeatable for a fixed batch size.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def batch_slices(count: int, batch_size: int) -> Iterator[slice]:
    """Yield consecutive slices of at most ``batch_size`` items covering ``range(count)``."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def latent_layers(ws: Tensor) -> int:
    """Return L for W+ latents [B, L, D] and 1 for plain W latents [B, D]."""
    return ws.shape[1] if ws.ndim == 3 else 1


def depends_on(images: Tensor, ws: Tensor) -> bool:
    """Return whether ``images`` are connected to ``ws`` in the autograd graph (the graph is kept)."""
    if not images.requires_grad:
        return False
    (grad,) = torch.autograd.grad(images.sum(), ws, retain_graph=True, allow_unused=True)
    return grad is not None


def measured_path_lengths(images: Tensor, ws: Tensor, noise: Tensor, connected: bool) -> Tensor:
    """Return the training statistic ``path_lengths(images, ws, noise)`` without a graph, as float32 [B].

    Images that are not connected to ``ws`` (``connected`` False, see `depends_on`) have Jacobian 0
    and so length 0; `path_lengths` would reject them as a caller error.
    """
    if not connected:
        return torch.zeros(images.shape[0], dtype=torch.float32, device=images.device)
    return path_lengths(images, ws, noise, create_graph=False).detach()


def scaled_noise(shape: tuple[int, ...], rng: torch.Generator) -> Tensor:
    """Draw y ~ N(0, I) of ``shape`` [..., H, W] on the CPU, divided by sqrt(H * W) as in training."""
    height, width = shape[-2:]
    return torch.randn(shape, generator=rng) / math.sqrt(height * width)
