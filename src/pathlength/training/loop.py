"""The StyleGAN2 training loop: builds the networks and optimizers from a `TrainConfig`, runs the loss
phases step by step, and writes the run folder (checkpoints, metrics, samples, log)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.autograd.profiler import record_function

import pathlength
from pathlength.compiled import CompiledPathLengthPenalty
from pathlength.data import ImageDataset, load_dataset
from pathlength.distributed import all_reduce_mean
from pathlength.models import Discriminator, Generator
from pathlength.penalty import PathLengthPenalty, lazy_adam_settings
from pathlength.training.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_training_state,
    read_checkpoint_info,
    read_network_weights,
    save_checkpoint,
)
from pathlength.training.config import RESUMABLE_CHANGES, ConfigError, TrainConfig
from pathlength.training.ema import ema_beta, update_ema
from pathlength.training.latents import LatentSampler, one_hot
from pathlength.training.losses import PhaseResult, StyleGAN2Loss
from pathlength.training.parallel import (
    ProcessContext,
    average_metrics,
    average_over_processes_,
    derive_seed,
    local_batch_size,
    process_group,
    quiet_unless_main,
    run_everywhere,
    run_on_main,
    state_checksum,
    wrap_networks,
)
from pathlength.training.precision import autocast, check_precision, make_grad_scaler
from pathlength.training.rng import capture_rng_state, restore_rng_state, seed_everything
from pathlength.training.run_folder import RunFolder, check_run_folder, create_run_folder
from pathlength.training.run_logging import MetricWindow, RunLogger
from pathlength.training.samples import display_scale, fixed_latents, generate_images, make_grid, save_png

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outputs of a finished `train` call.

    Attributes:
        run_dir: the run folder.
        step: the last step trained.
        images_seen: real images shown to the discriminator so far (step * batch_size).
        checkpoint: the newest checkpoint folder.
        metrics: the last metric record (empty when no step was trained).
    """

    run_dir: Path
    step: int
    images_seen: int
    checkpoint: Path | None
    metrics: dict[str, float]


def resolve_device(device: str | None) -> torch.device:
    """Return ``torch.device(device)``, or CUDA when available and CPU otherwise for None.

    Raises:
        ConfigError: for a string torch does not parse, or a CUDA device when CUDA is not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"device {device!r} is not a valid torch device; use 'cpu', 'cuda' or 'cuda:N'") from error

    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested, but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested, but only {torch.cuda.device_count()} CUDA devices are visible")
    return resolved


def make_adam(parameters: Iterable[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Return Adam (eps 1e-8) in its fused form where this torch build has one for the device.

    The fused kernel updates all parameters at once. On a 2-core CPU with torch 2.13 it took about
    a tenth of the per-tensor loop's time for the default generator. Builds or devices without it
    raise in the constructor, and then the per-tensor Adam is used.
    """
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, betas=betas, eps=1e-8, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr, betas=betas, eps=1e-8)


class Trainer:
    """The networks, optimizers, regularizer and random sources of one run, and one training step.

    ``G`` and ``D`` train; ``G_ema`` follows G as an exponential moving average and is used for
    samples. ``path_length_penalty`` always exists so its state (``pl_mean``, ``step``) is saved,
    but with ``pl_weight`` 0 the loss never calls it. Every network's parameters have
    ``requires_grad`` off except during that network's own phases, so a phase computes no
    gradients for the other network's weights.

    Random sources: the ``sampler`` generator (latents, fake labels, style mixing), the
    ``data_generator`` (real batches) and the global torch generator (synthesis noise and the
    projection noise y of path length regularization). All three are saved with a checkpoint.

    Under torchrun (``context.world_size`` > 1) each process trains on ``local_batch_size``
    samples of the global ``config.batch_size``. The loss phases call ``G_train`` and ``D_train``,
    the DistributedDataParallel wrappers, so gradients are averaged over processes. The penalty's
    ``sync`` averages ``pl_mean``, and ``w_avg`` is averaged after each update. G, D, G_ema and the
    optimizers therefore stay identical on every process. The three random sources are seeded from the
    seed, the rank and the step before every step (`seed_random_streams`), so each process draws
    different samples, and a resume needs no saved per-process state.

    NOTE: bit-identical resume is tested on the CPU only. On CUDA the random states are restored
    too, but some CUDA kernels (convolution backward) are not deterministic by default.
    """

    def __init__(
        self, config: TrainConfig, dataset: ImageDataset, device: torch.device, context: ProcessContext | None = None
    ) -> None:
        if config.conditional and not dataset.has_labels:
            raise ConfigError(
                f"conditional training needs class labels, but dataset {dataset.name!r} has none; "
                "add a dataset.json with labels or train without conditional"
            )
        check_precision(config.precision, device)
        self.config = config
        self.dataset = dataset
        self.device = device
        self.context = context if context is not None else ProcessContext(device=device)
        self.local_batch_size = local_batch_size(config.batch_size, self.context.world_size)
        self.c_dim = dataset.num_classes if config.conditional else 0

        seed_everything(config.seed)
        self.G = Generator(
            z_dim=config.z_dim,
            c_dim=self.c_dim,
            w_dim=config.w_dim,
            img_resolution=dataset.resolution,
            img_channels=dataset.num_channels,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
            mapping_layers=config.mapping_layers,
        ).to(device)
        self.D = Discriminator(
            c_dim=self.c_dim,
            img_resolution=dataset.resolution,
            img_channels=dataset.num_channels,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
        ).to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        for network in (self.G, self.D, self.G_ema):
            network.requires_grad_(False)
        self.G_train, self.D_train = wrap_networks(self.G, self.D, self.context)

        self.path_length_penalty = PathLengthPenalty(
            weight=config.pl_weight,
            decay=config.pl_decay,
            interval=config.pl_interval,
            batch_shrink=config.pl_batch_shrink,
            # Without a process group there is nothing to average, and a set sync would stop the
            # compiled penalty of pathlength.compiled from compiling.
            sync=all_reduce_mean if config.pl_sync and self.context.distributed else None,
        ).to(device)
        self.compiled_penalty = self._compiled_penalty()

        # Lazy regularization adds one optimizer step per interval, which these settings balance.
        g_lr, g_betas = lazy_adam_settings(config.lr, config.betas, config.pl_interval if config.pl_enabled else None)
        d_lr, d_betas = lazy_adam_settings(config.lr, config.betas, config.r1_interval if config.r1_enabled else None)
        self.optimizer_G = make_adam(self.G.parameters(), lr=g_lr, betas=g_betas)
        self.optimizer_D = make_adam(self.D.parameters(), lr=d_lr, betas=d_betas)

        self.sampler = LatentSampler(
            config.z_dim, device, seed=config.seed + 1, labels=dataset.labels, num_classes=self.c_dim
        )
        self.data_generator = torch.Generator().manual_seed(config.seed + 2)
        self.scaler_G = make_grad_scaler(config.precision, device)
        self.scaler_D = make_grad_scaler(config.precision, device)
        self.loss = StyleGAN2Loss(
            self.G_train,
            self.D_train,
            self.sampler,
            self.path_length_penalty if config.pl_enabled else None,
            r1_gamma=config.r1_gamma,
            r1_interval=config.r1_interval,
            style_mixing_prob=config.style_mixing_prob,
            compiled_penalty=self.compiled_penalty,
        )

        self.step = 0
        self.images_seen = 0

    def _compiled_penalty(self) -> CompiledPathLengthPenalty | None:
        """Return the compiled path length step when ``config.compile`` is set (and PLR is on), else None."""
        config = self.config
        if not config.compile or not config.pl_enabled:
            return None
        if self.context.distributed:
            # The compiled step adds its gradients outside the DistributedDataParallel wrapper's
            # forward, so the wrapper would not all-reduce them.
            logger.warning("compile is ignored under torchrun: path length regularization runs eagerly, through the DDP wrappers")
            return None
        return CompiledPathLengthPenalty(
            self.path_length_penalty, self.G.synthesis, backend=config.compile_backend, accumulate=False
        )

    def train_step(self, window: MetricWindow) -> None:
        """Run one step: generator main, generator path length (when due), discriminator main, R1 (when due).

        Each phase works on this process's ``local_batch_size`` samples; ``images_seen`` and the
        EMA count the global batch.
        """
        if self.context.distributed:
            self.seed_random_streams(self.step)

        batch_size = self.local_batch_size
        real, labels = self.dataset.sample_batch(batch_size, generator=self.data_generator, device=self.device)
        real_c = one_hot(labels, self.c_dim).to(self.device) if self.c_dim > 0 else None
        scaler_G, scaler_D = self.scaler_G, self.scaler_D

        self._run_phase("G/main", self.G, self.optimizer_G, scaler_G, window, lambda: self.loss.generator_main(batch_size))
        if self.context.distributed:
            # Each process moved w_avg towards its own batch mean. The mean of the results is the
            # move towards the global batch mean, and it keeps w_avg (and G_ema) identical.
            average_over_processes_(self.G.mapping.w_avg)
        self._run_phase(
            "G/pl", self.G, self.optimizer_G, scaler_G, window, lambda: self.loss.generator_path_length(batch_size, scaler_G)
        )
        self._run_phase(
            "D/main",
            self.D,
            self.optimizer_D,
            scaler_D,
            window,
            lambda: self.loss.discriminator_main(real, real_c, batch_size),
        )
        if self.config.r1_enabled and self.step % self.config.r1_interval == 0:
            self._run_phase(
                "D/r1", self.D, self.optimizer_D, scaler_D, window, lambda: self.loss.discriminator_r1(real, real_c, scaler_D)
            )
        for name, scaler in (("G", scaler_G), ("D", scaler_D)):
            if scaler is not None:
                window.add({f"loss_scale/{name}": torch.tensor(scaler.get_scale())})

        self.step += 1
        self.images_seen += self.config.batch_size
        with record_function("G_ema"):
            beta = ema_beta(
                self.config.batch_size, self.images_seen, self.config.ema_half_life_images, self.config.ema_rampup
            )
            update_ema(self.G_ema, self.G, beta)

    def _run_phase(
        self,
        name: str,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        window: MetricWindow,
        compute: Callable[[], PhaseResult | None],
    ) -> None:
        with record_function(name):
            network.requires_grad_(True)
            try:
                # Only the forward passes (the inner gradients of the regularizers included) run
                # under autocast; the backward follows the dtypes they recorded.
                with autocast(self.config.precision, self.device):
                    result = compute()
                if result is not None:
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is None:
                        result.loss.backward()
                        optimizer.step()
                    else:
                        # A step whose gradients overflowed is skipped, and the scale is lowered.
                        scaler.scale(result.loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    window.add(result.stats)
            finally:
                network.requires_grad_(False)

    def seed_random_streams(self, step: int) -> None:
        """Seed this process's latent, real-batch and noise streams from the seed, its rank and ``step``.

        Under torchrun this runs before every step, so every process draws its own samples, and a
        resume with the same number of processes repeats the draws of an uninterrupted run.
        """
        seed, rank = self.config.seed, self.context.rank
        self.sampler.generator.manual_seed(derive_seed(seed, "latents", rank, step))
        self.data_generator.manual_seed(derive_seed(seed, "data", rank, step))
        torch.manual_seed(derive_seed(seed, "noise", rank, step))

    def networks(self) -> dict[str, nn.Module]:
        """Return the networks a checkpoint stores, by file name."""
        return {"G": self.G, "G_ema": self.G_ema, "D": self.D}

    def training_state(self) -> dict:
        """Return the state besides the weights that a bit-identical resume needs."""
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "optimizer_G": self.optimizer_G.state_dict(),
            "optimizer_D": self.optimizer_D.state_dict(),
            "path_length_penalty": self.path_length_penalty.state_dict(),
            "sampler": self.sampler.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "rng": capture_rng_state(),
            "world_size": self.context.world_size,
            "grad_scaler_G": self.scaler_G.state_dict() if self.scaler_G is not None else {},
            "grad_scaler_D": self.scaler_D.state_dict() if self.scaler_D is not None else {},
        }

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Restore weights and training state from a checkpoint folder written by `save_checkpoint`.

        Raises:
            CheckpointError: when a network in the checkpoint has another architecture than this
                run's config builds, or a file cannot be read.
        """
        self.load_state(read_checkpoint_state(checkpoint))

    def load_state(self, checkpoint_state: dict) -> None:
        """Restore weights and training state from `read_checkpoint_state` output.

        The checkpoint contains the global state: weights, optimizers, ``pl_mean`` and the step. The
        random streams are restored only when both the checkpoint and this run have one process.
        Otherwise they are derived from the seed, the rank and the step, so a resume with another
        number of processes continues the same run with other samples than the original would
        have drawn.

        Raises:
            CheckpointError: when a network in the checkpoint has another architecture than this
                run's config builds.
        """
        source = checkpoint_state["checkpoint"]
        for name, network in self.networks().items():
            state, metadata = checkpoint_state["networks"][name]
            if metadata["init_kwargs"] != network.init_kwargs:
                raise CheckpointError(
                    f"{name} in {source!r} was built with {metadata['init_kwargs']}, but this run's config "
                    f"builds {network.init_kwargs}; resume with the config the run was started with"
                )
            network.load_state_dict(state)

        state = checkpoint_state["training"]
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.optimizer_G.load_state_dict(state["optimizer_G"])
        self.optimizer_D.load_state_dict(state["optimizer_D"])
        self.path_length_penalty.load_state_dict(state["path_length_penalty"])
        for scaler, key in ((self.scaler_G, "grad_scaler_G"), (self.scaler_D, "grad_scaler_D")):
            if scaler is not None and state.get(key):
                scaler.load_state_dict(state[key])

        saved_world_size = int(state.get("world_size", 1))
        if self.context.distributed:
            return
        if saved_world_size == 1:
            self.sampler.load_state_dict(state["sampler"])
            self.data_generator.set_state(state["data_generator"])
            restore_rng_state(state["rng"])
        else:
            self.seed_random_streams(self.step)


def read_checkpoint_state(checkpoint: Path) -> dict:
    """Read what `Trainer.load_state` needs from a checkpoint folder, onto the CPU.

    Returns:
        ``{"checkpoint": path string, "networks": {name: (state dict, metadata)}, "training": state}``.

    Raises:
        CheckpointError: when a file cannot be read.
    """
    return {
        "checkpoint": str(checkpoint),
        "networks": {name: read_network_weights(checkpoint, name) for name in ("G", "G_ema", "D")},
        "training": load_training_state(checkpoint),
    }


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    rank_checksums: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a StyleGAN2 generator with the settings in ``config`` and write the run folder ``config.out``.

    With ``resume``, training continues from the newest complete checkpoint in ``config.out``.
    Only the fields in ``RESUMABLE_CHANGES`` (and ``out``) may differ from the run's saved
    config.json. On the CPU the continued run then matches an uninterrupted one step for step.

    Under torchrun (WORLD_SIZE > 1 in the environment) every process calls this function: it
    joins the process group, trains its share of the global batch in DistributedDataParallel, and
    rank 0 alone writes the run folder. A resume may use another number of processes than the
    run that wrote the checkpoint (see `Trainer.load_state`).

    Args:
        config: the run's settings.
        resume: continue the run in ``config.out`` instead of starting a new one.
        progress: show a progress bar on stderr (rank 0 only).
        rank_checksums: a folder where each process writes ``rank-R.json`` at the end, with
            SHA-256 digests of its G, G_ema and D and its pl_mean, to check that processes agree.

    Returns:
        The run folder, final step, images seen, newest checkpoint and the last metric record
        (averaged over processes).

    Raises:
        RunFolderError: when ``config.out`` is not empty without ``resume``, or has no complete
            checkpoint with it, or cannot be written.
        ConfigError: for an invalid device or precision, a conditional run without labels, a
            batch size that the processes cannot share evenly, or a resumed config that changes a
            field other than those allowed.
        DatasetError: when ``config.data`` cannot be loaded.
        CheckpointError: when the checkpoint to resume from cannot be read.

    Example:
        >>> result = train(TrainConfig(data="digits", out="runs/digits", steps=100))
        >>> result.checkpoint.name
        'step-0000100'
    """
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    with process_group(device) as context, quiet_unless_main(context):
        return _train(config, context, resume, progress and context.is_main, rank_checksums)


def _train(
    config: TrainConfig,
    context: ProcessContext,
    resume: bool,
    progress: bool,
    rank_checksums: str | os.PathLike | None,
) -> TrainResult:
    # Every process raises this error itself, before the first collective that could wait for it.
    local_batch_size(config.batch_size, context.world_size)

    # Rank 0 alone reads and writes the run folder, so it need not be shared between nodes. The
    # other processes get what it found, or raise what it raised.
    def inspect_run_folder() -> tuple[RunFolder, Path | None]:
        folder = check_run_folder(config.out, resume)
        checkpoint = None
        if resume:
            _check_resumable(config, TrainConfig.load(folder.config))
            checkpoint = find_latest_checkpoint(folder.checkpoints)
        return folder, checkpoint

    folder, checkpoint = run_on_main(context, inspect_run_folder)
    dataset = run_everywhere(context, lambda: load_dataset(config.data, config.resolution, config.channels))
    trainer = Trainer(config, dataset, context.device, context)
    if checkpoint is not None:
        trainer.load_state(run_on_main(context, lambda: read_checkpoint_state(checkpoint)))
        if trainer.step > config.steps:
            raise ConfigError(
                f"steps {config.steps} is below the step of the checkpoint to resume ({trainer.step} in "
                f"{str(checkpoint)!r}); pass --steps {trainer.step} or more"
            )

    def prepare_run_folder() -> None:
        create_run_folder(folder)
        _write_config(folder, config)

    run_on_main(context, prepare_run_folder)

    run_logger: contextlib.AbstractContextManager = contextlib.nullcontext()
    if context.is_main:
        run_logger = RunLogger(folder, start_step=trainer.step, total_steps=config.steps, progress=progress)
    with run_logger as run_log:
        if context.is_main:
            _log_start(folder, config, dataset, context.device, trainer, checkpoint)
        started = time.perf_counter()
        try:
            metrics, checkpoint = _run_steps(trainer, folder, run_log, checkpoint)
        except KeyboardInterrupt:
            logger.warning(
                "Interrupted during step %d; the newest complete checkpoint is %s; continue with --resume",
                trainer.step + 1,
                find_latest_checkpoint(folder.checkpoints) if context.is_main else "on rank 0",
            )
            raise
        if context.is_main:
            _log_end(folder, trainer, checkpoint, time.perf_counter() - started)

    if rank_checksums is not None:
        _write_rank_checksums(Path(rank_checksums), trainer)
    return TrainResult(folder.root, trainer.step, trainer.images_seen, checkpoint, metrics)


def _write_rank_checksums(folder: Path, trainer: Trainer) -> Path:
    """Write this process's weight digests, pl_mean and step to ``folder/rank-R.json``."""
    pl_mean = float(trainer.path_length_penalty.pl_mean.item())
    record = {
        "rank": trainer.context.rank,
        "world_size": trainer.context.world_size,
        "step": trainer.step,
        "pl_mean": pl_mean,
        "pl_mean_hex": pl_mean.hex(),
        "checksums": {name: state_checksum(network.state_dict()) for name, network in trainer.networks().items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{trainer.context.rank}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def _run_steps(
    trainer: Trainer, folder: RunFolder, run_log: RunLogger | None, checkpoint: Path | None
) -> tuple[dict[str, float], Path | None]:
    """Train to ``config.steps``; ``run_log`` is None on every process but rank 0, which writes the outputs."""
    config = trainer.config
    context = trainer.context
    sample_z, sample_c, sample_columns = fixed_latents(trainer.G, config.num_samples, config.seed)
    window = MetricWindow()
    metrics: dict[str, float] = {}

    if trainer.step == 0 and run_log is not None:
        _write_samples(trainer, folder, run_log, sample_z, sample_c, sample_columns)
    if trainer.step == config.steps:
        logger.info("The run is already at step %d of %d; nothing to train", trainer.step, config.steps)
        if checkpoint is None:
            checkpoint = run_on_main(context, lambda: _save(trainer, folder))
        return metrics, checkpoint

    while trainer.step < config.steps:
        started = time.perf_counter()
        trainer.train_step(window)
        window.add_step(config.batch_size, time.perf_counter() - started)

        step = trainer.step
        is_last = step == config.steps
        logged = None
        if step % config.log_interval == 0 or is_last:
            summary = window.summarize()
            summary["pl_mean"] = trainer.path_length_penalty.pl_mean.item()
            logged = average_metrics(context, summary)
            window.reset()
            if run_log is not None:
                run_log.write_metrics(step, trainer.images_seen, logged)
            metrics = logged
        if run_log is not None and (step % config.sample_interval == 0 or is_last):
            _write_samples(trainer, folder, run_log, sample_z, sample_c, sample_columns)
        if run_log is not None and config.frechet_interval and step % config.frechet_interval == 0:
            run_log.write_metrics(step, trainer.images_seen, {"Metrics/frechet_distance": _frechet_distance(trainer)})
        if step % config.checkpoint_interval == 0 or is_last:
            # The other processes wait here until rank 0 has written the checkpoint, or raise its error.
            checkpoint = run_on_main(context, lambda: _save(trainer, folder))
        if run_log is not None:
            run_log.update_progress(1, logged)

    return metrics, checkpoint


def _frechet_distance(trainer: Trainer) -> float:
    """Return the classifier Frechet distance of G_ema against the training data."""
    from pathlength.diagnostics import classifier_frechet_distance

    # The evaluation draws its own seeded latents; forking keeps the training RNG streams, and so
    # a resumed run, unchanged.
    with record_function("frechet_distance"), torch.random.fork_rng(devices=[]):
        result = classifier_frechet_distance(
            trainer.G_ema, trainer.dataset, num=trainer.config.frechet_num, seed=trainer.config.seed
        )
    logger.info("Step %d: classifier Frechet distance %.4f", trainer.step, result.value)
    return float(result.value)


def _save(trainer: Trainer, folder: RunFolder) -> Path:
    info = {
        "images_seen": trainer.images_seen,
        "world_size": trainer.context.world_size,
        "pathlength_version": pathlength.__version__,
        "config": trainer.config.to_dict(),
    }
    with record_function("checkpoint"):
        path = save_checkpoint(
            folder.checkpoints,
            trainer.step,
            trainer.networks(),
            trainer.training_state(),
            info,
            keep=trainer.config.keep_checkpoints,
        )
    logger.debug("Saved checkpoint %s", path)
    return path


def _write_samples(
    trainer: Trainer,
    folder: RunFolder,
    run_log: RunLogger,
    z: torch.Tensor,
    c: torch.Tensor | None,
    columns: int | None,
) -> None:
    images = generate_images(trainer.G_ema, z, c)
    grid = make_grid(images, columns=columns, padding=2, scale=display_scale(images.shape[-1]))
    path = folder.samples / f"step-{trainer.step:07d}.png"
    save_png(grid, path)
    save_png(grid, folder.samples / "latest.png")
    run_log.write_image(trainer.step, grid)


def _check_resumable(config: TrainConfig, saved: TrainConfig) -> None:
    allowed = set(RESUMABLE_CHANGES) | {"out"}
    changed = [name for name in config.changed_fields(saved) if name not in allowed]
    if changed:
        details = "; ".join(f"{name}: run has {getattr(saved, name)!r}, got {getattr(config, name)!r}" for name in changed)
        raise ConfigError(
            f"cannot resume with a changed config ({details}); only {', '.join(sorted(allowed))} may change"
        )


def _write_config(folder: RunFolder, config: TrainConfig) -> None:
    temporary = folder.config.with_name(f".tmp-{folder.config.name}")
    temporary.write_text(config.to_json() + "\n", encoding="utf-8")
    os.replace(temporary, folder.config)


def _log_start(
    folder: RunFolder,
    config: TrainConfig,
    dataset: ImageDataset,
    device: torch.device,
    trainer: Trainer,
    checkpoint: Path | None,
) -> None:
    if checkpoint is not None:
        info = read_checkpoint_info(checkpoint)
        logger.info("Resuming %s from %s (step %d, %d images)", folder.root, checkpoint, info["step"], info["images_seen"])
        saved_world_size = info.get("world_size", 1)
        if saved_world_size != trainer.context.world_size:
            logger.info(
                "The checkpoint was written by %d process(es) and this run has %d: weights, optimizers, pl_mean "
                "and the step continue, and the random streams are derived from the seed, rank and step, so "
                "the samples differ from those of a resume with %d",
                saved_world_size,
                trainer.context.world_size,
                saved_world_size,
            )
    else:
        logger.info("Starting run %s", folder.root)
    logger.info(
        "Data %r: %d images of %dx%d with %d channel(s), %d classes; device %s; steps %d to %d at batch %d",
        config.data,
        len(dataset),
        dataset.resolution,
        dataset.resolution,
        dataset.num_channels,
        dataset.num_classes,
        device,
        trainer.step,
        config.steps,
        config.batch_size,
    )
    logger.info("Config: %s", config.to_dict())
    context = trainer.context
    if context.distributed:
        logger.info(
            "Data-parallel training on %d processes (%s backend): global batch %d, %d per process; "
            "pl_mean %s; per-process thread count %d",
            context.world_size,
            context.backend,
            config.batch_size,
            trainer.local_batch_size,
            "averaged over processes" if config.pl_sync else "kept per process (pl_sync off)",
            torch.get_num_threads(),
        )
    logger.info("Precision: %s", config.precision)
    logger.info(
        "Path length regularization: %s",
        (
            f"weight {config.pl_weight}, every {config.pl_interval} generator steps on batches of "
            f"{trainer.path_length_penalty.batch_size(trainer.local_batch_size)}"
            + (" per process" if context.distributed else "")
            if config.pl_enabled
            else "off"
        ),
    )
    if trainer.compiled_penalty is not None:
        logger.info(
            "Path length steps are compiled with torch.compile (backend %r); the first one waits for the compilation",
            config.compile_backend,
        )
    logger.info(
        "Outputs: config %s, log %s, metrics %s, TensorBoard %s, samples %s, checkpoints %s",
        folder.config,
        folder.log_file,
        folder.metrics,
        folder.tensorboard,
        folder.samples,
        folder.checkpoints,
    )


def _log_end(folder: RunFolder, trainer: Trainer, checkpoint: Path | None, seconds: float) -> None:
    logger.info("Finished at step %d (%d images) after %.1f s", trainer.step, trainer.images_seen, seconds)
    logger.info("Checkpoint: %s", checkpoint)
    logger.info("Samples: %s", folder.samples / "latest.png")
    logger.info("Metrics: %s; TensorBoard: tensorboard --logdir %s", folder.metrics, folder.tensorboard)
    logger.info("Log: %s", folder.log_file)
