"""Reference StyleGAN2 networks (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN",
CVPR 2020): the mapping network, the skip-architecture synthesis network with modulated convolutions,
and the residual discriminator, sized by default to train on small images on a CPU."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathlength.models.layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    NORMALIZE_EPS,
    EqualizedConv2d,
    EqualizedLinear,
    make_depthwise_resample_filter,
    minibatch_stddev,
    modulated_conv2d,
    upsample2d,
)

NOISE_MODES = ("random", "const", "none")


def validate_image_shape(img_resolution: int, img_channels: int) -> None:
    """Raise ValueError unless img_resolution is a power of two >= 4 and img_channels a positive integer.

    Python and NumPy integers pass. Floats and booleans fail, even when their value is integral.
    """
    if not is_integer(img_resolution) or img_resolution < 4 or (img_resolution & (img_resolution - 1)) != 0:
        raise ValueError(f"img_resolution must be a power of two >= 4 (4, 8, 16, 32, ...), got {img_resolution!r}")
    if not is_integer(img_channels) or img_channels < 1:
        raise ValueError(f"img_channels must be a positive integer (1 for grayscale, 3 for RGB), got {img_channels!r}")


def is_integer(value: Any) -> bool:
    """Return whether value is a Python or NumPy integer other than a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Return the feature channels at a resolution, min(channel_base // resolution, channel_max).

    Raises:
        ValueError: if the result is below 1, which happens when channel_base < resolution.

    Example:
        >>> [channels_at(r, channel_base=512, channel_max=128) for r in (4, 8, 16, 32)]
        [128, 64, 32, 16]
    """
    channels = min(channel_base // resolution, channel_max)
    if channels < 1:
        raise ValueError(
            f"channel_base={channel_base} with channel_max={channel_max} leaves no channels at resolution "
            f"{resolution}; use channel_base >= {resolution} and channel_max >= 1"
        )
    return channels


def block_resolutions(img_resolution: int) -> list[int]:
    """Return [4, 8, ..., img_resolution], the resolutions of the synthesis blocks."""
    return [2**exponent for exponent in range(2, int(math.log2(img_resolution)) + 1)]


def normalize_2nd_moment(x: torch.Tensor, eps: float = NORMALIZE_EPS) -> torch.Tensor:
    """Scale each row of x [B, D] to unit mean square: x / sqrt(mean over D of x^2 + eps)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def check_input_shape(name: str, value: torch.Tensor | None, trailing_shape: list[int], fix: str = "") -> None:
    """Raise ValueError unless value is a tensor of shape [B, *trailing_shape]."""
    expected = "[B, " + ", ".join(str(size) for size in trailing_shape) + "]"
    if value is None:
        raise ValueError(f"{name} is required with shape {expected}, got None" + (f"; {fix}" if fix else ""))
    if value.ndim != len(trailing_shape) + 1 or list(value.shape[1:]) != list(trailing_shape):
        raise ValueError(f"{name} must have shape {expected}, got {list(value.shape)}")


class MappingNetwork(nn.Module):
    """Map latents z (and labels c) to intermediate latents w, broadcast to one per synthesis layer.

    z is normalized to unit second moment. With c_dim > 0 the labels pass through a linear embedding
    of w_dim features, are normalized the same way and concatenated to z. An MLP of num_layers
    equalized linear layers (leaky ReLU, learning rate multiplier lr_multiplier) follows.

    The module tracks the average w in the `w_avg` buffer [w_dim] (saved in the state dict): a forward
    with update_w_avg=True sets w_avg <- w_avg_beta * w_avg + (1 - w_avg_beta) * mean over the batch of w.
    Truncation then moves the ws towards it, ws <- w_avg + truncation_psi * (ws - w_avg), in the first
    truncation_cutoff layers (all layers when None).

    Args:
        z_dim: latent size; 0 for a label-only mapping.
        c_dim: label size; 0 for an unconditional model.
        w_dim: intermediate latent size.
        num_ws: number of ws to broadcast to; None returns a single w [B, w_dim].
        num_layers: depth of the MLP (8 in the paper, 2 by default for small images).
        lr_multiplier: learning rate multiplier of the MLP (0.01 in the paper).
        w_avg_beta: decay of the tracked average; None keeps no w_avg buffer and forbids truncation.

    Example:
        >>> mapping = MappingNetwork(z_dim=16, c_dim=0, w_dim=16, num_ws=4)
        >>> mapping(torch.randn(2, 16)).shape
        torch.Size([2, 4, 16])
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        if z_dim < 0 or c_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(
                f"z_dim and c_dim must be >= 0 with at least one positive, got z_dim={z_dim}, c_dim={c_dim}"
            )
        if w_dim < 1:
            raise ValueError(f"w_dim must be a positive integer, got {w_dim}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers}")
        if num_ws is not None and num_ws < 1:
            raise ValueError(f"num_ws must be a positive integer or None, got {num_ws}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        self.embed = EqualizedLinear(c_dim, w_dim) if c_dim > 0 else None

        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualizedLinear(features[index], features[index + 1], lr_multiplier=lr_multiplier, activation="lrelu")
            for index in range(num_layers)
        )

        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))
        else:
            self.w_avg = None

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """Return ws [B, num_ws, w_dim] (or w [B, w_dim] when num_ws is None) in the dtype of the parameters.

        c is required when c_dim > 0 and ignored when c_dim is 0. z is ignored when z_dim is 0.
        """
        parts = []
        if self.z_dim > 0:
            check_input_shape("z", z, [self.z_dim])
            parts.append(normalize_2nd_moment(z))
        if self.c_dim > 0:
            check_input_shape("c", c, [self.c_dim], fix="pass one-hot or float labels [B, c_dim]")
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        for layer in self.layers:
            x = layer(x)

        # Low-precision autocast computes the layers in bf16 or fp16, but ws stay in the parameters' dtype.
        x = x.to(self.layers[-1].weight.dtype)

        if update_w_avg:
            if self.w_avg is None:
                raise ValueError(
                    "update_w_avg=True needs a tracked w_avg; build the mapping network with w_avg_beta set"
                )
            with torch.no_grad():
                batch_mean = x.detach().mean(dim=0)
                self.w_avg.copy_(batch_mean.lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)

        if truncation_psi != 1:
            x = self.truncate(x, truncation_psi, truncation_cutoff)
        return x

    def truncate(self, ws: torch.Tensor, truncation_psi: float, truncation_cutoff: int | None = None) -> torch.Tensor:
        """Return w_avg + truncation_psi * (ws - w_avg) in the first truncation_cutoff layers, ws elsewhere."""
        if self.w_avg is None:
            raise ValueError("truncation needs a tracked w_avg; build the mapping network with w_avg_beta set")
        truncated = self.w_avg + truncation_psi * (ws - self.w_avg)
        if truncation_cutoff is None:
            return truncated

        if self.num_ws is None:
            raise ValueError("truncation_cutoff needs ws per layer; build the mapping network with num_ws set")
        if truncation_cutoff < 0:
            raise ValueError(f"truncation_cutoff must be None or a non-negative layer count, got {truncation_cutoff}")
        return torch.cat([truncated[:, :truncation_cutoff], ws[:, truncation_cutoff:]], dim=1)

    def extra_repr(self) -> str:
        return (
            f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, "
            f"num_ws={self.num_ws}, w_avg_beta={self.w_avg_beta}"
        )


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution with demodulation, noise input, bias and leaky ReLU.

    x <- lrelu(modconv(x, weight, affine(w)) + noise_strength * noise + bias) * sqrt(2), where the
    noise is one [H, W] map per sample shared by all channels. noise_strength is learned and starts at 0.
    With up=True the convolution also upsamples by 2.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up

        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        # Demodulation normalizes the weight, so it needs no equalized learning rate scale.
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        if up:
            self.register_buffer("resample_filter", make_depthwise_resample_filter(out_channels), persistent=False)
        else:
            self.resample_filter = None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, fused_modconv: bool) -> torch.Tensor:
        styles = self.affine(w)

        # The leaky ReLU is positively homogeneous, so its sqrt(2) gain folds into the demodulation
        # coefficients, the noise strength and the bias.
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=True,
            up=self.up,
            resample_filter=self.resample_filter,
            output_gain=LRELU_GAIN,
            fused=fused_modconv,
        )

        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * (self.noise_strength * LRELU_GAIN)
        elif noise_mode == "const":
            x = x + self.noise_const * (self.noise_strength * LRELU_GAIN)

        x = x + (self.bias * LRELU_GAIN)[None, :, None, None]
        return F.leaky_relu(x, LRELU_SLOPE)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, resolution={self.resolution}, up={self.up}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation, plus a bias.

    The styles carry the equalized learning rate scale 1 / sqrt(in_channels).
    """

    def __init__(self, in_channels: int, img_channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        y = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return y + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture synthesis network.

    The 4x4 block starts from a learned constant and has one convolution. The others have two, and the
    first of them upsamples the features. Each block adds its toRGB output to the upsampled image of
    the blocks before it.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.is_first = resolution == 4

        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
            self.register_buffer("resample_filter", make_depthwise_resample_filter(img_channels), persistent=False)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim)

        self.num_conv = 1 if self.is_first else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        block_ws: torch.Tensor,
        noise_mode: str,
        fused_modconv: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the features and image at this resolution, given block_ws [B, num_conv + 1, w_dim]."""
        if self.is_first:
            x = self.const[None].expand(block_ws.shape[0], -1, -1, -1)
            x = self.conv1(x, block_ws[:, 0], noise_mode, fused_modconv)
        else:
            x = self.conv0(x, block_ws[:, 0], noise_mode, fused_modconv)
            x = self.conv1(x, block_ws[:, 1], noise_mode, fused_modconv)

        # The image is kept in the parameters' dtype, so it stays float32 under low-precision autocast.
        rgb = self.torgb(x, block_ws[:, self.num_conv], fused_modconv).to(self.torgb.bias.dtype)
        if img is None:
            img = rgb
        else:
            img = upsample2d(img, self.resample_filter) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis network with skip connections to the image (the "skip" architecture).

    From a learned 4x4 constant, each block up to img_resolution doubles the resolution with two
    modulated 3x3 convolutions (weight demodulation, per-layer noise with a learned strength, leaky
    ReLU) and adds a modulated 1x1 toRGB output to the upsampled image. Layers take their styles
    from ws [B, num_ws, w_dim]: the 4x4 block uses ws[:, 0] (conv) and ws[:, 1] (toRGB), and every
    later block uses the toRGB index of the block before for its first convolution, so
    num_ws = 2 * log2(img_resolution) - 2.

    Channels at resolution r are min(channel_base // r, channel_max).

    Args:
        w_dim: intermediate latent size.
        img_resolution: output height and width, a power of two >= 4.
        img_channels: output channels.
        channel_base: channel budget. The defaults give 128, 64, 32, 16 channels at 4, 8, 16, 32.
        channel_max: cap on the channels at any resolution.

    Raises:
        ValueError: for a resolution that is not a power of two >= 4, a non-positive channel count,
            ws of the wrong shape or an unknown noise_mode.

    Example:
        >>> synthesis = SynthesisNetwork(w_dim=16, img_resolution=8, img_channels=1, channel_base=64, channel_max=16)
        >>> synthesis(torch.randn(2, synthesis.num_ws, 16)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 512,
        channel_max: int = 128,
    ) -> None:
        super().__init__()
        validate_image_shape(img_resolution, img_channels)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels

        resolutions = block_resolutions(img_resolution)
        channels = {resolution: channels_at(resolution, channel_base, channel_max) for resolution in resolutions}
        self.blocks = nn.ModuleList()
        for resolution in resolutions:
            in_channels = channels[resolution // 2] if resolution > 4 else 0
            self.blocks.append(SynthesisBlock(in_channels, channels[resolution], w_dim, resolution, img_channels))

        self.num_ws = sum(block.num_conv for block in self.blocks) + self.blocks[-1].num_torgb

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool | None = None) -> torch.Tensor:
        """Return images [B, img_channels, img_resolution, img_resolution] in the parameters' dtype.

        noise_mode is "random" (fresh noise per call), "const" (the fixed noise_const buffers) or
        "none". fused_modconv picks the grouped-convolution form of the modulated convolutions.
        None uses it on CUDA only, because it is about 5x slower on a CPU.
        """
        check_input_shape("ws", ws, [self.num_ws, self.w_dim])
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if fused_modconv is None:
            fused_modconv = ws.device.type == "cuda"

        x = img = None
        w_index = 0
        for block in self.blocks:
            block_ws = ws[:, w_index : w_index + block.num_conv + block.num_torgb]
            x, img = block(x, img, block_ws, noise_mode, fused_modconv)
            w_index += block.num_conv
        return img

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, "
            f"img_resolution={self.img_resolution}, img_channels={self.img_channels}"
        )


class Generator(nn.Module):
    """StyleGAN2 generator: a `MappingNetwork` (`.mapping`) followed by a `SynthesisNetwork` (`.synthesis`).

    The defaults suit 16x16 grayscale images on a CPU: 128 channels at 4x4 down to 32 at 16x16 and a
    2-layer mapping network. `init_kwargs` contains every constructor argument as a JSON-serialisable
    dict, so `Generator(**generator.init_kwargs)` rebuilds the architecture for a checkpoint.

    Args:
        z_dim: latent size.
        c_dim: label size; 0 for an unconditional generator.
        w_dim: intermediate latent size.
        img_resolution: output height and width, a power of two >= 4.
        img_channels: output channels.
        channel_base: channels at resolution r are min(channel_base // r, channel_max).
        channel_max: cap on the channels at any resolution.
        mapping_layers: depth of the mapping MLP.
        mapping_lr_multiplier: learning rate multiplier of the mapping MLP.
        w_avg_beta: decay of the tracked average w used by truncation.

    Example:
        >>> generator = Generator(z_dim=16, w_dim=16, img_resolution=8, channel_base=64, channel_max=16)
        >>> generator(torch.randn(2, 16)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        z_dim: int = 128,
        c_dim: int = 0,
        w_dim: int = 128,
        img_resolution: int = 16,
        img_channels: int = 1,
        channel_base: int = 512,
        channel_max: int = 128,
        mapping_layers: int = 2,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        validate_image_shape(img_resolution, img_channels)

        # Plain Python numbers keep init_kwargs JSON-serialisable when callers pass NumPy integers.
        z_dim, c_dim, w_dim = operator.index(z_dim), operator.index(c_dim), operator.index(w_dim)
        img_resolution, img_channels = operator.index(img_resolution), operator.index(img_channels)
        channel_base, channel_max = operator.index(channel_base), operator.index(channel_max)
        mapping_layers = operator.index(mapping_layers)
        mapping_lr_multiplier, w_avg_beta = float(mapping_lr_multiplier), float(w_avg_beta)

        self.init_kwargs: dict[str, Any] = {
            "z_dim": z_dim,
            "c_dim": c_dim,
            "w_dim": w_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "channel_base": channel_base,
            "channel_max": channel_max,
            "mapping_layers": mapping_layers,
            "mapping_lr_multiplier": mapping_lr_multiplier,
            "w_avg_beta": w_avg_beta,
        }
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels

        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim,
            c_dim,
            w_dim,
            self.num_ws,
            num_layers=mapping_layers,
            lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta,
        )

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_w_avg: bool = False,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        """Return images [B, img_channels, img_resolution, img_resolution] for latents z [B, z_dim].

        c [B, c_dim] is required when c_dim > 0 and ignored otherwise. See `MappingNetwork` for
        truncation and update_w_avg, and `SynthesisNetwork` for noise_mode and fused_modconv.
        """
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_w_avg=update_w_avg
        )
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


class DiscriminatorBlock(nn.Module):
    """Residual discriminator block: two 3x3 convolutions (the second downsamples by 2) beside a
    downsampling 1x1 skip convolution. Both branches are scaled by sqrt(0.5), so the sum of two
    uncorrelated unit-variance branches has unit variance."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        branch_gain = math.sqrt(0.5)
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", down=2, gain=branch_gain)
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, down=2, gain=branch_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x)
        x = self.conv0(x)
        x = self.conv1(x)
        return skip + x


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with a minibatch standard deviation layer and projection conditioning.

    A 1x1 fromRGB convolution lifts the image to features, residual blocks halve the resolution down
    to 4x4, and the epilogue appends the minibatch standard deviation, applies a 3x3 convolution and
    two fully connected layers. Unconditional models output one logit. With c_dim > 0 the last layer
    outputs cmap_dim features and the logit is their dot product with a label embedding cmap (from a
    label-only `MappingNetwork`), divided by sqrt(cmap_dim).

    Args:
        c_dim: label size; 0 for an unconditional discriminator.
        img_resolution: input height and width, a power of two >= 4.
        img_channels: input channels.
        channel_base: channels at resolution r are min(channel_base // r, channel_max).
        channel_max: cap on the channels at any resolution.
        mbstd_group_size: samples per minibatch standard deviation group. Batches that are not a
            multiple of it get groups whose sizes differ by at most one.
        mbstd_num_channels: feature maps the minibatch standard deviation layer appends.
        cmap_dim: size of the projection embedding; None uses the channels at 4x4.
        mapping_layers: depth of the label embedding MLP.

    Example:
        >>> discriminator = Discriminator(img_resolution=8, channel_base=64, channel_max=16)
        >>> discriminator(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        c_dim: int = 0,
        img_resolution: int = 16,
        img_channels: int = 1,
        channel_base: int = 512,
        channel_max: int = 128,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        cmap_dim: int | None = None,
        mapping_layers: int = 2,
    ) -> None:
        super().__init__()
        validate_image_shape(img_resolution, img_channels)

        # Plain Python numbers keep init_kwargs JSON-serialisable when callers pass NumPy integers.
        c_dim = operator.index(c_dim)
        img_resolution, img_channels = operator.index(img_resolution), operator.index(img_channels)
        channel_base, channel_max = operator.index(channel_base), operator.index(channel_max)
        mbstd_group_size, mbstd_num_channels = operator.index(mbstd_group_size), operator.index(mbstd_num_channels)
        cmap_dim = operator.index(cmap_dim) if cmap_dim is not None else None
        mapping_layers = operator.index(mapping_layers)

        if c_dim < 0:
            raise ValueError(f"c_dim must be >= 0, got {c_dim}")
        if mbstd_group_size < 1:
            raise ValueError(f"mbstd_group_size must be a positive integer, got {mbstd_group_size}")
        self.init_kwargs: dict[str, Any] = {
            "c_dim": c_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "channel_base": channel_base,
            "channel_max": channel_max,
            "mbstd_group_size": mbstd_group_size,
            "mbstd_num_channels": mbstd_num_channels,
            "cmap_dim": cmap_dim,
            "mapping_layers": mapping_layers,
        }
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_channels = mbstd_num_channels

        resolutions = block_resolutions(img_resolution)
        channels = {resolution: channels_at(resolution, channel_base, channel_max) for resolution in resolutions}
        if channels[4] % mbstd_num_channels != 0:
            raise ValueError(
                f"mbstd_num_channels must divide the {channels[4]} channels at 4x4, got {mbstd_num_channels}"
            )

        self.from_rgb = EqualizedConv2d(img_channels, channels[img_resolution], 1, activation="lrelu")
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(channels[resolution], channels[resolution // 2])
            for resolution in reversed(resolutions[1:])
        )

        last_channels = channels[4]
        if c_dim == 0:
            self.cmap_dim = 0
            self.mapping = None
        else:
            self.cmap_dim = cmap_dim if cmap_dim is not None else last_channels
            self.mapping = MappingNetwork(
                0, c_dim, self.cmap_dim, num_ws=None, num_layers=mapping_layers, w_avg_beta=None
            )
        self.conv = EqualizedConv2d(last_channels + mbstd_num_channels, last_channels, 3, activation="lrelu")
        self.fc = EqualizedLinear(last_channels * 4 * 4, last_channels, activation="lrelu")
        self.out = EqualizedLinear(last_channels, self.cmap_dim if c_dim > 0 else 1)

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits [B, 1] in the parameters' dtype for images [B, img_channels, img_resolution, img_resolution].

        c [B, c_dim] is required when c_dim > 0 and ignored otherwise.
        """
        resolution = self.img_resolution
        check_input_shape("images", images, [self.img_channels, resolution, resolution])

        x = self.from_rgb(images)
        for block in self.blocks:
            x = block(x)

        x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)

        if self.c_dim > 0:
            cmap = self.mapping(None, c)
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)

        # Low-precision autocast computes the layers in bf16 or fp16, but the logits stay in the parameters' dtype.
        return x.to(self.out.weight.dtype)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
