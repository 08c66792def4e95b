"""Exponential moving average of the generator's weights (G_ema), which StyleGAN2 samples from."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, images_seen: int, half_life_images: float, rampup: float | None = None) -> float:
    """Return the weight of the old average for one step of ``batch_size`` images.

    With half-life h images, beta = 0.5 ** (batch_size / h), so the old average's weight halves
    every h images. With ``rampup``, h is at most ``rampup * images_seen``, so early in training,
    when G changes fast, G_ema follows it closely. A half-life of 0 copies G (beta 0).

    Example:
        >>> round(ema_beta(32, images_seen=10**6, half_life_images=32), 3)
        0.5
    """
    half_life = float(half_life_images)
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch_size / half_life)


@torch.no_grad()
def update_ema(ema_module: nn.Module, module: nn.Module, beta: float) -> None:
    """Set every parameter p_ema <- beta * p_ema + (1 - beta) * p, and copy every buffer from ``module``.

    Buffers (the tracked ``w_avg``, the constant noise) are copied rather than averaged, because
    they are statistics or constants of the current network, not weights.
    """
    for ema_parameter, parameter in zip(ema_module.parameters(), module.parameters(), strict=True):
        ema_parameter.copy_(parameter.detach().lerp(ema_parameter, beta))
    for ema_buffer, buffer in zip(ema_module.buffers(), module.buffers(), strict=True):
        ema_buffer.copy_(buffer)
