"""Side-by-side comparison of runs, for example with and without path length regularization over
several training seeds: measurements per run, aggregation per side, Markdown, JSON and PNG plots."""

from pathlength.report.aggregate import (
    METRICS,
    MetricComparison,
    MetricDefinition,
    SideSummary,
    compare_metric,
    summarize_side,
)
from pathlength.report.collect import (
    MeasureSettings,
    RunMeasurement,
    choose_target_indices,
    load_run_dataset,
    measure_run,
    read_metrics_log,
    read_run_config,
)
from pathlength.report.comparison import Comparison, ComparisonError, compare_runs, default_labels
from pathlength.report.markdown import render_markdown
from pathlength.report.writer import write_report

__all__ = [
    "METRICS",
    "Comparison",
    "ComparisonError",
    "MeasureSettings",
    "MetricComparison",
    "MetricDefinition",
    "RunMeasurement",
    "SideSummary",
    "choose_target_indices",
    "compare_metric",
    "compare_runs",
    "default_labels",
    "load_run_dataset",
    "measure_run",
    "read_metrics_log",
    "read_run_config",
    "render_markdown",
    "summarize_side",
    "write_report",
]
