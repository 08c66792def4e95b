"""The Markdown text of a comparison report: the per-side table, one statement per metric, the runs,
the settings, the plots and the caveats."""

from __future__ import annotations

from collections.abc import Mapping

from pathlength.report.aggregate import METRICS, better_side, format_summary, format_value
from pathlength.report.comparison import Comparison

SIDE_NAMES = {"equal": "equal", None: "n/a"}


def render_markdown(comparison: Comparison, plots: Mapping[str, str] | None = None) -> str:
    """Return report.md for ``comparison``; ``plots`` maps plot titles to PNG file names beside it.

    Example:
        >>> text = render_markdown(comparison, {"Path length histograms": "length_histograms.png"})  # doctest: +SKIP
        >>> text.splitlines()[0]  # doctest: +SKIP
        '# Comparison: PLR weight 2 vs no PLR'
    """
    label_a, label_b = comparison.labels
    lines = [f"# Comparison: {label_a} vs {label_b}", ""]
    lines += [
        f"Runs per side: {label_a}: {len(comparison.runs[0])}, {label_b}: {len(comparison.runs[1])}. "
        "Every run's G_ema was measured with the same latents, noise and projection targets. "
        "Values are the mean ± sample standard deviation over the runs of a side (a single value when a side has one run).",
        "",
    ]
    lines += summary_table(comparison)
    lines += ["", "## What the numbers say", ""]
    lines += [f"- {metric.statement}" for metric in comparison.metrics]
    lines += ["", "## Runs", ""]
    lines += _runs_table(comparison)
    lines += ["", "## Settings", ""]
    lines += _settings(comparison)
    if plots:
        lines += ["", "## Plots", ""]
        for title, file_name in plots.items():
            lines += [f"### {title}", "", f"![{title}]({file_name})", ""]
    lines += ["## Notes", ""] if plots else ["", "## Notes", ""]
    lines += [f"- {note}" for note in _definitions(comparison.settings.ppl_epsilon) + comparison.notes]
    return "\n".join(lines).rstrip() + "\n"


def summary_table(comparison: Comparison) -> list[str]:
    """Return the lines of the Markdown table of per-side means, better sides and spread checks."""
    label_a, label_b = comparison.labels
    rows = [
        f"| Metric | {_cell(label_a)} (n={len(comparison.runs[0])}) | {_cell(label_b)} (n={len(comparison.runs[1])}) | Better side | Gap exceeds spread |",
        "|---|---|---|---|---|",
    ]
    for metric in comparison.metrics:
        definition = metric.metric
        better = better_side(metric.lower, definition.better)
        better_label = {"a": label_a, "b": label_b}.get(better or "", SIDE_NAMES.get(better, "n/a"))
        exceeds = {True: "yes", False: "no", None: "unknown (needs 2+ runs per side)"}[metric.gap_exceeds_spread]
        rows.append(
            f"| {definition.title} ({definition.better} is better) | {format_summary(metric.side_a, definition.unit)} | "
            f"{format_summary(metric.side_b, definition.unit)} | {_cell(better_label)} | {exceeds} |"
        )
    return rows


def _runs_table(comparison: Comparison) -> list[str]:
    header = "| Side | Run | Step | pl_weight | Seed | " + " | ".join(metric.title for metric in METRICS) + " |"
    rows = [header, "|" + "---|" * (5 + len(METRICS))]
    for label, runs in comparison.sides:
        for run in runs:
            config = run.config or {}
            values = run.metric_values()
            cells = [format_value(values[metric.key], metric.unit) for metric in METRICS]
            pl_weight = config.get("pl_weight")
            pl_weight = f"{pl_weight:g}" if isinstance(pl_weight, (int, float)) else "n/a"
            rows.append(
                f"| {_cell(label)} | `{_cell(run.run)}` | {run.step} | {pl_weight} | "
                f"{_cell(str(config.get('seed', 'n/a')))} | " + " | ".join(cells) + " |"
            )
    return rows


def _settings(comparison: Comparison) -> list[str]:
    settings = comparison.settings
    lines = [
        f"- Path lengths: {settings.num} latents x {settings.noise_draws} noise draws y, seed {settings.seed}, constant synthesis noise.",
        f"- PPL: {settings.num} paths in W, endpoint sampling, epsilon {settings.ppl_epsilon:g}, digits feature distance, "
        "1st and 99th percentile filtering.",
        f"- Frechet distance: {settings.num} generated images against the run's dataset, digits classifier features."
        if settings.frechet
        else "- Frechet distance: not measured.",
        f"- Jacobian J_w: exact, at {settings.jacobian_latents} latents in W (seed {settings.seed}), one w on all layers, "
        "constant synthesis noise."
        if settings.jacobian_latents > 0
        else "- Jacobian J_w: not measured.",
    ]
    targets = comparison.targets
    if targets is None:
        lines.append("- Projection: not measured.")
    else:
        origin = "the training data" if targets["from_training_data"] else "data kept out of training"
        lines.append(
            f"- Projection: the same {targets['count']} images of {targets['source']!r} ({origin}) for every run, "
            f"indices {targets['indices']} (chosen with seed {settings.seed}); {settings.projection_steps} steps of w optimisation, "
            "pixel distance, PSNR for images in [-1, 1]."
        )
    lines.append(f"- Created {comparison.created}.")
    return lines


def _definitions(epsilon: float) -> list[str]:
    return [
        "CV of path lengths is std / mean of ||J_w^T y|| with y ~ N(0, I / (H W)), the statistic path length "
        "regularization drives towards a constant; it is scale-free, so runs with different pl_mean compare.",
        "The CV across w is the spread of each latent's mean length over the latents, with the noise of its few "
        "draws of y removed. The CV across y at fixed w is the spread over directions y at one latent. "
        "Path length regularization aims at both, and CV^2 is close to the sum of their squares.",
        "The condition number of J_w is its largest over its smallest singular value, for one w fed to all "
        "layers. A value of 1 means equal singular values, so the generator is a scaled isometry at that w when "
        "its images have at least w_dim values.",
        f"PPL is the mean feature distance between the images at w_0 and w_0 + {epsilon:g} (w_1 - w_0), divided by "
        f"{epsilon:g}^2; its numbers are not the StyleGAN paper's LPIPS numbers.",
        "The spread is the sum of both sides' standard deviations; a gap larger than it is a rough sign of "
        "a real difference, not a significance test.",
    ]


def _cell(text: str) -> str:
    # A pipe would end the table cell early.
    return text.replace("|", "\\|")
