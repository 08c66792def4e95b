"""Reference StyleGAN2 trainer with path length regularization: config, loss phases, loop and checkpoints."""

from pathlength.training.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_generator,
    load_network,
    resolve_checkpoint,
    save_checkpoint,
)
from pathlength.training.config import ConfigError, TrainConfig
from pathlength.training.loop import Trainer, TrainResult, resolve_device, train
from pathlength.training.losses import StyleGAN2Loss
from pathlength.training.run_folder import RunFolder, RunFolderError
from pathlength.training.samples import generate_images, make_grid

__all__ = [
    "CheckpointError",
    "ConfigError",
    "RunFolder",
    "RunFolderError",
    "StyleGAN2Loss",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "find_latest_checkpoint",
    "generate_images",
    "load_generator",
    "load_network",
    "make_grid",
    "resolve_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]
