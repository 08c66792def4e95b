"""Collection of one run's numbers for a comparison: path-length statistics, perceptual path length,
the classifier Frechet distance, projection PSNR on fixed dataset images, and the training curves of
its metrics.jsonl."""

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
    PathLengthStatistics,
    PerceptualPathLengthResult,
    ProjectionResult,
    classifier_frechet_distance,
    path_length_statistics,
    perceptual_path_length,
    project,
)
from pathlength.training.checkpoint import CHECKPOINTS_DIRNAME, load_generator, read_checkpoint_info, resolve_checkpoint

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


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
    """

    num: int = 1024
    noise_draws: int = 4
    projection_targets: int = 16
    projection_steps: int = 1000
    seed: int = 0
    batch_size: int = 64
    ppl_epsilon: float = 1e-4
    frechet: bool = True

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
    curves: list[dict[str, Any]] = field(default_factory=list)

    @property
    def projection_psnr(self) -> list[float]:
        """PSNR in dB of each projection target, in target order (inf for an exact match)."""
        return [] if self.projection is None else [float(value) for value in self.projection.psnr.tolist()]

    @property
    def ppl_kept_distances(self) -> np.ndarray:
        """The per-path PPL distances inside the percentile bounds, float64 on the CPU."""
        return self.ppl.distances.detach().cpu()[self.ppl.kept.cpu()].double().numpy()

    def metric_values(self) -> dict[str, float | None]:
        """Return the headline numbers by metric key; None marks a metric that was not measured."""
        psnr = self.projection_psnr
        return {
            "cv": self.path_lengths.cv,
            "ppl": float(self.ppl),
            "frechet_distance": None if self.frechet is None else self.frechet.value,
            "projection_psnr_median": float(np.median(psnr)) if psnr else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every number, including the curves and per-target PSNR."""
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
            "metrics": self.metric_values(),
            "path_lengths": self.path_lengths.to_dict(),
            "ppl": dict(self.ppl.to_dict(), kept_quantiles=_quantiles(kept)),
            "frechet": None if self.frechet is None else self.frechet.to_dict(),
            "projection": None if self.projection is None else self.projection.to_dict(),
            "curves": self.curves,
        }


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
        settings: counts, steps and the seed.
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
        curves=read_metrics_log(checkpoint),
    )


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {f"{percent:g}": float(np.percentile(values, percent)) for percent in (5, 25, 50, 75, 95)}
