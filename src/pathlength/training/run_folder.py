"""Layout of a training run folder and the checks that decide whether a run may start or resume there.

A run folder holds::

    config.json        the TrainConfig of the run
    train.log          the log of every start and resume
    metrics.jsonl      one JSON object per logged step
    tensorboard/       TensorBoard event files
    samples/           step-XXXXXXX.png sample grids and latest.png
    checkpoints/       step-XXXXXXX/ checkpoints and the latest pointer
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pathlength.training.checkpoint import CHECKPOINTS_DIRNAME, find_latest_checkpoint


class RunFolderError(ValueError):
    """Raised when a run folder cannot be used: it exists without --resume, is missing, or is not writable."""


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def log_file(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIRNAME


def check_run_folder(out: str | os.PathLike, resume: bool) -> RunFolder:
    """Check that a run may start (or resume) in ``out`` and return its paths, without creating anything.

    A new run needs ``out`` to be missing or an empty folder. A resumed run needs ``out`` to hold a
    config.json and at least one complete checkpoint.

    Raises:
        RunFolderError: naming ``out`` and what to do, when one of the rules above is broken.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"--out {str(root)!r} exists and is not a folder; choose a folder path")

    if resume:
        if not (root / "config.json").is_file():
            raise RunFolderError(
                f"cannot resume: {str(root / 'config.json')!r} not found; pass the folder of an earlier run, "
                "or start a new run without --resume"
            )
        if find_latest_checkpoint(root / CHECKPOINTS_DIRNAME) is None:
            raise RunFolderError(
                f"cannot resume: no complete checkpoint in {str(root / CHECKPOINTS_DIRNAME)!r}; "
                "start a new run without --resume in an empty folder"
            )
    elif root.is_dir() and any(root.iterdir()):
        raise RunFolderError(
            f"--out {str(root)!r} already exists and is not empty; pass --resume to continue that run, "
            "or choose a new folder"
        )
    return RunFolder(root)


def create_run_folder(folder: RunFolder) -> None:
    """Create the run folder and its subfolders, and check that files can be written there.

    Raises:
        RunFolderError: naming the folder, when it cannot be created or written.
    """
    try:
        for path in (folder.root, folder.samples, folder.checkpoints, folder.tensorboard):
            path.mkdir(parents=True, exist_ok=True)
        # mkdir succeeds on an existing read-only folder, so a file is written to prove the folder is writable.
        with tempfile.TemporaryFile(dir=folder.root):
            pass
    except OSError as error:
        raise RunFolderError(f"cannot write the run folder {str(folder.root)!r}: {error.strerror or error}") from error
