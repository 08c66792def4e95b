"""Exact Jacobian J_w of a synthesis network at a few latents, its singular values, and a check of the
path length estimator E[||J_w^T y||^2] = ||J_w||_F^2 / (H * W * L) against it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import jacrev

from pathlength.diagnostics.protocol import (
    check_positive_int,
    depends_on,
    latent_layers,
    measured_path_lengths,
    sample_generator,
    scaled_noise,
)

DEFAULT_MAX_ELEMENTS = 2**25

Crop = tuple[int, int, int, int]


class JacobianTooLargeError(ValueError):
    """Raised when the exact Jacobian would exceed ``max_elements``; the message suggests a crop."""


@dataclass(frozen=True)
class JacobianSpectrum:
    """Spectrum of the exact Jacobian at K latents, all tensors float64 on the CPU.

    Attributes:
        singular_values: [K, min(M, N)] in descending order, for J of shape M = C*H*W (outputs,
            after the crop) by N = L*D (inputs).
        condition_number: [K] largest over smallest singular value; inf when the smallest is 0.
        frobenius_norm: [K] ||J||_F.
        expected_squared_length: [K] ||J||_F^2 / (H * W * L), the exact E[length^2].
        estimated_squared_length: [K] the mean of ``path_lengths(...)^2`` over ``noise_draws`` draws of y.
        standard_error: [K] the standard error of that mean, sqrt(2 * sum(s^4) / noise_draws) / (H*W*L),
            from the singular values s (the variance of a quadratic form in Gaussian y).
        relative_error: [K] |estimated - expected| / expected; 0 where both are 0.
        image_shape: (C, H, W) of the measured image (after the crop).
        latent_shape: (L, D) for W+ latents or (D,) for plain W.
        noise_draws: draws of y behind the estimate.
    """

    singular_values: Tensor
    condition_number: Tensor
    frobenius_norm: Tensor
    expected_squared_length: Tensor
    estimated_squared_length: Tensor
    standard_error: Tensor
    relative_error: Tensor
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, ...]
    noise_draws: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict with per-latent lists; an infinite condition number is None."""
        return {
            "singular_values": self.singular_values.tolist(),
            "condition_number": [value if math.isfinite(value) else None for value in self.condition_number.tolist()],
            "frobenius_norm": self.frobenius_norm.tolist(),
            "expected_squared_length": self.expected_squared_length.tolist(),
            "estimated_squared_length": self.estimated_squared_length.tolist(),
            "standard_error": self.standard_error.tolist(),
            "relative_error": self.relative_error.tolist(),
            "image_shape": list(self.image_shape),
            "latent_shape": list(self.latent_shape),
            "noise_draws": self.noise_draws,
        }


def jacobian_spectrum(
    synthesis_fn: Callable[[Tensor], Tensor],
    ws: Tensor,
    crop: Crop | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    *,
    noise_draws: int = 256,
    seed: int = 0,
    chunk_size: int | None = None,
) -> JacobianSpectrum:
    r"""Compute the exact Jacobian of ``synthesis_fn`` at each latent of ``ws`` and compare it with the estimator.

    For latent k the Jacobian J of the flattened image (C*H*W outputs) with respect to the flattened
    latent (L*D inputs) comes from ``torch.func.jacrev``. Its singular values (``torch.linalg.svdvals``
    in float64) give the condition number and ||J||_F. Path length regularization estimates

    .. math:: E_y[\lVert J^T y \rVert^2] / L = \lVert J \rVert_F^2 / (H W L), \quad y \sim N(0, I/(H W)),

    and this function measures that estimate with :func:`pathlength.path_lengths` over
    ``noise_draws`` draws of y, so ``relative_error`` shows whether the training statistic matches
    the exact value (it should be within a few ``standard_error``).

    ``synthesis_fn`` must be deterministic and per-sample: map ws [B, L, D] (or [B, D]) to images
    [B, C, H, W] with no interaction between samples, for example
    ``lambda ws: generator.synthesis(ws, noise_mode="const")``.

    Args:
        synthesis_fn: the function to differentiate.
        ws: the latents to measure, [K, L, D] or [K, D]; K is small (each needs one Jacobian).
        crop: optional (top, left, height, width) window of the image; only those pixels are
            differentiated, and H, W in the formula are the window's.
        max_elements: the largest Jacobian (elements of one J) to build.
        noise_draws: draws of y for the estimate.
        seed: seed of the draws of y.
        chunk_size: passed to ``jacrev`` to compute the Jacobian in chunks of rows, which lowers
            peak memory.

    Returns:
        `JacobianSpectrum`.

    Raises:
        JacobianTooLargeError (a ValueError): when one Jacobian would have more than ``max_elements``
            elements. The message gives its size in elements and bytes, and a crop that fits.
        ValueError: on ``ws`` of the wrong rank or an invalid crop.

    Example:
        >>> A = torch.randn(16, 8, dtype=torch.float64)
        >>> spectrum = jacobian_spectrum(lambda ws: (ws @ A.T).reshape(-1, 1, 4, 4), torch.randn(2, 8, dtype=torch.float64))
        >>> torch.allclose(spectrum.singular_values[0], torch.linalg.svdvals(A))
        True
    """
    if ws.ndim not in (2, 3):
        raise ValueError(f"ws must have shape [K, D] (W) or [K, L, D] (W+), got shape {tuple(ws.shape)}")
    max_elements = check_positive_int("max_elements", max_elements)
    noise_draws = check_positive_int("noise_draws", noise_draws)

    ws = ws.detach()
    with torch.no_grad():
        full_shape = tuple(synthesis_fn(ws[:1]).shape[1:])
    if len(full_shape) != 3:
        raise ValueError(f"synthesis_fn must return images [B, C, H, W], got shape [B, {', '.join(map(str, full_shape))}]")
    window = _check_crop(crop, full_shape)

    def cropped(latents: Tensor) -> Tensor:
        images = synthesis_fn(latents)
        return images[..., window[0] : window[0] + window[2], window[1] : window[1] + window[3]]

    channels, height, width = full_shape[0], window[2], window[3]
    num_outputs = channels * height * width
    num_inputs = math.prod(ws.shape[1:])
    _check_size(num_outputs, num_inputs, full_shape, tuple(ws.shape[1:]), crop, max_elements, ws.element_size())

    layers = latent_layers(ws)
    scale = height * width * layers
    results: dict[str, list[Tensor]] = {name: [] for name in ("singular", "expected", "estimated", "error")}

    for index in range(ws.shape[0]):
        jacobian = jacrev(lambda latent: cropped(latent.unsqueeze(0)).squeeze(0), chunk_size=chunk_size)(ws[index])
        matrix = jacobian.reshape(num_outputs, num_inputs).detach().to(device="cpu", dtype=torch.float64)
        singular = torch.linalg.svdvals(matrix)

        rng = sample_generator(seed, index)
        estimated = _estimated_squared_length(cropped, ws[index], noise_draws, rng)

        results["singular"].append(singular)
        results["expected"].append(singular.square().sum() / scale)
        results["estimated"].append(estimated)
        results["error"].append(torch.sqrt(2 * singular.pow(4).sum() / noise_draws) / scale)

    singular_values = torch.stack(results["singular"])
    expected = torch.stack(results["expected"])
    estimated = torch.stack(results["estimated"])
    largest, smallest = singular_values[:, 0], singular_values[:, -1]
    condition = torch.where(smallest > 0, largest / smallest.clamp(min=torch.finfo(torch.float64).tiny), torch.full_like(largest, math.inf))
    relative_error = torch.where(expected > 0, (estimated - expected).abs() / expected.clamp(min=torch.finfo(torch.float64).tiny), (estimated - expected).abs())

    return JacobianSpectrum(
        singular_values=singular_values,
        condition_number=condition,
        frobenius_norm=singular_values.square().sum(dim=1).sqrt(),
        expected_squared_length=expected,
        estimated_squared_length=estimated,
        standard_error=torch.stack(results["error"]),
        relative_error=relative_error,
        image_shape=(channels, height, width),
        latent_shape=tuple(ws.shape[1:]),
        noise_draws=noise_draws,
    )


def _estimated_squared_length(
    cropped: Callable[[Tensor], Tensor], latent: Tensor, noise_draws: int, rng: torch.Generator
) -> Tensor:
    with torch.enable_grad():
        ws = latent.unsqueeze(0).repeat_interleave(noise_draws, dim=0).requires_grad_(True)
        images = cropped(ws)
        noise = scaled_noise(tuple(images.shape), rng).to(device=images.device)
        lengths = measured_path_lengths(images, ws, noise, depends_on(images, ws))
    return lengths.double().square().mean().cpu()


def _check_crop(crop: Crop | None, image_shape: tuple[int, ...]) -> Crop:
    _, height, width = image_shape
    if crop is None:
        return (0, 0, height, width)

    if len(crop) != 4 or any(isinstance(value, bool) or not isinstance(value, int) for value in crop):
        raise ValueError(f"crop must be four integers (top, left, height, width), got {crop!r}")
    top, left, crop_height, crop_width = crop
    fits = top >= 0 and left >= 0 and crop_height >= 1 and crop_width >= 1 and top + crop_height <= height and left + crop_width <= width
    if not fits:
        raise ValueError(
            f"crop (top, left, height, width) = {crop} does not fit in the {height}x{width} image; "
            "use a window with positive size inside the image"
        )
    return (top, left, crop_height, crop_width)


def _check_size(
    num_outputs: int,
    num_inputs: int,
    image_shape: tuple[int, ...],
    latent_shape: tuple[int, ...],
    crop: Crop | None,
    max_elements: int,
    element_size: int,
) -> None:
    elements = num_outputs * num_inputs
    if elements <= max_elements:
        return

    channels = image_shape[0]
    side = math.isqrt(max_elements // (channels * num_inputs)) if max_elements >= channels * num_inputs else 0
    measured = "the crop" if crop is not None else f"the {'x'.join(map(str, image_shape))} image"
    if side >= 1:
        advice = f"pass crop=(top, left, {side}, {side}) or smaller to measure a window, or raise max_elements"
    else:
        advice = f"even one pixel needs {channels * num_inputs} elements, so raise max_elements to at least that"
    raise JacobianTooLargeError(
        f"the Jacobian of {measured} ({num_outputs} outputs) with respect to ws of shape "
        f"{list(latent_shape)} ({num_inputs} inputs) would have {elements} elements "
        f"({elements * element_size / 2**20:.1f} MiB at {element_size} bytes each), above "
        f"max_elements={max_elements}; {advice}"
    )
