"""Loss scaling for float16: the inner gradient is scaled, and an overflow skips the step."""

from __future__ import annotations

import torch

from pathlength import PathLengthPenalty
from toys import LinearGenerator


def make_linear(seed: int = 0) -> LinearGenerator:
    return LinearGenerator(image_shape=(3, 8, 8), latent_shape=(4, 16), seed=seed, dtype=torch.float32)


def test_scaled_lengths_equal_unscaled():
    generator = make_linear()
    ws = torch.randn(3, 4, 16, requires_grad=True)
    noise = torch.randn(3, 3, 8, 8) / 8
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    plain = PathLengthPenalty(interval=1)(generator(ws), ws, noise)
    scaled = PathLengthPenalty(interval=1)(generator(ws), ws, noise, scaler=scaler)

    # A power-of-two scale multiplies and divides exactly in float32.
    assert torch.equal(scaled.lengths, plain.lengths)
    assert torch.equal(scaled.pl_mean, plain.pl_mean)


def test_overflow_skips_and_lowers_scale():
    generator = make_linear()
    ws = torch.randn(3, 4, 16, requires_grad=True)
    # A scale this large makes the scaled inner gradient overflow float32.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    optimizer = torch.optim.SGD(generator.parameters(), lr=0.1)
    weights_before = generator.A.detach().clone()
    plr = PathLengthPenalty(interval=1)
    plr.pl_mean.fill_(0.5)

    # J^T y entries above 2 times 2**127 exceed float32's maximum of about 3.4e38.
    result = plr(100 * generator(ws), ws, scaler=scaler)
    scaler.scale(result.loss).backward()
    scaler.step(optimizer)
    scaler.update()

    assert result.skipped
    assert "overflow" in result.reason
    assert torch.equal(plr.pl_mean, torch.tensor(0.5))
    # GradScaler saw the non-finite gradients: it skipped the optimizer step and backed off.
    assert torch.equal(generator.A.detach(), weights_before)
    assert scaler.get_scale() < 2.0**127
