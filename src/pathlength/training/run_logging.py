"""Run outputs other than checkpoints: metrics as JSON lines and TensorBoard scalars, the run's log
file and the progress bar, plus the window that averages step statistics between two records."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from pathlength.training.run_folder import RunFolder

PACKAGE_LOGGER = "pathlength"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class MetricWindow:
    """Statistics of the training steps since the last metric record.

    Scalars are averaged over the steps that reported them. The path lengths of all regularization
    steps are pooled into ``pl_lengths/mean`` and ``pl_lengths/std`` (population standard
    deviation). Keys that no step of the window reported are left out of the summary.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._scalars: dict[str, list[Tensor]] = defaultdict(list)
        self._lengths: list[Tensor] = []
        self.steps = 0
        self.images = 0
        self.seconds = 0.0

    def add(self, stats: dict[str, Tensor]) -> None:
        """Record one phase's statistics (detached tensors under their metric names)."""
        for name, value in stats.items():
            if name == "pl_lengths":
                self._lengths.append(value.detach().float().flatten())
            else:
                self._scalars[name].append(value.detach().float())

    def add_step(self, images: int, seconds: float) -> None:
        """Record that one training step of ``images`` images took ``seconds``."""
        self.steps += 1
        self.images += images
        self.seconds += seconds

    def summarize(self) -> dict[str, float]:
        """Return the window's metrics as Python floats, including ``images_per_second``."""
        summary: dict[str, float] = {}
        for name, values in self._scalars.items():
            summary[name] = torch.stack(values).mean().item()
        if self._lengths:
            lengths = torch.cat(self._lengths)
            summary["pl_lengths/mean"] = lengths.mean().item()
            summary["pl_lengths/std"] = lengths.std(correction=0).item()
        if self.seconds > 0:
            summary["images_per_second"] = self.images / self.seconds
        return summary


class RunLogger:
    """Writes metrics.jsonl, TensorBoard events and train.log of a run, and drives its progress bar.

    The log file receives every record of the ``pathlength`` loggers at INFO and above while the
    logger is open. On resume, metric records after ``start_step`` (written by the interrupted run
    after its last checkpoint) are dropped from metrics.jsonl and from TensorBoard, so the files
    hold one record per logged step.

    Args:
        folder: the run folder.
        start_step: the step training starts from (0 or the resumed checkpoint's step).
        total_steps: the step training ends at, for the progress bar.
        progress: show a tqdm progress bar on stderr.
    """

    def __init__(self, folder: RunFolder, start_step: int, total_steps: int, progress: bool = True) -> None:
        self.folder = folder
        self._attach_log_file()

        if start_step > 0:
            _drop_records_after(folder.metrics, start_step)
        self._metrics_file = open(folder.metrics, "a", encoding="utf-8")

        # Imported here: tensorboard is slow to import and only training writes events.
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides events at purge_step and later from earlier event files, which drops what
        # the interrupted run wrote after its last checkpoint but keeps the checkpoint step's record.
        purge_step = start_step + 1 if start_step > 0 else None
        self._writer = SummaryWriter(log_dir=str(folder.tensorboard), purge_step=purge_step)
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not progress,
            leave=True,
        )

    def _attach_log_file(self) -> None:
        self._package_logger = logging.getLogger(PACKAGE_LOGGER)
        self._previous_level = self._package_logger.level
        if self._package_logger.getEffectiveLevel() > logging.INFO:
            self._package_logger.setLevel(logging.INFO)

        self._file_handler = logging.FileHandler(self.folder.log_file, encoding="utf-8")
        self._file_handler.setLevel(logging.INFO)
        self._file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._package_logger.addHandler(self._file_handler)

    def write_metrics(self, step: int, images_seen: int, metrics: dict[str, float]) -> None:
        """Append one record to metrics.jsonl and write the scalars to TensorBoard at ``step``."""
        record: dict[str, Any] = {"step": step, "images_seen": images_seen}
        record.update({name: _json_number(value) for name, value in metrics.items()})
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()

        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def write_image(self, step: int, image: Image.Image) -> None:
        """Write a sample grid to TensorBoard under ``samples``."""
        array = np.asarray(image.convert("RGB"))
        self._writer.add_image("samples", array, global_step=step, dataformats="HWC")
        self._writer.flush()

    def update_progress(self, steps: int, metrics: dict[str, float] | None = None) -> None:
        """Advance the bar by ``steps`` and, when given, show images/s, the losses and pl_mean."""
        if metrics:
            shown = {
                "img/s": metrics.get("images_per_second"),
                "G": metrics.get("Loss/G/main"),
                "D": metrics.get("Loss/D/main"),
                "pl_mean": metrics.get("pl_mean"),
            }
            self._bar.set_postfix({name: f"{value:.3g}" for name, value in shown.items() if value is not None}, refresh=False)
        self._bar.update(steps)

    def close(self) -> None:
        """Close the bar, the metric and event files and detach the log file."""
        self._bar.close()
        self._metrics_file.close()
        self._writer.close()
        self._package_logger.removeHandler(self._file_handler)
        self._file_handler.close()
        self._package_logger.setLevel(self._previous_level)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _json_number(value: float) -> float | None:
    # JSON has no NaN or infinity; such values are written as null.
    return value if math.isfinite(value) else None


def _drop_records_after(path: os.PathLike, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()

    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # A line cut short by the interrupted run.
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(json.dumps(record) + "\n")

    temporary = f"{os.fspath(path)}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
    os.replace(temporary, path)
