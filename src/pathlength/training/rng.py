"""Capture and restore the global random number generators (Python, NumPy, torch CPU and CUDA) as
plain tensors and tuples, so a checkpoint can hold them and `torch.load(weights_only=True)` can read them."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Return the states of the global generators of Python, NumPy and torch.

    The NumPy key array becomes an int64 tensor, because ``torch.load(weights_only=True)`` does
    not read NumPy arrays. CUDA states are captured only when CUDA has been initialized.

    Example:
        >>> state = capture_rng_state()
        >>> a = torch.rand(1)
        >>> restore_rng_state(state)
        >>> torch.equal(a, torch.rand(1))
        True
    """
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(cuda_states),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by ``capture_rng_state``.

    CUDA states are restored only when the number of visible devices matches the saved one.
    Otherwise a warning is logged, because CUDA random draws will then differ from the original run.
    """
    random.setstate(_as_python_state(state["python"]))

    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )

    torch.set_rng_state(state["torch"])

    cuda_states = state.get("cuda", [])
    if not cuda_states:
        return
    if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all(cuda_states)
    else:
        logger.warning(
            "the checkpoint contains random states for %d CUDA devices but %d are visible; CUDA random "
            "draws (synthesis noise on the GPU) will differ from the original run",
            len(cuda_states),
            torch.cuda.device_count() if torch.cuda.is_available() else 0,
        )


def _as_python_state(value: Any) -> tuple:
    # random.setstate needs tuples; a state that went through lists (JSON) is converted back.
    version, internal, gauss_next = value
    return (version, tuple(internal), gauss_next)
