"""Writing a comparison to its report folder: report.md, report.json and the PNG plots, each file
written atomically so an interrupted write never leaves a partial report file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pathlength.report.comparison import Comparison
from pathlength.report.files import check_writable_folder, write_json_atomically, write_text_atomically
from pathlength.report.markdown import render_markdown
from pathlength.report.plots import plot_length_histograms, plot_ppl_distributions, plot_projection_psnr, plot_training_curves

logger = logging.getLogger(__name__)

# Plot title, file name and drawing function, in report order.
PLOTS = (
    ("Path length histograms", "length_histograms.png", plot_length_histograms),
    ("pl_mean and losses over training", "training_curves.png", plot_training_curves),
    ("PPL distributions", "ppl_distributions.png", plot_ppl_distributions),
    ("Projection PSNR distributions", "projection_psnr.png", plot_projection_psnr),
)
REPORT_MARKDOWN = "report.md"
REPORT_JSON = "report.json"


def write_report(comparison: Comparison, out: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.json and the plots of ``comparison`` into the folder ``out``.

    The folder is created when missing; files of an earlier report there are replaced.

    Returns:
        The written files by name ("report.md", "report.json" and the PNG names).

    Raises:
        OSError: when ``out`` cannot be created or written.

    Example:
        >>> files = write_report(comparison, "reports/plr")  # doctest: +SKIP
        >>> sorted(files)  # doctest: +SKIP
        ['length_histograms.png', 'ppl_distributions.png', 'projection_psnr.png', 'report.json', 'report.md', 'training_curves.png']
    """
    out = check_writable_folder(out)
    written: dict[str, Path] = {}

    for _, file_name, draw in PLOTS:
        written[file_name] = draw(comparison.sides, out / file_name)

    written[REPORT_JSON] = write_json_atomically(out / REPORT_JSON, dict(comparison.to_dict(), files=sorted(written)))
    plots = {title: file_name for title, file_name, _ in PLOTS}
    written[REPORT_MARKDOWN] = write_text_atomically(out / REPORT_MARKDOWN, render_markdown(comparison, plots))
    logger.info("Wrote the comparison report %s", out / REPORT_MARKDOWN)
    return written
