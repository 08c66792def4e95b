"""Small generators with a mapping and a synthesis network and known answers, for the diagnostics tests.

``LinearWGenerator`` is linear in w (x = reshape(A @ flatten(ws)) + bias) behind a nonlinear mapping,
so its Jacobian is A at every latent. ``IsometricGenerator`` has a Jacobian with equal singular
values, and ``ConstantGenerator`` ignores its latents.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module on one CPU thread, then restore the thread count.

    These models are tiny, and on a shared, oversubscribed CPU two threads ran them about ten times
    slower than one (300 projection steps: 35 s against 3 to 5 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LinearWGenerator(nn.Module):
    """Generator whose images are linear in w: ``x_b = reshape(A @ flatten(ws_b)) + bias``.

    The mapping network ``w = tanh(z @ M) * 2`` is nonlinear in z, and with ``num_ws`` set it
    broadcasts w to W+ [B, num_ws, w_dim]; with ``num_ws=None`` it returns plain W [B, w_dim].

    Args:
        z_dim, w_dim, num_ws: latent sizes.
        img_resolution, img_channels: images are [B, img_channels, img_resolution, img_resolution].
        matrix: A [C*R*R, L*D]; drawn from N(0, 1 / (L*D)) with ``seed`` when None.
        seed: seed of the random matrices.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        z_dim: int = 8,
        w_dim: int = 6,
        num_ws: int | None = 3,
        img_resolution: int = 4,
        img_channels: int = 2,
        matrix: Tensor | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.c_dim = 0
        self.img_resolution = img_resolution
        self.img_channels = img_channels

        rng = torch.Generator().manual_seed(seed)
        latent_size = (num_ws or 1) * w_dim
        pixels = img_channels * img_resolution * img_resolution
        if matrix is None:
            matrix = torch.randn(pixels, latent_size, generator=rng, dtype=torch.float64) / math.sqrt(latent_size)
        if tuple(matrix.shape) != (pixels, latent_size):
            raise ValueError(f"matrix must have shape [{pixels}, {latent_size}], got {tuple(matrix.shape)}")
        self.A = nn.Parameter(matrix.to(dtype))
        self.bias = nn.Parameter((0.1 * torch.randn(pixels, generator=rng, dtype=torch.float64)).to(dtype))
        self.register_buffer("M", torch.randn(z_dim, w_dim, generator=rng, dtype=torch.float64).to(dtype) / math.sqrt(z_dim))

    def mapping(self, z: Tensor, c: Tensor | None = None, truncation_psi: float = 1.0) -> Tensor:
        w = torch.tanh(z.to(self.M.dtype) @ self.M) * 2
        if self.num_ws is None:
            return w
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        batch = ws.shape[0]
        flat = ws.reshape(batch, -1) @ self.A.T + self.bias
        return flat.reshape(batch, self.img_channels, self.img_resolution, self.img_resolution)

    def singular_values(self) -> Tensor:
        """Return the singular values of A in float64, descending."""
        return torch.linalg.svdvals(self.A.detach().double())


class IsometricGenerator(LinearWGenerator):
    """`LinearWGenerator` with A = scale * Q, Q with orthonormal columns: every singular value is ``scale``."""

    def __init__(self, scale: float = 0.5, **kwargs) -> None:
        z_dim = kwargs.get("z_dim", 8)
        w_dim = kwargs.get("w_dim", 6)
        num_ws = kwargs.get("num_ws", 3)
        img_resolution = kwargs.get("img_resolution", 4)
        img_channels = kwargs.get("img_channels", 2)
        pixels = img_channels * img_resolution * img_resolution
        latent_size = (num_ws or 1) * w_dim
        rng = torch.Generator().manual_seed(kwargs.get("seed", 0) + 1)
        q, _ = torch.linalg.qr(torch.randn(pixels, latent_size, generator=rng, dtype=torch.float64))
        kwargs.update(z_dim=z_dim, w_dim=w_dim, num_ws=num_ws, img_resolution=img_resolution, img_channels=img_channels)
        super().__init__(matrix=scale * q, **kwargs)


class ConstantGenerator(nn.Module):
    """Generator whose images ignore the latents: a learned image repeated over the batch."""

    def __init__(self, z_dim: int = 8, w_dim: int = 6, num_ws: int = 3, img_resolution: int = 4, img_channels: int = 1, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        rng = torch.Generator().manual_seed(0)
        self.image = nn.Parameter(torch.randn(img_channels, img_resolution, img_resolution, generator=rng, dtype=torch.float64).tanh().to(dtype))
        self.register_buffer("M", torch.randn(z_dim, w_dim, generator=rng, dtype=torch.float64).to(dtype))

    def mapping(self, z: Tensor, c: Tensor | None = None, truncation_psi: float = 1.0) -> Tensor:
        return (z.to(self.M.dtype) @ self.M).unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        return self.image.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)


def small_stylegan2(seed: int = 0, img_resolution: int = 8, c_dim: int = 0):
    """Return the reference StyleGAN2 generator at a size that runs in milliseconds on a CPU."""
    from pathlength.models import Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=img_resolution, channel_base=64, channel_max=16)
