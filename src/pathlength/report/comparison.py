"""Side-by-side comparison of two groups of runs (for example with and without path length
regularization, several training seeds each): every run is measured on the same latents and the same
projection targets, and each headline metric is aggregated per side."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import pathlength
from pathlength.data import DatasetError, ImageDataset, load_dataset
from pathlength.diagnostics import load_digits_classifier
from pathlength.report.aggregate import METRICS, MetricComparison, compare_metric
from pathlength.report.collect import (
    MeasureSettings,
    RunMeasurement,
    choose_target_indices,
    load_run_dataset,
    measure_run,
    read_run_config,
)
from pathlength.training.checkpoint import read_network_weights, resolve_checkpoint

logger = logging.getLogger(__name__)

# Config fields expected to differ between the runs of a comparison; any other difference is noted.
EXPECTED_DIFFERENCES = ("pl_weight", "seed", "out", "device")


class ComparisonError(ValueError):
    """Raised when runs cannot be compared: an empty side, different image shapes, or too few images."""


@dataclass
class Comparison:
    """The measurements of both sides, the per-metric comparisons and what they were measured with.

    Attributes:
        labels: the names of side A and side B.
        runs: the measurements of side A and of side B.
        metrics: one `MetricComparison` per entry of `METRICS`.
        settings: the shared measurement settings.
        targets: the projection targets (``source``, ``indices``, ``from_training_data``), or None
            when projection was skipped.
        notes: caveats found while measuring (skipped metrics, differing configs).
    """

    labels: tuple[str, str]
    runs: tuple[list[RunMeasurement], list[RunMeasurement]]
    metrics: list[MetricComparison]
    settings: MeasureSettings
    targets: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def sides(self) -> list[tuple[str, list[RunMeasurement]]]:
        """(label, runs) of side A and side B."""
        return list(zip(self.labels, self.runs))

    def to_dict(self) -> dict[str, Any]:
        """Return every number as a JSON-ready dict (the content of report.json)."""
        return {
            "format": "pathlength-comparison",
            "pathlength_version": pathlength.__version__,
            "created": self.created,
            "labels": list(self.labels),
            "num_runs": [len(runs) for runs in self.runs],
            "settings": self.settings.to_dict(),
            "targets": self.targets,
            "metrics": [comparison.to_dict() for comparison in self.metrics],
            "sides": [{"label": label, "runs": [run.to_dict() for run in runs]} for label, runs in self.sides],
            "notes": list(self.notes),
        }


def compare_runs(
    runs_a: Sequence[str | os.PathLike],
    runs_b: Sequence[str | os.PathLike],
    labels: tuple[str, str] | None = None,
    settings: MeasureSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    projection_data: str | os.PathLike | None = None,
) -> Comparison:
    """Measure every run of both sides with the same settings and compare the sides metric by metric.

    Each run's G_ema gets the path-length statistics, PPL (W, endpoint sampling, the digits feature
    distance), the classifier Frechet distance against the run's dataset, and the PSNR of projecting
    the same K dataset images, chosen with ``settings.seed``. The runs of a side are meant to differ
    only in their training seed. The per-side mean and sample standard deviation then show the
    seed-to-seed spread (see `compare_metric`).

    Args:
        runs_a, runs_b: run folders or checkpoint folders of each side (at least one each).
        labels: names of the sides; None derives them from the runs' pl_weight ("PLR weight 2",
            "no PLR") or falls back to "A" and "B".
        settings: counts, steps and the seed; None uses `MeasureSettings` defaults.
        device: where the generators run.
        projection_data: a dataset (bundled name, folder or zip) for the projection targets; None
            uses the first run's training data.

    Raises:
        CheckpointError: when a path contains no readable checkpoint (checked before measuring).
        ComparisonError: for an empty side, runs with different image shapes, or more projection
            targets than the target dataset has.
        DatasetError: when ``projection_data`` cannot be loaded.

    Example:
        >>> comparison = compare_runs(["runs/pl_seed0"], ["runs/nopl_seed0"], settings=MeasureSettings(num=256))  # doctest: +SKIP
        >>> [metric.metric.key for metric in comparison.metrics]  # doctest: +SKIP
        ['cv', 'cv_between', 'cv_within', 'jacobian_condition_median', 'ppl', 'frechet_distance', 'projection_psnr_median']
    """
    settings = MeasureSettings() if settings is None else settings
    if not runs_a or not runs_b:
        raise ComparisonError(f"each side needs at least one run, got {len(runs_a)} and {len(runs_b)}")

    checkpoints = [[resolve_checkpoint(path) for path in runs] for runs in (runs_a, runs_b)]
    configs = [[read_run_config(checkpoint) for checkpoint in side] for side in checkpoints]
    resolution, channels = _common_image_shape([checkpoint for side in checkpoints for checkpoint in side])
    labels = labels if labels is not None else default_labels(configs)
    notes = _config_notes(configs, labels)

    first_config = configs[0][0]
    data_source = None if first_config is None else first_config.get("data")
    dataset = _training_dataset(first_config, resolution, channels, notes)
    target_dataset, target_source, from_training = _target_dataset(projection_data, dataset, data_source, resolution, channels)
    targets, target_info = _targets(target_dataset, target_source, from_training, settings, notes)
    if data_source != "digits":
        notes.append(
            "PPL's feature distance and the Frechet distance use a classifier trained on the bundled digits; "
            f"for the data {data_source!r} they measure digit-like structure only."
        )
    if not settings.frechet:
        notes.append("The Frechet distance was not measured (turned off).")

    classifier = load_digits_classifier()
    measured: tuple[list[RunMeasurement], list[RunMeasurement]] = ([], [])
    total = len(runs_a) + len(runs_b)
    for side_index, runs in enumerate((runs_a, runs_b)):
        for path in runs:
            logger.info("Run %d of %d: %s (%s)", len(measured[0]) + len(measured[1]) + 1, total, path, labels[side_index])
            measurement = measure_run(path, settings, classifier=classifier, dataset=dataset, targets=targets, device=device)
            measured[side_index].append(measurement)

    _step_notes(measured, notes)
    metrics = [
        compare_metric(
            metric,
            [run.metric_values()[metric.key] for run in measured[0]],
            [run.metric_values()[metric.key] for run in measured[1]],
            labels[0],
            labels[1],
        )
        for metric in METRICS
    ]
    return Comparison(labels=labels, runs=measured, metrics=metrics, settings=settings, targets=target_info, notes=notes)


def default_labels(configs: Sequence[Sequence[dict[str, Any] | None]]) -> tuple[str, str]:
    """Name each side after its runs' shared pl_weight, or return ("A", "B") unless both sides have distinct ones.

    Example:
        >>> default_labels([[{"pl_weight": 2.0}], [{"pl_weight": 0.0}]])
        ('PLR weight 2', 'no PLR')
    """
    names = []
    for side in configs:
        weights = {None if config is None else config.get("pl_weight") for config in side}
        weight = weights.pop() if len(weights) == 1 else None
        if not isinstance(weight, (int, float)):
            return ("A", "B")
        names.append("no PLR" if weight == 0 else f"PLR weight {weight:g}")
    if names[0] == names[1]:
        return ("A", "B")
    return (names[0], names[1])


def _common_image_shape(checkpoints: list[Any]) -> tuple[int, int]:
    shapes = {}
    for checkpoint in checkpoints:
        _, metadata = read_network_weights(checkpoint, "G_ema")
        kwargs = metadata["init_kwargs"]
        shapes[str(checkpoint)] = (int(kwargs["img_resolution"]), int(kwargs["img_channels"]))
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{path}: {resolution}x{resolution}x{channels}" for path, (resolution, channels) in shapes.items())
        raise ComparisonError(f"runs must generate images of the same resolution and channels to be compared, got {listed}")
    return next(iter(shapes.values()))


def _config_notes(configs: Sequence[Sequence[dict[str, Any] | None]], labels: tuple[str, str]) -> list[str]:
    notes = []
    for label, side in zip(labels, configs):
        weights = sorted({config.get("pl_weight") for config in side if config is not None and "pl_weight" in config})
        if len(weights) > 1:
            notes.append(f"The runs of side {label!r} were trained with different pl_weight values ({', '.join(f'{weight:g}' for weight in weights)}).")
    known = [config for side in configs for config in side if config is not None]
    if len(known) < sum(len(side) for side in configs):
        notes.append("Some runs record no training config, so their settings could not be checked.")
    differing = sorted(
        {name for config in known for name in config if name not in EXPECTED_DIFFERENCES and any(other.get(name) != config.get(name) for other in known)}
    )
    if differing:
        notes.append(f"Besides pl_weight and seed, the runs' training configs differ in: {', '.join(differing)}.")
        logger.warning("The runs' training configs differ in %s, so the sides differ in more than PLR", ", ".join(differing))
    return notes


def _training_dataset(config: dict[str, Any] | None, resolution: int, channels: int, notes: list[str]) -> ImageDataset | None:
    try:
        return load_run_dataset(config, resolution, channels)
    except DatasetError as error:
        notes.append(f"The training dataset could not be loaded ({error}); the Frechet distance was skipped.")
        logger.warning("The training dataset could not be loaded (%s); skipping the Frechet distance", error)
        return None


def _target_dataset(
    projection_data: str | os.PathLike | None,
    dataset: ImageDataset | None,
    data_source: str | None,
    resolution: int,
    channels: int,
) -> tuple[ImageDataset | None, str | None, bool]:
    # Returns the dataset of the projection targets, its name and whether the runs trained on it.
    if projection_data is not None:
        return load_dataset(projection_data, resolution, channels), os.fspath(projection_data), False
    return dataset, data_source, True


def _targets(
    dataset: ImageDataset | None,
    source: str | None,
    from_training: bool,
    settings: MeasureSettings,
    notes: list[str],
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    if settings.projection_targets == 0:
        notes.append("Projection was not measured (0 projection targets).")
        return None, None
    if dataset is None:
        notes.append("Projection was skipped because no dataset was available for the targets.")
        return None, None

    try:
        indices = choose_target_indices(len(dataset), settings.projection_targets, settings.seed)
    except ValueError as error:
        raise ComparisonError(str(error)) from error
    images, _ = dataset.get_batch(indices)
    if from_training:
        notes.append(
            "The projection targets come from the training data, which the reference trainer samples in full, "
            "so the generators saw them in training; pass images kept out of training as the projection data "
            "for a held-out test."
        )
    info = {"source": source, "indices": indices, "from_training_data": from_training, "count": len(indices)}
    return images, info


def _step_notes(measured: tuple[list[RunMeasurement], list[RunMeasurement]], notes: list[str]) -> None:
    steps = sorted({run.step for side in measured for run in side})
    if len(steps) > 1:
        notes.append(f"The measured checkpoints are at different training steps ({', '.join(map(str, steps))}).")
        logger.warning(
            "The measured checkpoints are at different training steps (%s); compare runs of the same budget", ", ".join(map(str, steps))
        )
