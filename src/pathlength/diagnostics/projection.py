"""Projection (GAN inversion): find the latent w whose image matches a target, by optimising w with
Adam, as StyleGAN2's projector does. A generator that inverts well has a smooth, well-conditioned
mapping from w to images, which path length regularization encourages."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from pathlength.diagnostics.distances import Distance, PixelDistance
from pathlength.diagnostics.protocol import (
    GeneratorLike,
    check_generator,
    check_positive_int,
    draw_labels,
    module_device_dtype,
    run_mapping,
    run_synthesis,
)

logger = logging.getLogger(__name__)

NOISE_BUFFER_SUFFIX = "noise_const"
# Images in [-1, 1] span a range of 2, the peak value of PSNR.
DATA_RANGE = 2.0


@dataclass(frozen=True)
class ProjectionResult:
    """Outcome of `project`, one entry per target image.

    Attributes:
        ws: the projected latents [B, num_ws, w_dim] (or [B, w_dim] for plain W), detached.
        images: the generator's images for ``ws`` [B, C, H, W], detached.
        psnr: [B] PSNR in dB against the targets, 10 * log10(2^2 / MSE) for images in [-1, 1];
            inf for an exact match.
        distance: [B] the optimised distance between the final images and the targets.
        losses: the total loss at each step (summed over the batch, or over targets when they were
            projected one at a time).
        noise: with ``optimize_noise``, one dict per target of its optimised noise maps by buffer
            name; else None.
        settings: steps, distance name, learning rate and the other arguments.
    """

    ws: Tensor
    images: Tensor
    psnr: Tensor
    distance: Tensor
    losses: list[float]
    noise: list[dict[str, Tensor]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the per-image PSNR and distance, the losses and the settings."""
        return {
            "psnr": [value if math.isfinite(value) else None for value in self.psnr.tolist()],
            "distance": self.distance.tolist(),
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": list(self.losses),
            "settings": dict(self.settings),
        }


def psnr(images: Tensor, targets: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Return the PSNR [B] in dB, 10 * log10(data_range^2 / MSE), per image; inf where MSE is 0.

    Example:
        >>> psnr(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.02))
        tensor([40.])
    """
    mse = (images.detach().double() - targets.detach().double()).square().flatten(1).mean(dim=1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def learning_rate_factor(progress: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """Return the learning rate multiplier at ``progress`` in [0, 1] of the projection.

    It rises linearly from 0 over the first ``rampup`` of the steps, stays at 1, and falls along
    half a cosine to 0 over the last ``rampdown``. Example:
        >>> learning_rate_factor(0.5)
        1.0
    """
    down = min(1.0, (1.0 - progress) / rampdown)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    return down * min(1.0, progress / rampup)


def w_noise_scale(progress: float, w_std: float, initial_noise_factor: float = 0.05, noise_ramp_length: float = 0.75) -> float:
    """Return the std of the noise added to w at ``progress``: w_std * factor * max(0, 1 - progress / length)^2.

    The noise explores the latent space early and falls to 0 after ``noise_ramp_length`` of the steps.
    """
    return w_std * initial_noise_factor * max(0.0, 1.0 - progress / noise_ramp_length) ** 2


def noise_regularization(noise: list[Tensor]) -> Tensor:
    r"""Penalise spatial autocorrelation of noise maps at several scales.

    For each map [H, W] (or [..., H, W]) and each scale, down to 8x8 by 2x2 average pooling, the
    squared mean products with the map shifted by one pixel along x and along y are added:

    .. math:: \sum_{\text{scales}} (\operatorname{mean}(n \cdot \operatorname{roll}_x(n))^2 + \operatorname{mean}(n \cdot \operatorname{roll}_y(n))^2)

    Optimised noise maps would otherwise absorb the image's structure instead of staying white noise.
    """
    total = noise[0].new_zeros(())
    for buffer in noise:
        value = buffer.reshape(1, 1, *buffer.shape[-2:])
        while True:
            total = total + (value * torch.roll(value, shifts=1, dims=3)).mean().square()
            total = total + (value * torch.roll(value, shifts=1, dims=2)).mean().square()
            if min(value.shape[-2:]) <= 8:
                break
            value = F.avg_pool2d(value, kernel_size=2)
    return total


def project(
    generator: GeneratorLike,
    target_images: Tensor,
    steps: int = 1000,
    distance: Distance | None = None,
    optimize_noise: bool = False,
    seed: int = 0,
    *,
    initial_learning_rate: float = 0.1,
    lr_rampup: float = 0.05,
    lr_rampdown: float = 0.25,
    initial_noise_factor: float = 0.05,
    noise_ramp_length: float = 0.75,
    noise_regularize_weight: float = 1e5,
    num_w_samples: int = 10000,
    w_plus: bool = False,
    labels: Tensor | None = None,
) -> ProjectionResult:
    r"""Find latents w whose images match ``target_images``.

    The method and its defaults follow ``projector.py`` of stylegan2-ada-pytorch, except for the
    start point, the default distance and noise optimisation being optional:

    1. Estimate the mean and spread of w from ``num_w_samples`` samples of the mapping network:
       w_std = sqrt(mean ||w - mean(w)||^2).
    2. Start every target at the mapping network's tracked ``w_avg`` (when it has one that is not all
       zeros), else at the sampled mean. One w per image is optimised and broadcast to all layers
       (W); ``w_plus=True`` optimises one w per layer instead.
    3. For ``steps`` steps: set Adam's learning rate to ``initial_learning_rate`` times
       `learning_rate_factor` (linear ramp up, cosine ramp down), add Gaussian noise of std
       `w_noise_scale` to w (large early, 0 after ``noise_ramp_length`` of the steps), synthesise with
       ``noise_mode="const"``, and minimise ``sum_b distance(image_b, target_b)``.
    4. With ``optimize_noise``, the synthesis network's ``*noise_const`` buffers are replaced by
       optimised maps that start as N(0, 1) draws. The loss then adds
       ``noise_regularize_weight * noise_regularization(maps)``, and after each step every map is
       renormalised to zero mean and unit variance. Targets are then projected one at a time,
       because the maps are shared by the batch.

    The distance defaults to `PixelDistance` (mean squared error), which optimises PSNR directly;
    StyleGAN2 uses LPIPS, which `LPIPSDistance` provides from local weights.

    Args:
        generator: a `GeneratorLike` whose synthesis accepts ``noise_mode``.
        target_images: [B, C, H, W] or [C, H, W] in [-1, 1] with the generator's channels and
            resolution (convert and resize images first).
        steps: optimisation steps.
        distance: a `Distance`; None uses `PixelDistance`.
        optimize_noise: also optimise the noise inputs (see step 4).
        seed: seed of the w samples, the noise maps and the noise added to w.
        initial_learning_rate, lr_rampup, lr_rampdown: the learning rate schedule.
        initial_noise_factor, noise_ramp_length: the schedule of the noise added to w.
        noise_regularize_weight: weight of the noise regularization.
        num_w_samples: samples of the mapping network for the w statistics.
        w_plus: optimise one w per synthesis layer.
        labels: one label [c_dim] (or [1, c_dim]) for a conditional generator's w statistics;
            uniform one-hot draws when None.

    Returns:
        `ProjectionResult` with the final ws, images, PSNR (dB) and distance.

    Raises:
        ValueError: when the targets do not match the generator's image shape, a count is not
            positive, or ``optimize_noise`` is on and the synthesis network has no noise buffers.

    Example:
        >>> from pathlength.models import Generator
        >>> generator = Generator(z_dim=16, w_dim=16, img_resolution=8, channel_base=64, channel_max=16)
        >>> target = generator.synthesis(generator.mapping(torch.randn(1, 16)), noise_mode="const").detach()
        >>> result = project(generator, target, steps=200)
        >>> result.psnr.shape
        torch.Size([1])
    """
    check_generator(generator)
    steps = check_positive_int("steps", steps)
    num_w_samples = check_positive_int("num_w_samples", num_w_samples)
    distance = PixelDistance() if distance is None else distance
    device, dtype = module_device_dtype(generator)
    if isinstance(distance, torch.nn.Module):
        distance.to(device)
    targets = _check_targets(generator, target_images).to(device=device, dtype=dtype)

    rng = torch.Generator().manual_seed(seed)
    w_start, w_std = _w_statistics(generator, num_w_samples, rng, labels, device, dtype)
    noise_names = _noise_buffer_names(generator) if optimize_noise else []
    if optimize_noise and not noise_names:
        raise ValueError(
            f"optimize_noise=True needs noise buffers named '*{NOISE_BUFFER_SUFFIX}' in generator.synthesis, "
            f"found none in {type(generator.synthesis).__name__}; pass optimize_noise=False"
        )

    schedule = {
        "steps": steps,
        "initial_learning_rate": initial_learning_rate,
        "lr_rampup": lr_rampup,
        "lr_rampdown": lr_rampdown,
        "initial_noise_factor": initial_noise_factor,
        "noise_ramp_length": noise_ramp_length,
        "noise_regularize_weight": noise_regularize_weight,
    }
    groups = [slice(index, index + 1) for index in range(targets.shape[0])] if optimize_noise else [slice(None)]

    ws_parts, noise_parts, losses = [], [], []
    for group in groups:
        with torch.enable_grad():
            ws, noise, group_losses = _optimize(generator, targets[group], distance, w_start, w_std, noise_names, w_plus, rng, schedule)
        ws_parts.append(ws)
        noise_parts.append(noise)
        losses = [total + loss for total, loss in zip(losses, group_losses)] if losses else group_losses

    ws = torch.cat(ws_parts)
    with torch.no_grad():
        images = torch.cat([_synthesize(generator, ws_part, noise) for ws_part, noise in zip(ws_parts, noise_parts)])
        final_distance = distance(images, targets).detach()

    settings = dict(
        schedule,
        distance=getattr(distance, "name", type(distance).__name__),
        optimize_noise=optimize_noise,
        seed=seed,
        w_plus=w_plus,
        w_std=w_std,
    )
    return ProjectionResult(
        ws=ws,
        images=images.detach(),
        psnr=psnr(images, targets),
        distance=final_distance,
        losses=losses,
        noise=noise_parts if optimize_noise else None,
        settings=settings,
    )


def _optimize(
    generator: GeneratorLike,
    targets: Tensor,
    distance: Distance,
    w_start: Tensor,
    w_std: float,
    noise_names: list[str],
    w_plus: bool,
    rng: torch.Generator,
    schedule: dict[str, Any],
) -> tuple[Tensor, dict[str, Tensor], list[float]]:
    batch = targets.shape[0]
    num_ws = generator.num_ws
    layers = num_ws if (w_plus and num_ws is not None) else 1
    w_opt = w_start.reshape(1, 1, -1).repeat(batch, layers, 1).clone().requires_grad_(True)

    buffers = dict(generator.synthesis.named_buffers())
    noise = {name: torch.randn(buffers[name].shape, generator=rng).to(w_opt).requires_grad_(True) for name in noise_names}
    variables = [w_opt, *noise.values()]
    optimizer = torch.optim.Adam(variables, lr=schedule["initial_learning_rate"], betas=(0.9, 0.999))

    steps = schedule["steps"]
    losses = []
    for step in range(steps):
        progress = step / steps
        for group in optimizer.param_groups:
            group["lr"] = schedule["initial_learning_rate"] * learning_rate_factor(progress, schedule["lr_rampup"], schedule["lr_rampdown"])

        scale = w_noise_scale(progress, w_std, schedule["initial_noise_factor"], schedule["noise_ramp_length"])
        w_noise = torch.randn(w_opt.shape, generator=rng).to(w_opt) * scale
        images = _synthesize(generator, _expand(generator, w_opt + w_noise), noise)

        loss = distance(images, targets).sum()
        if noise:
            loss = loss + schedule["noise_regularize_weight"] * noise_regularization(list(noise.values()))

        # Gradients go to the optimised variables only, so the generator's .grad fields stay untouched.
        gradients = torch.autograd.grad(loss, variables)
        for variable, gradient in zip(variables, gradients):
            variable.grad = gradient
        optimizer.step()
        losses.append(float(loss.detach()))

        # Renormalising keeps the optimised maps white noise of the variance the generator was trained on.
        with torch.no_grad():
            for buffer in noise.values():
                buffer.sub_(buffer.mean()).div_(buffer.std().clamp(min=1e-8))

    logger.info("Projected %d image(s) in %d steps: final loss %.6g", batch, steps, losses[-1])
    return _expand(generator, w_opt.detach()), {name: value.detach() for name, value in noise.items()}, losses


def _expand(generator: GeneratorLike, w: Tensor) -> Tensor:
    # w is [B, 1, D] or [B, L, D]; the synthesis network takes [B, num_ws, D] or, for plain W, [B, D].
    if generator.num_ws is None:
        return w[:, 0]
    return w.expand(-1, generator.num_ws, -1)


def _synthesize(generator: GeneratorLike, ws: Tensor, noise: dict[str, Tensor]) -> Tensor:
    if not noise:
        return run_synthesis(generator, ws, "const")
    return functional_call(generator.synthesis, noise, (ws,), {"noise_mode": "const"}, strict=False)


def _noise_buffer_names(generator: GeneratorLike) -> list[str]:
    synthesis = generator.synthesis
    if not isinstance(synthesis, torch.nn.Module):
        return []
    return [name for name, _ in synthesis.named_buffers() if name.endswith(NOISE_BUFFER_SUFFIX)]


def _w_statistics(
    generator: GeneratorLike,
    num_w_samples: int,
    rng: torch.Generator,
    labels: Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, float]:
    z = torch.randn(num_w_samples, generator.z_dim, generator=rng).to(device=device, dtype=dtype)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=dtype, device=device)
        c_dim = int(getattr(generator, "c_dim", 0) or 0)
        if labels.numel() != c_dim or c_dim == 0:
            raise ValueError(
                f"labels must be one label [c_dim] with c_dim={c_dim} for the w statistics, got shape "
                f"{list(labels.shape)}; pass None for an unconditional generator"
            )
        labels = labels.reshape(1, c_dim).expand(num_w_samples, -1)
    else:
        labels = draw_labels(generator, num_w_samples, rng)
        labels = labels.to(device=device, dtype=dtype) if labels is not None else None

    with torch.no_grad():
        ws = run_mapping(generator, z, labels)
    samples = ws[:, 0] if ws.ndim == 3 else ws
    sample_mean = samples.mean(dim=0)
    w_std = float((samples - sample_mean).square().sum(dim=1).mean().sqrt())

    tracked = getattr(generator.mapping, "w_avg", None)
    if isinstance(tracked, Tensor) and tracked.shape == sample_mean.shape and bool(tracked.abs().sum() > 0):
        return tracked.detach().to(device=device, dtype=dtype).clone(), w_std

    logger.info("The mapping network has no tracked w_avg (or it is all zeros); starting from the mean of %d sampled w", num_w_samples)
    return sample_mean, w_std


def _check_targets(generator: GeneratorLike, target_images: Tensor) -> Tensor:
    targets = torch.as_tensor(target_images).detach()
    if targets.ndim == 3:
        targets = targets.unsqueeze(0)
    expected = [generator.img_channels, generator.img_resolution, generator.img_resolution]
    if targets.ndim != 4 or list(targets.shape[1:]) != expected or not targets.is_floating_point():
        raise ValueError(
            f"target_images must be float images [B, {', '.join(map(str, expected))}] in [-1, 1] for this "
            f"generator, got {targets.dtype} {list(targets.shape)}; convert the channels and resize first"
        )
    if targets.shape[0] == 0:
        raise ValueError("target_images contains no images; pass at least one image [C, H, W]")
    return targets
