"""Aggregation of a metric over the runs (training seeds) of each side of a comparison: mean, sample
standard deviation and count per side, which side is lower, and whether the gap exceeds the spread."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MetricDefinition:
    """A headline metric of the comparison.

    Attributes:
        key: the name in `RunMeasurement.metric_values` and report.json.
        title: the row name in report.md.
        better: "lower" or "higher", the direction that means a better generator.
        unit: appended to values in report.md ("dB"), or "".
    """

    key: str
    title: str
    better: str
    unit: str = ""


METRICS = (
    MetricDefinition("cv", "CV of path lengths", "lower"),
    MetricDefinition("cv_between", "CV of lengths across w", "lower"),
    MetricDefinition("cv_within", "CV of lengths across y at fixed w", "lower"),
    MetricDefinition("jacobian_condition_median", "Median condition number of J_w", "lower"),
    MetricDefinition("ppl", "PPL (W, end, feature distance)", "lower"),
    MetricDefinition("frechet_distance", "Frechet distance (digits classifier)", "lower"),
    MetricDefinition("projection_psnr_median", "Median projection PSNR", "higher", "dB"),
)


@dataclass(frozen=True)
class SideSummary:
    """A metric over the runs of one side.

    Attributes:
        values: the finite values, one per run that produced one.
        num_runs: runs on the side, including those without a finite value.
        mean: mean of ``values``, or None when there are none.
        std: sample standard deviation (ddof=1) of ``values``, or None with fewer than two.
    """

    values: list[float]
    num_runs: int
    mean: float | None
    std: float | None

    @property
    def count(self) -> int:
        """Number of runs with a finite value."""
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"values": list(self.values), "num_runs": self.num_runs, "count": self.count, "mean": self.mean, "std": self.std}


def summarize_side(values: Sequence[float | None]) -> SideSummary:
    """Summarize one side's per-run values; None, NaN and inf entries are left out of the statistics.

    Example:
        >>> summary = summarize_side([1.0, 3.0, None])
        >>> summary.mean, summary.std, summary.count, summary.num_runs
        (2.0, 1.4142135623730951, 2, 3)
    """
    finite = [float(value) for value in values if value is not None and math.isfinite(value)]
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) >= 2 else None
    return SideSummary(values=finite, num_runs=len(values), mean=mean, std=std)


@dataclass(frozen=True)
class MetricComparison:
    """One metric compared between side A and side B.

    Attributes:
        metric: the metric's definition.
        side_a, side_b: the per-side summaries.
        lower: "a", "b", "equal", or None when a side has no value.
        gap: |mean_a - mean_b|, or None when a side has no value.
        spread: std_a + std_b, or None unless both sides have at least two values.
        gap_exceeds_spread: gap > spread, or None when the spread is unknown.
        statement: one plain sentence (or two) saying which side is lower and what the gap means.
    """

    metric: MetricDefinition
    side_a: SideSummary
    side_b: SideSummary
    lower: str | None
    gap: float | None
    spread: float | None
    gap_exceeds_spread: bool | None
    statement: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "metric": self.metric.key,
            "title": self.metric.title,
            "better": self.metric.better,
            "side_a": self.side_a.to_dict(),
            "side_b": self.side_b.to_dict(),
            "lower": self.lower,
            "gap": self.gap,
            "spread": self.spread,
            "gap_exceeds_spread": self.gap_exceeds_spread,
            "statement": self.statement,
        }


def compare_metric(
    metric: MetricDefinition,
    values_a: Sequence[float | None],
    values_b: Sequence[float | None],
    label_a: str,
    label_b: str,
) -> MetricComparison:
    """Compare one metric between the runs of side A and side B.

    The spread is the sum of the two sides' sample standard deviations, so "the gap exceeds the
    spread" means the bars of one standard deviation around the two means do not overlap. It is a
    rough check of seed-to-seed variation, not a significance test, and needs at least two runs
    with a value on each side.

    Example:
        >>> result = compare_metric(METRICS[0], [0.2, 0.22], [0.4, 0.43], "with PLR", "without PLR")
        >>> result.lower, result.gap_exceeds_spread
        ('a', True)
    """
    side_a, side_b = summarize_side(values_a), summarize_side(values_b)
    lower = gap = spread = exceeds = None

    if side_a.mean is not None and side_b.mean is not None:
        gap = abs(side_a.mean - side_b.mean)
        if side_a.mean < side_b.mean:
            lower = "a"
        elif side_b.mean < side_a.mean:
            lower = "b"
        else:
            lower = "equal"
        if side_a.std is not None and side_b.std is not None:
            spread = side_a.std + side_b.std
            exceeds = gap > spread

    comparison = MetricComparison(metric, side_a, side_b, lower, gap, spread, exceeds, statement="")
    statement = _statement(comparison, label_a, label_b)
    return MetricComparison(metric, side_a, side_b, lower, gap, spread, exceeds, statement)


def better_side(lower: str | None, better: str) -> str | None:
    """Return the side ("a", "b", "equal" or None) whose mean is better, from the lower side and the metric's direction.

    Example:
        >>> better_side("a", "lower"), better_side("a", "higher"), better_side("equal", "higher")
        ('a', 'b', 'equal')
    """
    if lower in ("a", "b") and better == "higher":
        return "b" if lower == "a" else "a"
    return lower


def format_value(value: float | None, unit: str = "") -> str:
    """Format a number with 4 significant digits, or "n/a" for None.

    Example:
        >>> format_value(0.123456), format_value(31.4159, "dB"), format_value(None)
        ('0.1235', '31.42 dB', 'n/a')
    """
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def format_summary(summary: SideSummary, unit: str = "") -> str:
    """Format a side as "mean ± std" (or the mean alone with one value, "n/a" with none)."""
    if summary.mean is None:
        return "n/a"
    if summary.std is None:
        return format_value(summary.mean, unit)
    return f"{format_value(summary.mean)} ± {format_value(summary.std, unit)}"


def _statement(comparison: MetricComparison, label_a: str, label_b: str) -> str:
    metric = comparison.metric
    side_a, side_b = comparison.side_a, comparison.side_b
    direction = f"{metric.better} is better"

    missing = [label for label, side in ((label_a, side_a), (label_b, side_b)) if side.mean is None]
    if missing:
        return f"{metric.title}: not measured for {' and '.join(missing)}, so the sides cannot be compared."

    values = f"{format_summary(side_a, metric.unit)} vs {format_summary(side_b, metric.unit)}"
    if comparison.lower == "equal":
        first = f"{metric.title}: both sides have the same mean ({values}; {direction})."
    else:
        better_label = label_a if better_side(comparison.lower, metric.better) == "a" else label_b
        first = f"{metric.title}: {better_label} is better, with the {metric.better} mean ({values})."

    if comparison.spread is None:
        second = (
            f"With fewer than two runs on a side the spread over seeds is unknown, so the gap of "
            f"{format_value(comparison.gap)} may be seed-to-seed variation."
        )
    elif comparison.gap_exceeds_spread:
        second = f"The gap of {format_value(comparison.gap)} exceeds the spread of {format_value(comparison.spread)} (the sum of both standard deviations)."
    else:
        second = (
            f"The gap of {format_value(comparison.gap)} does not exceed the spread of {format_value(comparison.spread)} "
            "(the sum of both standard deviations), so it may be seed-to-seed variation."
        )
    return f"{first} {second}"
