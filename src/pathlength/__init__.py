"""pathlength: StyleGAN2's path length regularization for any PyTorch generator."""

from pathlength.penalty import (
    DoubleBackwardError,
    NonFinitePathLengthError,
    PathLengthPenalty,
    PathLengthResult,
    lazy_adam_settings,
    path_lengths,
)

__version__ = "0.1.0"

__all__ = [
    "DoubleBackwardError",
    "NonFinitePathLengthError",
    "PathLengthPenalty",
    "PathLengthResult",
    "lazy_adam_settings",
    "path_lengths",
]
