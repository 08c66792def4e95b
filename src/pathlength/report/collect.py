"""Collection of one run's numbers for a comparison: path-length statistics, the condition number of
the exact Jacobian J_w, perceptual path length, the classifier Frechet distance, projection PSNR on
fixed dataset images, and the training curves of its metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pathlength.data import ImageDataset, load_dataset
from pathlength.diagnostics import (
    DigitsClassifier,
    FeatureDistance,
    FrechetDistanceResult,
    JacobianSpectrum,
    JacobianTooLargeError,
    PathLengthStatistics,
    PerceptualPathLengthResult,
    ProjectionResult,
    classifier_frechet_distance,
    jacobian_spectrum,
    path_length_statistics,
    perceptual_path_length,
    project,
)
from pathlength.diagnostics.jacobian import DEFAULT_MAX_ELEMENTS
from pathlength.diagnostics.protocol import (
    GeneratorLike,
    check_generator,
    check_positive_int,
    draw_labels,
    module_device_dtype,
    run_mapping,
    run_synthesis,
)
from pathlength.report.files import json_ready
from pathlength.training.checkpoint import CHECKPOINTS_DIRNAME, load_generator, read_checkpoint_info, resolve_checkpoint

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"

# Only the singular values are reported, so the path length estimate that jacobian_spectrum also
# checks needs just a few draws of y.
JACOBIAN_NOISE_DRAWS = 8
# The largest Jacobian (elements of one J_w) a comparison builds; larger ones are skipped with a warning.
JACOBIAN_MAX_ELEMENTS = DEFAULT_MAX_ELEMENTS


@dataclass(frozen=True)
class MeasureSettings:
    """Settings shared by every run of a comparison, so all runs are measured on the same draws.

    Attributes:
        num: latents for the path-length statistics, paths for PPL and generated images for the
            Frechet distance.
        noise_draws: projection directions y per latent for the path-length statistics.
        projection_targets: dataset images every run projects (0 skips projection).
        projection_steps: optimisation steps of each projection.
        seed: seed of the latents, the noise, the PPL paths and the choice of projection targets.
        batch_size: latents per forward pass.
        ppl_epsilon: PPL step along the path, in units of the interpolation parameter t.
        frechet: measure the classifier Frechet distance.
        jacobian_latents: latents at which the exact Jacobian J_w gives the condition number
            (0 skips it).
    """

    num: int = 1024
    noise_draws: int = 4
    projection_targets: int = 16
    projection_steps: int = 1000
    seed: int = 0
    batch_size: int = 64
    ppl_epsilon: float = 1e-4
    frechet: bool = True
    jacobian_latents: int = 16

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict, with the fixed PPL choices spelled out."""
        return {
            "num": self.num,
            "noise_draws": self.noise_draws,
            "projection_targets": self.projection_targets,
            "projection_steps": self.projection_steps,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "ppl": {"space": "w", "sampling": "end", "distance": "feature", "epsilon": self.ppl_epsilon},
            "frechet": self.frechet,
            "jacobian": {"latents": self.jacobian_latents, "space": "w", "noise_mode": "const"},
        }


@dataclass
class RunMeasurement:
    """Everything measured on one run's generator, plus its logged training curves.

    Attributes:
        run: the path the user passed (a run folder or a checkpoint folder).
        checkpoint: the checkpoint folder that was measured.
        step: the training step of that checkpoint.
        network: "G_ema" or "G".
        config: the run's training config as a dict, or None when neither config.json nor the
            checkpoint records one.
        path_lengths: statistics of ||J_w^T y|| over ``settings.num`` latents.
        ppl: perceptual path length in W with endpoint sampling and the digits feature distance.
        frechet: the classifier Frechet distance, or None when it was skipped.
        projection: the projection of the comparison's targets, or None when there were none.
        jacobian: the spectrum of J_w at ``settings.jacobian_latents`` latents (see
            `measure_w_jacobian`), or None when it was turned off or too large to build.
        curves: the records of the run's metrics.jsonl, oldest first (empty when it has none).
    """

    run: str
    checkpoint: str
    step: int
    network: str
    config: dict[str, Any] | None
    path_lengths: PathLengthStatistics
    ppl: PerceptualPathLengthResult
    frechet: FrechetDistanceResult | None
    projection: ProjectionResult | None
    jacobian: JacobianSpectrum | None = None
    curves: list[dict[str, Any]] = field(default_factory=list)

    @property
    def projection_psnr(self) -> list[float]:
        """PSNR in dB of each projection target, in target order (inf for an exact match)."""
        return [] if self.projection is None else [float(value) for value in self.projection.psnr.tolist()]

    @property
    def ppl_kept_distances(self) -> np.ndarray:
        """The per-path PPL distances inside the percentile bounds, float64 on the CPU."""
        return self.ppl.distances.detach().cpu()[self.ppl.kept.cpu()].double().numpy()

    @property
    def jacobian_condition_median(self) -> float | None:
        """Median over the latents of the condition number of J_w, or None when it was not measured.

        It is inf when more than half of the Jacobians have a zero singular value.
        """
        if self.jacobian is None:
            return None
        return float(np.median(self.jacobian.condition_number.numpy()))

    def metric_values(self) -> dict[str, float | None]:
        """Return the headline numbers by metric key; None marks a metric that was not measured."""
        psnr = self.projection_psnr
        return {
            "cv": self.path_lengths.cv,
            "cv_between": self.path_lengths.cv_between,
            "cv_within": self.path_lengths.cv_within,
            "jacobian_condition_median": self.jacobian_condition_median,
            "ppl": float(self.ppl),
            "frechet_distance": None if self.frechet is None else self.frechet.value,
            "projection_psnr_median": float(np.median(psnr)) if psnr else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every number, including the curves and per-target PSNR.

        Infinite values (a rank-deficient Jacobian, an exact projection) become None.
        """
        kept = self.ppl_kept_distances
        config = self.config or {}
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "network": self.network,
            "pl_weight": config.get("pl_weight"),
            "seed": config.get("seed"),
            "data": config.get("data"),
            "metrics": json_ready(self.metric_values()),
            "path_lengths": self.path_lengths.to_dict(),
            "jacobian": self._jacobian_dict(),
            "ppl": dict(self.ppl.to_dict(), kept_quantiles=_quantiles(kept)),
            "frechet": None if self.frechet is None else self.frechet.to_dict(),
            "projection": None if self.projection is None else self.projection.to_dict(),
            "curves": self.curves,
        }

    def _jacobian_dict(self) -> dict[str, Any] | None:
        if self.jacobian is None:
            return None
        spectrum = self.jacobian
        return json_ready(
            {
                "num_latents": int(spectrum.condition_number.shape[0]),
                "image_shape": list(spectrum.image_shape),
                "latent_shape": list(spectrum.latent_shape),
                "condition_number": spectrum.condition_number.tolist(),
                "condition_number_median": self.jacobian_condition_median,
                # The median over latents of each singular value, largest first: the typical spectrum.
                "singular_values_median": np.median(spectrum.singular_values.numpy(), axis=0).tolist(),
            }
        )


def run_folder_of(checkpoint: str | os.PathLike) -> Path | None:
    """Return the run folder that contains ``checkpoint`` (``RUN/checkpoints/step-*``), or None."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == CHECKPOINTS_DIRNAME:
        return checkpoint.parent.parent
    return None


def read_run_config(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """Return the training config of the run that wrote ``checkpoint`` as a dict, or None.

    The run folder's config.json is read first; a checkpoint outside a run folder falls back to the
    config its checkpoint.json records. A config.json that is not valid JSON is logged and skipped.
    """
    run_folder = run_folder_of(checkpoint)
    if run_folder is not None and (run_folder / CONFIG_FILE).is_file():
        try:
            return json.loads((run_folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("Could not read %s (%s); using the config in the checkpoint", run_folder / CONFIG_FILE, error)

    config = read_checkpoint_info(checkpoint).get("config")
    return config if isinstance(config, dict) else None


def read_metrics_log(checkpoint: str | os.PathLike) -> list[dict[str, Any]]:
    """Return the records of the run's metrics.jsonl (one JSON object per line), oldest first.

    A run without the file gives an empty list. Lines that are not JSON objects (such as a line cut
    short by a crash) are skipped, with one warning naming the count.
    """
    run_folder = run_folder_of(checkpoint)
    if run_folder is None or not (run_folder / METRICS_FILE).is_file():
        return []

    records, skipped = [], 0
    for line in (run_folder / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    if skipped:
        logger.warning("Skipped %d lines of %s that are not JSON objects", skipped, run_folder / METRICS_FILE)
    return records


def load_run_dataset(config: dict[str, Any] | None, resolution: int, channels: int) -> ImageDataset:
    """Load the dataset a run trained on at the generator's ``resolution`` and ``channels``.

    Raises:
        DatasetError: when the run records no dataset or it cannot be loaded (for example a folder
            that has moved since training).
    """
    from pathlength.data import DatasetError

    source = None if config is None else config.get("data")
    if not isinstance(source, str) or not source:
        raise DatasetError("the run records no dataset (no 'data' in its config)")
    return load_dataset(source, resolution, channels)


def choose_target_indices(dataset_size: int, count: int, seed: int) -> list[int]:
    """Return ``count`` distinct dataset indices drawn uniformly with ``seed`` (in draw order).

    Raises:
        ValueError: when ``count`` exceeds ``dataset_size``.

    Example:
        >>> len(set(choose_target_indices(100, 8, seed=0)))
        8
    """
    if count > dataset_size:
        raise ValueError(f"projection targets is {count} but the dataset contains only {dataset_size} images; pass at most {dataset_size}")
    rng = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=rng)[:count].tolist()


def measure_w_jacobian(
    generator: GeneratorLike,
    num_latents: int,
    seed: int = 0,
    *,
    noise_draws: int = JACOBIAN_NOISE_DRAWS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    chunk_size: int | None = None,
) -> JacobianSpectrum:
    """Compute the exact Jacobian J_w of the images with respect to one w at ``num_latents`` latents.

    z ~ N(0, I) [num_latents, z_dim] comes from ``torch.Generator().manual_seed(seed)``, followed by
    uniform one-hot labels for a conditional generator, and ws = mapping(z, c) without truncation.
    The mapping network broadcasts one w to all layers, so for a W+ generator the first layer's w
    [K, D] is differentiated, with the synthesis network getting it on all ``num_ws`` layers and
    ``noise_mode="const"``. J_w then has shape [C*H*W, D] and is the sum of the per-layer Jacobians.
    Its condition number (largest over smallest singular value) is 1 for a generator that is a
    scaled isometry in w, which is what path length regularization pushes towards.

    Args:
        generator: a `GeneratorLike`.
        num_latents: K, the number of Jacobians (each costs C*H*W backward rows).
        seed: seed of z and the labels.
        noise_draws, max_elements, chunk_size: passed to `jacobian_spectrum`.

    Returns:
        `JacobianSpectrum` with ``latent_shape`` (D,).

    Raises:
        JacobianTooLargeError: when one J_w has more than ``max_elements`` elements.
        ValueError: when ``num_latents`` is not a positive integer.

    Example:
        >>> from pathlength.models import Generator
        >>> generator = Generator(z_dim=16, w_dim=16, img_resolution=8, channel_base=64, channel_max=16)
        >>> measure_w_jacobian(generator, num_latents=2).singular_values.shape
        torch.Size([2, 16])
    """
    check_generator(generator)
    num_latents = check_positive_int("num_latents", num_latents)
    device, dtype = module_device_dtype(generator)

    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num_latents, generator.z_dim, generator=rng).to(device=device, dtype=dtype)
    labels = draw_labels(generator, num_latents, rng)
    labels = labels.to(device=device, dtype=dtype) if labels is not None else None
    with torch.no_grad():
        ws = run_mapping(generator, z, labels)
    if ws.ndim == 3:
        ws = ws[:, 0]

    num_ws = generator.num_ws

    def synthesis(latents: Tensor) -> Tensor:
        if num_ws is not None:
            latents = latents.unsqueeze(1).repeat(1, num_ws, 1)
        return run_synthesis(generator, latents, "const")

    return jacobian_spectrum(synthesis, ws, max_elements=max_elements, noise_draws=noise_draws, seed=seed, chunk_size=chunk_size)


def measure_run(
    path: str | os.PathLike,
    settings: MeasureSettings,
    *,
    classifier: DigitsClassifier,
    dataset: ImageDataset | None = None,
    targets: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> RunMeasurement:
    """Measure one run's G_ema with the settings every run of a comparison shares.

    Args:
        path: a run folder (its newest checkpoint) or a checkpoint folder.
        settings: counts, steps and the seed. A Jacobian J_w with more than `JACOBIAN_MAX_ELEMENTS`
            elements is skipped with a warning, and the run's condition number is then None.
        classifier: the digits classifier behind the feature distance and the Frechet distance.
        dataset: real images for the Frechet distance; None skips it.
        targets: float images [K, C, H, W] in [-1, 1] to project; None skips projection.
        device: where the generator runs.

    Raises:
        CheckpointError: when ``path`` contains no readable checkpoint.
    """
    checkpoint = resolve_checkpoint(path)
    generator, info = load_generator(checkpoint, device=device)
    config = read_run_config(checkpoint)

    logger.info("Measuring path lengths of %s (step %d)", checkpoint, info["step"])
    lengths = path_length_statistics(
        generator, num_latents=settings.num, noise_draws=settings.noise_draws, batch_size=settings.batch_size, seed=settings.seed
    )

    jacobian = None
    if settings.jacobian_latents > 0:
        logger.info("Measuring the Jacobian J_w of %s at %d latents", checkpoint, settings.jacobian_latents)
        try:
            # A chunk of Jacobian rows is one backward pass per row, so batch_size * noise_draws rows
            # take roughly the memory of one batch of the path-length measurement.
            jacobian = measure_w_jacobian(
                generator,
                settings.jacobian_latents,
                settings.seed,
                max_elements=JACOBIAN_MAX_ELEMENTS,
                chunk_size=settings.batch_size * settings.noise_draws,
            )
        except JacobianTooLargeError as error:
            logger.warning("The Jacobian J_w of %s is too large to build, so its condition number is not measured: %s", checkpoint, error)

    logger.info("Measuring perceptual path length of %s", checkpoint)
    ppl = perceptual_path_length(
        generator,
        num_samples=settings.num,
        space="w",
        sampling="end",
        epsilon=settings.ppl_epsilon,
        distance=FeatureDistance(classifier),
        batch_size=settings.batch_size,
        seed=settings.seed,
    )

    frechet = None
    if dataset is not None and settings.frechet:
        logger.info("Measuring the classifier Frechet distance of %s", checkpoint)
        frechet = classifier_frechet_distance(
            generator, dataset, num=settings.num, batch_size=settings.batch_size, seed=settings.seed, classifier=classifier
        )

    projection = None
    if targets is not None and targets.shape[0] > 0:
        logger.info("Projecting %d images with %s", targets.shape[0], checkpoint)
        projection = project(generator, targets, steps=settings.projection_steps, seed=settings.seed)

    return RunMeasurement(
        run=str(path),
        checkpoint=str(checkpoint),
        step=int(info["step"]),
        network=info["network"],
        config=config,
        path_lengths=lengths,
        ppl=ppl,
        frechet=frechet,
        projection=projection,
        jacobian=jacobian,
        curves=read_metrics_log(checkpoint),
    )


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {f"{percent:g}": float(np.percentile(values, percent)) for percent in (5, 25, 50, 75, 95)}
