"""Configuration of the reference StyleGAN2 trainer: one dataclass that validates itself and
round-trips through JSON, so every run folder records exactly how it was trained."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FORMAT = 1

# Fields that may differ between a run's saved config and the config that resumes it. Every other
# field changes the training itself, so a resumed run would no longer match an uninterrupted one.
RESUMABLE_CHANGES = (
    "steps",
    "device",
    "sample_interval",
    "checkpoint_interval",
    "log_interval",
    "keep_checkpoints",
    "frechet_interval",
    "frechet_num",
    "compile",
    "compile_backend",
)

# Training precisions: float32, bfloat16 autocast, float16 autocast with gradient scaling.
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """Raised for an invalid training configuration; the message names the field and its value."""


@dataclass
class TrainConfig:
    """Settings of one training run of the reference StyleGAN2 generator and discriminator.

    The defaults train an unconditional 16x16 generator on the bundled digits for 4000 steps of
    batch 32 (128k images), about 8 minutes at the 270 to 310 images/s measured on an idle 2-core
    CPU with torch 2.13. The regularization settings follow StyleGAN2: path length
    regularization every ``pl_interval`` generator steps on a batch shrunk by ``pl_batch_shrink``,
    and lazy R1 on the real images every ``r1_interval`` discriminator steps.

    Attributes:
        data: bundled dataset name ("digits"), a folder of images or a dataset zip.
        out: the run folder.
        resolution: image height and width, a power of two >= 4.
        channels: image channels (1 or 3); None takes them from the data.
        steps: training steps; each step runs the generator and discriminator phases once.
        batch_size: images per step for the main phases.
        pl_weight: weight of the path length penalty; 0 turns path length regularization off.
        pl_interval: generator steps between path length regularization steps.
        pl_batch_shrink: the regularization batch is ``batch_size // pl_batch_shrink`` (at least 1).
        pl_decay: moving-average rate of ``pl_mean``.
        pl_sync: under torchrun, average the batch mean of the path lengths over all processes
            before it updates ``pl_mean``, so every process has the same average (the average over
            the global regularization batch). False keeps a separate average in each process.
        r1_gamma: R1 weight; the penalty is ``r1_gamma / 2 * E ||grad_x D(x)||^2`` on real images.
        r1_interval: discriminator steps between R1 steps; 0 turns R1 off.
        lr: Adam learning rate of both networks, before the lazy-regularization correction.
        betas: Adam betas, before the lazy-regularization correction.
        style_mixing_prob: probability that a generator batch mixes two latents at a random layer.
        ema_half_life_images: images over which the weight of G in G_ema halves.
        ema_rampup: the half-life is at most ``ema_rampup * images_seen`` early in training, so
            G_ema follows G closely at first; None turns the ramp-up off.
        seed: seed of every random draw of the run (latents, batches, noise, initial weights).
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when it is available.
        conditional: train a class-conditional model on the dataset's labels.
        precision: "fp32"; "bf16" (bfloat16 autocast of the loss phases, CPU or CUDA); or "fp16"
            (float16 autocast with a GradScaler per network, CUDA only).
        compile: run the path length steps with ``pathlength.compiled.CompiledPathLengthPenalty``
            (the penalty as one `torch.func` graph compiled by `torch.compile`). It needs
            ``precision="fp32"``; under torchrun the steps run eagerly, with a warning. Off by
            default: the first regularized step waits for the compilation.
        compile_backend: the ``torch.compile`` backend of ``compile``: "inductor" (fast code,
            30 s to 2 minutes to compile on a 2-core CPU) or "aot_eager" (compiles in seconds and
            runs no faster; for tests).
        z_dim, w_dim, channel_base, channel_max, mapping_layers: network sizes, passed to
            ``Generator`` and ``Discriminator``.
        num_samples: images in each sample grid (fixed latents).
        sample_interval, checkpoint_interval, log_interval: steps between sample grids,
            checkpoints and metric records. The last step always gets all three.
        keep_checkpoints: how many recent checkpoints to keep; 0 keeps all.
        frechet_interval: steps between evaluations of the Frechet distance in the bundled digits
            classifier's feature space (``Metrics/frechet_distance``, from G_ema with
            ``frechet_num`` generated images against the whole dataset); 0 turns it off.

    Raises:
        ConfigError: from the constructor, naming the first invalid field.

    Example:
        >>> config = TrainConfig(out="runs/digits", steps=100)
        >>> TrainConfig.from_json(config.to_json()) == config
        True
    """

    data: str = "digits"
    out: str = "runs/digits"
    resolution: int = 16
    channels: int | None = None
    steps: int = 4000
    batch_size: int = 32

    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    pl_sync: bool = True
    r1_gamma: float = 0.1
    r1_interval: int = 16

    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    style_mixing_prob: float = 0.9
    ema_half_life_images: int = 5000
    ema_rampup: float | None = 0.05

    seed: int = 0
    device: str | None = None
    conditional: bool = False
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"

    z_dim: int = 128
    w_dim: int = 128
    channel_base: int = 512
    channel_max: int = 128
    mapping_layers: int = 2

    num_samples: int = 100
    sample_interval: int = 500
    checkpoint_interval: int = 500
    log_interval: int = 50
    keep_checkpoints: int = 3
    frechet_interval: int = 1000
    frechet_num: int = 500

    format: int = field(default=CONFIG_FORMAT, repr=False)

    def __post_init__(self) -> None:
        # Adam rejects betas that mix int and float, so integral values are converted.
        self.betas = tuple(float(beta) if isinstance(beta, int) and not isinstance(beta, bool) else beta for beta in self.betas)  # type: ignore[assignment]
        self.out = os.fspath(self.out)
        self.data = os.fspath(self.data)
        self.validate()

    @property
    def pl_enabled(self) -> bool:
        """Whether path length regularization runs (``pl_weight`` is not 0)."""
        return self.pl_weight != 0

    @property
    def r1_enabled(self) -> bool:
        """Whether lazy R1 runs (``r1_gamma`` and ``r1_interval`` are both non-zero)."""
        return self.r1_gamma != 0 and self.r1_interval != 0

    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value is invalid."""
        _check_int("resolution", self.resolution, minimum=4)
        if self.resolution & (self.resolution - 1) != 0:
            raise ConfigError(f"resolution must be a power of two >= 4 (4, 8, 16, 32, ...), got {self.resolution}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1, 3 or None (take them from the data), got {self.channels!r}")
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"data must be a dataset name, folder or zip path, got {self.data!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"out must be a folder path, got {self.out!r}")

        _check_int("steps", self.steps, minimum=0)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_float("pl_weight", self.pl_weight, minimum=0.0)
        _check_int("pl_interval", self.pl_interval, minimum=1)
        _check_int("pl_batch_shrink", self.pl_batch_shrink, minimum=1)
        _check_float("pl_decay", self.pl_decay, minimum=0.0)
        if not 0 < self.pl_decay <= 1:
            raise ConfigError(f"pl_decay must be in (0, 1], got {self.pl_decay!r}")
        if not isinstance(self.pl_sync, bool):
            raise ConfigError(f"pl_sync must be true or false, got {self.pl_sync!r}")
        _check_float("r1_gamma", self.r1_gamma, minimum=0.0)
        _check_int("r1_interval", self.r1_interval, minimum=0)

        _check_float("lr", self.lr, minimum=0.0)
        if self.lr == 0:
            raise ConfigError("lr must be > 0, got 0")
        if len(self.betas) != 2 or not all(isinstance(beta, (int, float)) and 0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        _check_float("style_mixing_prob", self.style_mixing_prob, minimum=0.0)
        if self.style_mixing_prob > 1:
            raise ConfigError(f"style_mixing_prob must be in [0, 1], got {self.style_mixing_prob!r}")
        _check_int("ema_half_life_images", self.ema_half_life_images, minimum=0)
        if self.ema_rampup is not None:
            _check_float("ema_rampup", self.ema_rampup, minimum=0.0)
            if self.ema_rampup == 0:
                raise ConfigError("ema_rampup must be > 0 or None (no ramp-up), got 0")

        _check_int("seed", self.seed, minimum=0)
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise ConfigError(f"device must be a device string such as 'cpu' or 'cuda', or None, got {self.device!r}")
        if not isinstance(self.conditional, bool):
            raise ConfigError(f"conditional must be true or false, got {self.conditional!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ConfigError(f"compile_backend must be a torch.compile backend name such as 'inductor', got {self.compile_backend!r}")
        if self.compile and self.precision != "fp32":
            raise ConfigError(
                f"compile needs precision 'fp32', got precision {self.precision!r}: the compiled path length "
                "step has no autocast or gradient scaling. Drop --compile or train with --precision fp32."
            )

        for name in ("z_dim", "w_dim", "channel_base", "channel_max", "mapping_layers"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("num_samples", self.num_samples, minimum=1)
        for name in ("sample_interval", "checkpoint_interval", "log_interval"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("keep_checkpoints", self.keep_checkpoints, minimum=0)
        _check_int("frechet_interval", self.frechet_interval, minimum=0)
        _check_int("frechet_num", self.frechet_num, minimum=2)
        if self.format != CONFIG_FORMAT:
            raise ConfigError(f"format must be {CONFIG_FORMAT} (this version of pathlength), got {self.format!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict (betas as a list)."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from ``to_dict`` output; unknown keys raise ConfigError."""
        if not isinstance(values, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(values).__name__}")
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def to_json(self) -> str:
        """Return the config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Parse a config from JSON text; invalid JSON or fields raise ConfigError."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"training config is not valid JSON: {error}") from error
        return cls.from_dict(values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config from a JSON file such as a run folder's config.json."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read training config {str(path)!r}: {error.strerror or error}") from error
        return cls.from_json(text)

    def changed_fields(self, other: TrainConfig) -> list[str]:
        """Return the names of the fields whose values differ between this config and ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if mine[name] != theirs[name]]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")


def _check_float(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum:g}, got {value}")
