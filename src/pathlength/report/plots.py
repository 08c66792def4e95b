"""PNG plots of a comparison, drawn with matplotlib's Agg canvas: path-length histograms, training
curves, PPL distributions and projection PSNR, each side in its own color."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from pathlength.report.collect import RunMeasurement
from pathlength.report.files import save_figure_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIDE_COLORS = ("tab:blue", "tab:orange")
# Metric names of metrics.jsonl drawn over training, with their panel titles.
CURVES = (
    ("pl_mean", "pl_mean (moving average of path lengths)"),
    ("Loss/G/pl_penalty", "Loss/G/pl_penalty"),
    ("Loss/G/main", "Loss/G/main"),
    ("Loss/D/main", "Loss/D/main"),
)

Sides = Sequence[tuple[str, Sequence[RunMeasurement]]]


def plot_length_histograms(sides: Sides, path: str | os.PathLike) -> Path:
    """Draw the histograms of path lengths divided by each run's mean, pooled per side.

    Dividing by the run's mean removes the scale, which differs between generators, so the width of
    each histogram shows the coefficient of variation that the table reports.
    """
    figure = _figure(width=6.4, height=4.0)
    axes = figure.add_subplot()

    pooled = [np.concatenate([_normalized_lengths(run) for run in runs]) if runs else np.array([]) for _, runs in sides]
    finite = np.concatenate(pooled) if pooled else np.array([])
    bins = np.linspace(0.0, max(2.0, float(np.percentile(finite, 99.5))) if finite.size else 2.0, 41)
    for (label, runs), values, color in zip(sides, pooled, SIDE_COLORS):
        runs_text = "1 run" if len(runs) == 1 else f"{len(runs)} runs"
        axes.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=color, label=f"{label} ({runs_text})")
        axes.hist(values, bins=bins, density=True, histtype="step", color=color)

    axes.set_xlabel("path length / run mean")
    axes.set_ylabel("density")
    axes.set_title("Path lengths ||J_w^T y||, pooled over each side's runs")
    axes.legend()
    return save_figure_atomically(figure, path)


def plot_training_curves(sides: Sides, path: str | os.PathLike) -> Path:
    """Draw pl_mean and the losses over training steps, one line per run, from metrics.jsonl.

    A run whose pl_mean stays exactly 0 never ran the penalty (pl_weight 0), so its pl_mean line is
    left out. A panel whose metric no run logged shows "not logged by these runs" instead of empty axes.
    """
    figure = _figure(width=10.0, height=7.0)
    for index, (name, title) in enumerate(CURVES):
        axes = figure.add_subplot(2, 2, index + 1)
        drawn = False
        for side_index, (label, runs) in enumerate(sides):
            for run_index, run in enumerate(runs):
                steps, values = _curve(run, name)
                if not steps or (name == "pl_mean" and not any(values)):
                    continue
                axes.plot(
                    steps,
                    values,
                    color=SIDE_COLORS[side_index],
                    alpha=0.8,
                    linewidth=1.2,
                    label=label if run_index == 0 else None,
                )
                drawn = True
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("step")
        if drawn:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    return save_figure_atomically(figure, path)


def plot_ppl_distributions(sides: Sides, path: str | os.PathLike) -> Path:
    """Draw box plots of the per-path PPL distances kept after percentile filtering, one box per run."""
    data, labels, colors = [], [], []
    for side_index, (label, runs) in enumerate(sides):
        for run_index, run in enumerate(runs):
            data.append(run.ppl_kept_distances)
            labels.append(f"{label}\n#{run_index + 1}")
            colors.append(SIDE_COLORS[side_index])
    return _box_plot(data, labels, colors, "per-path distance / epsilon^2", "PPL distances (W, end, feature distance)", path, log=True)


def plot_projection_psnr(sides: Sides, path: str | os.PathLike) -> Path:
    """Draw box plots of the projection PSNR of each target, one box per run, targets as dots."""
    data, labels, colors = [], [], []
    for side_index, (label, runs) in enumerate(sides):
        for run_index, run in enumerate(runs):
            values = np.array([value for value in run.projection_psnr if math.isfinite(value)])
            data.append(values)
            labels.append(f"{label}\n#{run_index + 1}")
            colors.append(SIDE_COLORS[side_index])
    return _box_plot(data, labels, colors, "PSNR (dB)", "Projection PSNR of the same dataset images", path, log=False)


def _figure(width: float, height: float) -> Figure:
    # Imported here because matplotlib takes about half a second to import, which only reports need.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure on its own Agg canvas draws without pyplot, so no global backend state changes.
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _normalized_lengths(run: RunMeasurement) -> np.ndarray:
    lengths = run.path_lengths.lengths.double().numpy().reshape(-1)
    mean = lengths.mean() if lengths.size else 0.0
    return lengths / mean if mean > 0 else np.zeros_like(lengths)


def _curve(run: RunMeasurement, name: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in run.curves:
        value = record.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in record:
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def _box_plot(
    data: list[np.ndarray],
    labels: list[str],
    colors: list[str],
    ylabel: str,
    title: str,
    path: str | os.PathLike,
    log: bool,
) -> Path:
    figure = _figure(width=max(5.0, 1.1 * len(data) + 2.0), height=4.2)
    axes = figure.add_subplot()
    positions = list(range(1, len(data) + 1))

    drawable = [(position, values, color) for position, values, color in zip(positions, data, colors) if values.size]
    if drawable:
        boxes = axes.boxplot([values for _, values, _ in drawable], positions=[position for position, _, _ in drawable], widths=0.6, patch_artist=True, showfliers=False)
        for patch, (_, _, color) in zip(boxes["boxes"], drawable):
            patch.set_facecolor(color)
            patch.set_alpha(0.4)
        # Every value as a dot beside its box shows small samples (a few projection targets) honestly.
        rng = np.random.default_rng(0)
        for position, values, color in drawable:
            jitter = rng.uniform(-0.15, 0.15, size=values.size)
            axes.scatter(position + jitter, values, s=8, color=color, alpha=0.6)
        if log and all((values > 0).all() for _, values, _ in drawable):
            axes.set_yscale("log")
    else:
        axes.text(0.5, 0.5, "no values measured", ha="center", va="center", transform=axes.transAxes)

    axes.set_xticks(positions)
    axes.set_xticklabels(labels, fontsize=8)
    axes.set_xlim(0.4, len(data) + 0.6)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return save_figure_atomically(figure, path)
