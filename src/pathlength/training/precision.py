"""Mixed precision for the trainer: autocast of the loss phases in bfloat16 or float16, and the
gradient scalers that float16 needs."""

from __future__ import annotations

import contextlib

import torch

from pathlength.training.config import PRECISIONS, ConfigError

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ConfigError when ``precision`` cannot run on ``device``.

    float16 autocast needs a gradient scaler, and the trainer uses it on CUDA only: on the CPU,
    bfloat16 has float32's exponent range and needs no scaler.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 needs a CUDA device (float16 autocast with a GradScaler), but the device is "
            f"{str(device)!r}; use --precision bf16 or fp32 there"
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Return the autocast context of the loss phases' forward passes: none for fp32.

    Parameters, gradients, the optimizer state, G_ema and ``pl_mean`` stay float32; only the
    operations inside the context run in the lower precision where autocast allows it.
    """
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Return a new ``torch.amp.GradScaler`` for fp16, or None for the precisions that need none.

    The trainer keeps one scaler per network, so an overflow in a generator phase lowers the
    generator's scale only.
    """
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
