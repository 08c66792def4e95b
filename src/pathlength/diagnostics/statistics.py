"""Distribution of the path lengths ||J_w^T y|| that path length regularization drives towards a constant.

These are the lengths the training penalty sees (the same `path_lengths` function), measured over
many latents and noise draws. Their spread, not their scale, shows what the regularizer did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pathlength.diagnostics.protocol import (
    GeneratorLike,
    batch_slices,
    check_generator,
    check_noise_mode,
    check_positive_int,
    depends_on,
    draw_labels,
    measured_path_lengths,
    module_device_dtype,
    run_mapping,
    run_synthesis,
    sample_generator,
    scaled_noise,
    seeded_global_rng,
)

logger = logging.getLogger(__name__)

DEFAULT_QUANTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)


@dataclass(frozen=True)
class PathLengthStatistics:
    r"""Summary of path lengths measured over ``num_latents`` latents and ``noise_draws`` y per latent.

    Attributes:
        lengths: float32 tensor [num_latents, noise_draws] of the measured lengths (on the CPU).
        mean, std: mean and population standard deviation (ddof=0) of all lengths.
        cv: coefficient of variation std / mean; 0.0 when every length is 0.
        cv_within: spread over directions y at a fixed w, sqrt(mean_i s_i^2) / mean, or None with
            fewer than two draws per latent.
        cv_between: spread of the per-latent mean length across w, with the noise of the finite
            draws removed (see below), or None with fewer than two latents.
        mean_square: mean of length^2, an estimate of E||J||_F^2 / (H * W * L).
        quantiles: percent (1.0, 5.0, ...) to the length at that percentile (linear interpolation).
        histogram_counts, histogram_edges: ``numpy.histogram`` of the lengths (len(edges) = bins + 1).
        settings: the arguments of the measurement (seed, noise_mode, truncation_psi, ...).

    ``cv`` pools two kinds of variation: lengths differ between directions y at one w, and the
    typical length differs between latents w. Path length regularization aims at both, so the two
    parts are also reported separately. With m_i and s_i^2 the mean and sample variance (ddof=1) of
    the ``draws`` lengths of latent i, and var_i the sample variance (ddof=1) over the N latents:

    .. math::

        cv_{within} = \sqrt{mean_i(s_i^2)} / mean, \qquad
        cv_{between} = \sqrt{\max(0, var_i(m_i) - mean_i(s_i^2) / draws)} / mean.

    ``cv_between`` is the one-way random-effects ANOVA estimator: var_i(m_i) also contains the
    direction noise of each mean, mean_i(s_i^2) / draws, which is subtracted. With one draw per latent
    s_i^2 is undefined, so ``cv_between`` is the sample standard deviation of the lengths over latents
    divided by the mean, and then it also contains the spread over directions. Both are 0 when every
    length is 0. For many latents cv^2 is close to cv_within^2 + cv_between^2.
    """

    lengths: Tensor
    mean: float
    std: float
    cv: float
    cv_within: float | None
    cv_between: float | None
    mean_square: float
    quantiles: dict[float, float]
    histogram_counts: list[int]
    histogram_edges: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_lengths: bool = False) -> dict[str, Any]:
        """Return a JSON-serialisable dict; quantile keys are the percents as strings ("1", "50")."""
        result: dict[str, Any] = {
            "num_latents": int(self.lengths.shape[0]),
            "noise_draws": int(self.lengths.shape[1]),
            "num_lengths": int(self.lengths.numel()),
            "mean": self.mean,
            "std": self.std,
            "cv": self.cv,
            "cv_within": self.cv_within,
            "cv_between": self.cv_between,
            "mean_square": self.mean_square,
            "quantiles": {f"{percent:g}": value for percent, value in self.quantiles.items()},
            "histogram": {"counts": list(self.histogram_counts), "edges": list(self.histogram_edges)},
            "settings": dict(self.settings),
        }
        if include_lengths:
            result["lengths"] = self.lengths.tolist()
        return result


def path_length_statistics(
    generator: GeneratorLike,
    num_latents: int = 1024,
    noise_draws: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    *,
    truncation_psi: float = 1.0,
    noise_mode: str | None = "const",
    bins: int = 32,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
) -> PathLengthStatistics:
    r"""Measure the distribution of the training statistic ||J_w^T y||_2 of a generator.

    For each of ``num_latents`` latents z ~ N(0, I) (with uniform one-hot labels for a conditional
    generator), ws = mapping(z) is computed once and the length

    .. math:: \ell = \lVert J_w^T y \rVert_2, \quad y \sim N(0, I / (H W))

    is measured for ``noise_draws`` independent y with :func:`pathlength.path_lengths`, the function
    the penalty uses (W+ latents average the squared gradient over the L layers). So
    E[length^2] = ||J||_F^2 / (H * W * L), and ``mean`` is the value ``pl_mean`` tracks in training.

    These lengths are the regularizer's training statistic, not perceptual path length (PPL): they
    use random image-space directions y and no perceptual distance, while PPL measures image changes
    along interpolation paths with a distance network. The two numbers are not comparable, and
    neither is comparable between generators with different image sizes or latent layouts.

    Every random number is drawn per latent from seeds derived from ``seed`` (see
    ``sample_generator``), so ``batch_size`` changes speed and memory, not the result. With
    ``noise_mode="random"`` the generator's own noise inputs come from the global RNG, seeded with
    ``seed`` and restored afterwards, so the result then also depends on the batch size. A generator
    whose images do not depend on ws at all has length 0 everywhere.

    Args:
        generator: a `GeneratorLike` (the reference StyleGAN2 generator or any object with
            ``mapping`` and ``synthesis``).
        num_latents: number of latents z.
        noise_draws: number of y per latent.
        batch_size: latents per forward pass; each pass runs ``batch_size * noise_draws`` images.
        seed: seed of every draw.
        truncation_psi: passed to the mapping network when not 1.
        noise_mode: passed to the synthesis network ("const" by default so the measurement is
            repeatable); None passes nothing.
        bins: histogram bins.
        quantiles: percents in [0, 100] to report.

    Returns:
        `PathLengthStatistics`; ``to_dict()`` gives the JSON form.

    Raises:
        ValueError: when a count is not a positive integer, a quantile is outside [0, 100] or
            ``noise_mode`` is unknown.
        TypeError: when ``generator`` lacks the `GeneratorLike` attributes.

    Example:
        >>> from pathlength.models import Generator
        >>> generator = Generator(z_dim=16, w_dim=16, img_resolution=8, channel_base=64, channel_max=16)
        >>> stats = path_length_statistics(generator, num_latents=32, noise_draws=2)
        >>> stats.lengths.shape, stats.to_dict()["quantiles"].keys()
        (torch.Size([32, 2]), dict_keys(['1', '5', '25', '50', '75', '95', '99']))
    """
    check_generator(generator)
    num_latents = check_positive_int("num_latents", num_latents)
    noise_draws = check_positive_int("noise_draws", noise_draws)
    batch_size = check_positive_int("batch_size", batch_size)
    bins = check_positive_int("bins", bins)
    check_noise_mode(noise_mode)
    for percent in quantiles:
        if not 0 <= percent <= 100:
            raise ValueError(f"quantiles must be percents in [0, 100], got {percent!r}")

    device, dtype = module_device_dtype(generator)

    # All latents and labels are drawn up front, so batching never changes them.
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num_latents, generator.z_dim, generator=rng)
    labels = draw_labels(generator, num_latents, rng)

    batches = []
    connected: bool | None = None
    with torch.enable_grad(), seeded_global_rng(seed, device):
        for part in batch_slices(num_latents, batch_size):
            batch_z = z[part].to(device=device, dtype=dtype)
            batch_labels = labels[part].to(device=device, dtype=dtype) if labels is not None else None
            with torch.no_grad():
                ws = run_mapping(generator, batch_z, batch_labels, truncation_psi)

            # Each latent is repeated once per noise draw, so one backward pass measures all draws.
            ws = ws.detach().repeat_interleave(noise_draws, dim=0).requires_grad_(True)
            images = run_synthesis(generator, ws, noise_mode)
            noise = _noise_for_latents(range(part.start, part.stop), noise_draws, tuple(images.shape[1:]), seed)
            noise = noise.to(device=images.device, dtype=torch.float32)

            if connected is None:
                connected = depends_on(images, ws)
                if not connected:
                    logger.info("The images do not depend on ws; every path length is 0")
            lengths = measured_path_lengths(images, ws, noise, connected)
            batches.append(lengths.float().cpu().reshape(-1, noise_draws))

    all_lengths = torch.cat(batches)
    settings = {
        "seed": seed,
        "batch_size": batch_size,
        "truncation_psi": truncation_psi,
        "noise_mode": noise_mode,
    }
    return summarize_lengths(all_lengths, bins=bins, quantiles=quantiles, settings=settings)


def summarize_lengths(
    lengths: Tensor,
    bins: int = 32,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    settings: dict[str, Any] | None = None,
) -> PathLengthStatistics:
    """Summarize a tensor of path lengths [N, draws] (or [N], one draw each) into `PathLengthStatistics`.

    Statistics are computed in float64. `PathLengthStatistics` gives the formulas of ``cv_within``
    and ``cv_between``. Raises ValueError when a length is NaN or inf. Example:
        >>> stats = summarize_lengths(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
        >>> stats.mean, round(stats.cv_within, 4), stats.cv_between
        (2.0, 0.5, 0.0)
    """
    if lengths.ndim == 1:
        lengths = lengths.unsqueeze(1)
    rows = lengths.detach().double().cpu().numpy().reshape(lengths.shape[0], -1)
    values = rows.reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError(
            f"{int((~np.isfinite(values)).sum())} of {values.size} path lengths are NaN or inf; "
            "check the generator's output for non-finite values"
        )

    mean = float(values.mean())
    std = float(values.std())
    # Lengths are non-negative, so a zero mean means every length is 0 and there is no variation.
    cv = std / mean if mean > 0 else 0.0
    cv_within, cv_between = _split_variation(rows, mean)
    counts, edges = np.histogram(values, bins=bins)

    return PathLengthStatistics(
        lengths=lengths.detach().float().cpu(),
        mean=mean,
        std=std,
        cv=cv,
        cv_within=cv_within,
        cv_between=cv_between,
        mean_square=float(np.square(values).mean()),
        quantiles={float(percent): float(np.percentile(values, percent)) for percent in quantiles},
        histogram_counts=[int(count) for count in counts],
        histogram_edges=[float(edge) for edge in edges],
        settings=dict(settings or {}),
    )


def _split_variation(rows: np.ndarray, mean: float) -> tuple[float | None, float | None]:
    # Returns (cv_within, cv_between) of float64 lengths [N, draws], as PathLengthStatistics defines them.
    num_latents, draws = rows.shape
    within_variance = float(rows.var(axis=1, ddof=1).mean()) if draws >= 2 else None
    if num_latents >= 2:
        between_variance = float(rows.mean(axis=1).var(ddof=1))
        if within_variance is not None:
            # Each latent's mean carries the direction noise s_i^2 / draws, so it is removed.
            between_variance = max(0.0, between_variance - within_variance / draws)
    else:
        between_variance = None

    if mean <= 0:
        # Lengths are non-negative, so a zero mean means every length is 0.
        return (None if within_variance is None else 0.0), (None if between_variance is None else 0.0)
    cv_within = None if within_variance is None else float(np.sqrt(within_variance)) / mean
    cv_between = None if between_variance is None else float(np.sqrt(between_variance)) / mean
    return cv_within, cv_between


def _noise_for_latents(indices: range, noise_draws: int, image_shape: tuple[int, ...], seed: int) -> Tensor:
    # Sample i's noise comes from its own seeded generator, so it is the same in any batch.
    draws = [scaled_noise((noise_draws, *image_shape), sample_generator(seed, index)) for index in indices]
    return torch.cat(draws)
