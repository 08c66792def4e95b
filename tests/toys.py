"""Small generators for testing path length regularization, built from pure torch ops.

Every op supports double backward, so the generators run the penalty in float64 and under
`torch.autograd.gradgradcheck`. `LinearGenerator` has a closed-form Jacobian, and `ModConvGenerator`
is a StyleGAN2-like stack of modulated convolutions with W+ latents.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearGenerator(nn.Module):
    """Generator ``x_b = reshape(A @ flatten(w_b))`` whose Jacobian is A for every sample.

    With noise y the gradient of ``sum(x * y)`` with respect to ``w_b`` is ``A^T flatten(y_b)``.

    Args:
        image_shape: (C, H, W) of one image.
        latent_shape: (L, D) for W+ latents [B, L, D], or (D,) for plain W latents [B, D].
        seed: seed of the generator that draws A.
        dtype: dtype of A (float64 for exactness tests).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 8, 8),
        latent_shape: tuple[int, ...] = (4, 16),
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_shape = tuple(latent_shape)
        pixels = math.prod(self.image_shape)
        latent_size = math.prod(self.latent_shape)
        rng = torch.Generator().manual_seed(seed)
        matrix = torch.randn(pixels, latent_size, generator=rng, dtype=dtype) / math.sqrt(latent_size)
        self.A = nn.Parameter(matrix)

    def forward(self, ws: Tensor) -> Tensor:
        batch = ws.shape[0]
        flat = ws.reshape(batch, -1)
        return (flat @ self.A.T).reshape(batch, *self.image_shape)


class ModulatedConv(nn.Module):
    """Convolution whose weight is scaled per sample by a style computed from one w.

    The style ``s = affine(w)`` scales the input channels of the weight. With demodulation, each
    output filter is then divided by its L2 norm (plus 1e-8), as in StyleGAN2. The batch runs as one
    grouped convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int,
        demodulate: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, in_channels)
        with torch.no_grad():
            self.affine.bias.fill_(1.0)
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.demodulate = demodulate

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        batch, in_channels, height, width = x.shape
        out_channels, _, kernel_size, _ = self.weight.shape

        styles = self.affine(w)
        weight = self.weight.unsqueeze(0) * styles[:, None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)

        grouped = weight.reshape(batch * out_channels, in_channels, kernel_size, kernel_size)
        out = F.conv2d(x.reshape(1, batch * in_channels, height, width), grouped, padding=kernel_size // 2, groups=batch)
        out = out.reshape(batch, out_channels, height, width)

        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out


class ModConvGenerator(nn.Module):
    """StyleGAN2-like synthesis toy: W+ latents [B, 4, 16] to images [B, 3, height, width].

    A learned constant [channels, height, width] passes three 3x3 modulated, demodulated
    convolutions with leaky ReLU (w rows 0 to 2), then a 1x1 modulated output layer without
    demodulation and with a bias (w row 3).
    """

    num_ws = 4
    w_dim = 16

    def __init__(self, height: int = 8, width: int = 8, channels: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.const = nn.Parameter(torch.randn(channels, height, width))
        self.convs = nn.ModuleList([ModulatedConv(channels, channels, self.w_dim, 3) for _ in range(self.num_ws - 1)])
        self.to_rgb = ModulatedConv(channels, 3, self.w_dim, 1, demodulate=False, bias=True)
        self.to(dtype)

    def forward(self, ws: Tensor) -> Tensor:
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for index, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x, ws[:, index]), negative_slope=0.2)
        return self.to_rgb(x, ws[:, self.num_ws - 1])

    def random_ws(self, batch: int, seed: int = 0) -> Tensor:
        """Return W+ latents [batch, 4, 16] drawn from N(0, I) with their own seed, in the module's dtype."""
        rng = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.num_ws, self.w_dim, generator=rng).to(self.const.dtype)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block and restore the previous count after.

    The toys' tensors are far too small to gain from threads, and on a busy 2-core machine two
    spinning OpenMP threads made these tests about 8x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
