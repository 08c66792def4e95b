"""Checkpoints of a training run, written atomically: network weights as safetensors and the training
state (optimizers, pl_mean, step, random states) as a tensor-only `torch.save` file.

A checkpoint is a folder ``RUN/checkpoints/step-XXXXXXX/``::

    G.safetensors, G_ema.safetensors, D.safetensors   weights; metadata contains class and init_kwargs
    training_state.pt                                 read with torch.load(weights_only=True)
    checkpoint.json                                   step, images seen, config, file names

The folder is written under a temporary name in the same directory, every file and the folder are
fsynced, and ``os.replace`` gives it its final name. Only then is the ``latest`` pointer file
replaced the same way. A write cut short at any point leaves the previous checkpoint complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from pathlength.models import Discriminator, Generator

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pathlength-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINTS_DIRNAME = "checkpoints"
LATEST_POINTER = "latest"
INFO_FILE = "checkpoint.json"
TRAINING_STATE_FILE = "training_state.pt"
NETWORK_NAMES = ("G", "G_ema", "D")
NETWORK_CLASSES: dict[str, type[nn.Module]] = {"Generator": Generator, "Discriminator": Discriminator}

_STEP_FOLDER = re.compile(r"^step-(\d+)$")
_TEMPORARY_PREFIX = ".tmp-"
_DISCARDED_PREFIX = ".old-"


class CheckpointError(ValueError):
    """Raised for a missing, incomplete or unreadable checkpoint; the message names the path."""


def checkpoint_name(step: int) -> str:
    """Return the folder name of the checkpoint at ``step``, such as ``step-0000500``."""
    return f"step-{step:07d}"


def save_checkpoint(
    checkpoints_dir: str | os.PathLike,
    step: int,
    networks: dict[str, nn.Module],
    training_state: dict[str, Any],
    info: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write a checkpoint folder atomically, point ``latest`` at it and remove older checkpoints.

    Args:
        checkpoints_dir: the run's ``checkpoints`` folder (created when missing).
        step: the training step the state belongs to; names the folder.
        networks: modules by name (``G``, ``G_ema``, ``D``); each must have ``init_kwargs``.
        training_state: tensors, numbers, strings and containers of them (no arbitrary objects),
            so that ``torch.load(weights_only=True)`` can read it back.
        info: JSON-serialisable metadata for ``checkpoint.json`` (the config, images seen).
        keep: how many of the newest checkpoints to keep after this one is written; 0 keeps all.

    Returns:
        The checkpoint folder.

    Raises:
        OSError: when a file cannot be written; the previous checkpoint is then left as it was.
    """
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(checkpoints_dir)

    final = checkpoints_dir / checkpoint_name(step)
    # A unique name made by hand rather than by tempfile.mkdtemp, whose folders get mode 0700: mkdir
    # gives the checkpoint the same permissions (from the umask) as the rest of the run folder.
    temporary = checkpoints_dir / f"{_TEMPORARY_PREFIX}{final.name}-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        for name, network in networks.items():
            _write_durably(temporary / f"{name}.safetensors", _network_bytes(network, step))

        buffer = io.BytesIO()
        torch.save(training_state, buffer)
        _write_durably(temporary / TRAINING_STATE_FILE, buffer.getvalue())

        full_info = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "networks": {name: f"{name}.safetensors" for name in networks},
            "training_state": TRAINING_STATE_FILE,
            **info,
        }
        _write_durably(temporary / INFO_FILE, json.dumps(full_info, indent=2).encode("utf-8"))
        _fsync_directory(temporary)

        if final.exists():
            _discard(final)
        os.replace(temporary, final)
        _fsync_directory(checkpoints_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    _write_durably(checkpoints_dir / LATEST_POINTER, f"{final.name}\n".encode("utf-8"), atomic=True)
    _fsync_directory(checkpoints_dir)

    if keep > 0:
        for old in list_checkpoints(checkpoints_dir)[:-keep]:
            _discard(old)
    return final


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Return the complete checkpoint folders in ``checkpoints_dir``, oldest step first.

    A folder counts as complete when it has a final ``step-*`` name and every file listed above.
    Temporary folders of an interrupted write never have a final name.
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []

    found = []
    for path in checkpoints_dir.iterdir():
        match = _STEP_FOLDER.match(path.name)
        if match and path.is_dir() and is_complete_checkpoint(path):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Return whether ``path`` is a folder holding every file of a checkpoint."""
    path = Path(path)
    required = [INFO_FILE, TRAINING_STATE_FILE] + [f"{name}.safetensors" for name in NETWORK_NAMES]
    return path.is_dir() and all((path / name).is_file() for name in required)


def find_latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    """Return the complete checkpoint with the highest step, or None when there is none.

    The ``latest`` pointer normally names that checkpoint. When it does not (a write stopped
    between the folder's rename and the pointer's update, or the pointer was removed), the
    highest complete checkpoint still wins and a warning names both.
    """
    checkpoints_dir = Path(checkpoints_dir)
    complete = list_checkpoints(checkpoints_dir)
    if not complete:
        return None

    newest = complete[-1]
    pointer = checkpoints_dir / LATEST_POINTER
    pointed = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    if pointed != newest.name:
        logger.warning(
            "checkpoint pointer %s names %r, but the newest complete checkpoint is %s; using %s",
            pointer,
            pointed,
            newest.name,
            newest.name,
        )
    return newest


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Return the checkpoint folder for a run folder, its ``checkpoints`` folder or a checkpoint folder.

    Raises:
        CheckpointError: when ``path`` does not exist or contains no complete checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist; pass a run folder or a checkpoint folder")
    if is_complete_checkpoint(path):
        return path

    for checkpoints_dir in (path / CHECKPOINTS_DIRNAME, path):
        latest = find_latest_checkpoint(checkpoints_dir)
        if latest is not None:
            return latest

    raise CheckpointError(
        f"no complete checkpoint in {str(path)!r}: expected a run folder with {CHECKPOINTS_DIRNAME}/step-*/ "
        f"or a checkpoint folder with {INFO_FILE}, {TRAINING_STATE_FILE} and "
        + ", ".join(f"{name}.safetensors" for name in NETWORK_NAMES)
    )


def read_checkpoint_info(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Return the contents of a checkpoint's ``checkpoint.json``."""
    path = Path(checkpoint) / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read checkpoint metadata {str(path)!r}: {error}") from error
    if info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pathlength checkpoint (format {info.get('format')!r})")
    return info


def read_network_weights(checkpoint: str | os.PathLike, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return the CPU state dict of network ``name`` (G, G_ema or D) and its metadata.

    The metadata has ``class`` (the network's class name) and ``init_kwargs`` (a dict).

    Raises:
        CheckpointError: when the file is missing or unreadable, or has no pathlength metadata.
    """
    path = Path(checkpoint) / f"{name}.safetensors"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot read network weights {str(path)!r}: {error}") from error

    class_name = metadata.get("class")
    if class_name not in NETWORK_CLASSES or "init_kwargs" not in metadata:
        raise CheckpointError(
            f"{str(path)!r} has no pathlength network metadata (class {class_name!r}); "
            "it was not written by pathlength's trainer"
        )
    return state, {"class": class_name, "init_kwargs": json.loads(metadata["init_kwargs"])}


def load_network(checkpoint: str | os.PathLike, name: str, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the network ``name`` (G, G_ema or D) of a checkpoint folder from its class and init_kwargs.

    Raises:
        CheckpointError: when the file is missing or unreadable, or its weights do not fit the
            architecture its metadata describes.
    """
    state, metadata = read_network_weights(checkpoint, name)
    network = NETWORK_CLASSES[metadata["class"]](**metadata["init_kwargs"])
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights in {str(Path(checkpoint) / name)!r}.safetensors do not match {metadata['class']}: {error}"
        ) from error
    return network.to(device)


def load_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's training state with ``torch.load(weights_only=True)`` onto the CPU."""
    path = Path(checkpoint) / TRAINING_STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"cannot read training state {str(path)!r}: {error}") from error


def load_generator(
    path: str | os.PathLike, device: torch.device | str = "cpu", ema: bool = True
) -> tuple[Generator, dict[str, Any]]:
    """Load a trained generator from a run folder or a checkpoint folder.

    Args:
        path: a run folder (its newest complete checkpoint is used), its ``checkpoints`` folder,
            or one ``step-*`` checkpoint folder.
        device: where the generator goes.
        ema: load G_ema (the moving average, used for sampling) when True, else the raw G.

    Returns:
        The generator in eval mode, and the checkpoint's ``checkpoint.json`` contents plus
        ``"checkpoint"`` (the folder, as a string) and ``"network"`` ("G_ema" or "G").

    Raises:
        CheckpointError: when no complete checkpoint is found or it cannot be read.

    Example:
        >>> generator, info = load_generator("runs/digits")
        >>> images = generator(torch.randn(8, generator.z_dim), noise_mode="const")
    """
    checkpoint = resolve_checkpoint(path)
    name = "G_ema" if ema else "G"
    generator = load_network(checkpoint, name, device)
    if not isinstance(generator, Generator):
        raise CheckpointError(f"{str(checkpoint / name)!r}.safetensors contains a {type(generator).__name__}, not a Generator")

    info = read_checkpoint_info(checkpoint)
    info["checkpoint"] = str(checkpoint)
    info["network"] = name
    return generator.eval(), info


def _network_bytes(network: nn.Module, step: int) -> bytes:
    init_kwargs = getattr(network, "init_kwargs", None)
    if init_kwargs is None:
        raise TypeError(f"{type(network).__name__} has no init_kwargs, so a checkpoint could not rebuild it")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in network.state_dict().items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "class": type(network).__name__,
        "init_kwargs": json.dumps(init_kwargs),
        "step": str(step),
    }
    return safetensors_save(tensors, metadata=metadata)


def _write_durably(path: Path, data: bytes, atomic: bool = False) -> None:
    """Write ``data`` to ``path`` and fsync it; with ``atomic`` go through a temporary file and os.replace."""
    target = path.with_name(f"{_TEMPORARY_PREFIX}{path.name}") if atomic else path
    with open(target, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if atomic:
        os.replace(target, path)


def _fsync_directory(path: Path) -> None:
    # A directory fsync makes renames inside it durable; Windows cannot open directories for it.
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _discard(path: Path) -> None:
    # Renaming first is atomic, so a removal cut short never leaves a partial folder under a final name.
    discarded = path.with_name(f"{_DISCARDED_PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, discarded)
    shutil.rmtree(discarded, ignore_errors=True)


def _remove_leftovers(checkpoints_dir: Path) -> None:
    # Temporary and discarded folders of an earlier process that stopped mid-write.
    for path in checkpoints_dir.iterdir():
        if path.name.startswith((_TEMPORARY_PREFIX, _DISCARDED_PREFIX)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
