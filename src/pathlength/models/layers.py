"""Building blocks of the reference StyleGAN2 networks: equalized learning rate layers, the fixed
[1, 3, 3, 1] resampling filter, modulated convolution with weight demodulation and the minibatch
standard deviation layer. Every op is a plain differentiable torch op, so all of them support the
double backward that path length regularization and the R1 penalty need."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Leaky ReLU slope, and the gain that keeps the second moment of standard normal inputs near 1 (1.04 at slope 0.2).
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)

# Epsilon inside the demodulation and normalization square roots. It only matters for near-zero inputs.
NORMALIZE_EPS = 1e-8

ACTIVATIONS = ("linear", "lrelu")


def make_resample_filter() -> torch.Tensor:
    """Return the separable 4x4 low-pass filter [1, 3, 3, 1] x [1, 3, 3, 1] / 64 as float32.

    Its taps sum to 1, so blurring keeps the mean. Upsampling by 2 with zero insertion and this filter
    times 4 equals bilinear interpolation away from the borders.

    Example:
        >>> make_resample_filter().sum().item()
        1.0
    """
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


def make_depthwise_resample_filter(channels: int) -> torch.Tensor:
    """Return the [1, 3, 3, 1] filter as the [channels, 1, 4, 4] weight of a depthwise convolution."""
    return make_resample_filter()[None, None].repeat(channels, 1, 1, 1)


def blur2d(x: torch.Tensor, weight: torch.Tensor, padding: int, gain: float = 1.0) -> torch.Tensor:
    """Filter each channel of x [B, C, H, W] with the [1, 3, 3, 1] filter times gain, zero padded.

    weight is the depthwise form [C, 1, 4, 4] of the filter (`make_depthwise_resample_filter`).
    It runs as a grouped convolution, or as a sum of shifted copies of x under `torch.compile` and
    inside `shifted_sum_forms`.
    """
    if _use_shifted_sums():
        return _blur2d_shifted(x, padding, gain)
    if gain != 1.0:
        weight = weight * gain
    return F.conv2d(x, weight, padding=padding, groups=x.shape[1])


def upsample2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Upsample x [B, C, H, W] to [B, C, 2H, 2W] by zero insertion and the depthwise filter weight.

    The transposed convolution with stride 2 inserts the zeros. The factor 4 restores the mean,
    because three of every four samples after insertion are zero. Under `torch.compile` and inside
    `shifted_sum_forms` the same result comes from shifted sums.
    """
    if _use_shifted_sums():
        return _upsample2d_shifted(x)
    return F.conv_transpose2d(x, weight * 4, stride=2, padding=1, groups=x.shape[1])


# Whether `shifted_sum_forms` is active. One flag for the process: the trainer runs its phases on one thread.
_shifted_sums_requested = False


@contextlib.contextmanager
def shifted_sum_forms(enabled: bool = True) -> Iterator[None]:
    """Run the fixed filters and the 1x1 modulated convolutions as shifted sums inside the block.

    The reference networks' [1, 3, 3, 1] blur and upsampling and their toRGB 1x1 modulated
    convolutions then compute the same values (to float rounding) with padding, slicing, products
    and sums instead of convolution calls. On a CPU a depthwise or 1x1 convolution with few
    channels runs far below the FLOP rate of the other convolutions, and a double backward
    (path length regularization, R1) runs each of them several times. At 32x32 on a 2-core CPU the
    shifted sums made an eager path length step 12% to 16% faster and an ordinary forward and
    backward 1% to 5% slower (docs/benchmarks.md). The trainer therefore uses them in its path
    length phase only. Code that `torch.compile` traces always uses them, because inductor
    fuses them with the elementwise operations around them.

    Only the forward needs to run inside the block: the backward follows the operations recorded then.

    NOTE: in float16 and bfloat16 (autocast) a shifted sum rounds after each addition, where a
    convolution accumulates in float32 and rounds once, so its result is a little less precise.

    Example:
        >>> from pathlength.models import Generator
        >>> generator = Generator(img_resolution=8, channel_base=64, channel_max=16, z_dim=16, w_dim=16)
        >>> ws = generator.mapping(torch.randn(2, 16))
        >>> with shifted_sum_forms():
        ...     images = generator.synthesis(ws, noise_mode="const")
        >>> bool(torch.allclose(images, generator.synthesis(ws, noise_mode="const"), atol=1e-5))
        True
    """
    global _shifted_sums_requested
    previous = _shifted_sums_requested
    _shifted_sums_requested = enabled
    try:
        yield
    finally:
        _shifted_sums_requested = previous


def _use_shifted_sums() -> bool:
    return _shifted_sums_requested or _is_compiling()


def _is_compiling() -> bool:
    # Older PyTorch versions lack torch.compiler.is_compiling but have the dynamo function.
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return is_compiling()


def _blur2d_shifted(x: torch.Tensor, padding: int, gain: float) -> torch.Tensor:
    x = F.pad(x, [padding, padding, padding, padding])
    x = _blur_axis_shifted(x, dim=-1, scale=0.125)
    return _blur_axis_shifted(x, dim=-2, scale=0.125 * gain)


def _blur_axis_shifted(x: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    # [1, 3, 3, 1] along one axis, times scale, without padding. Scaling each axis by 1 / 8 keeps
    # intermediate values at the input's magnitude, which matters in float16.
    size = x.shape[dim] - 3
    outer = x.narrow(dim, 0, size) + x.narrow(dim, 3, size)
    inner = x.narrow(dim, 1, size) + x.narrow(dim, 2, size)
    return torch.add(outer, inner, alpha=3) * scale


def _upsample_axis_shifted(x: torch.Tensor, dim: int) -> torch.Tensor:
    # Along one axis, zero insertion and [1, 3, 3, 1] / 4 give output 2i = (x[i - 1] + 3 x[i]) / 4
    # and output 2i + 1 = (3 x[i] + x[i + 1]) / 4, with zeros beyond the borders.
    size = x.shape[dim]
    padded = F.pad(x, [1, 1] if dim == -1 else [0, 0, 1, 1])
    previous = padded.narrow(dim, 0, size)
    following = padded.narrow(dim, 2, size)
    tripled = 3 * x
    even = (previous + tripled) * 0.25
    odd = (tripled + following) * 0.25
    # Stacking inserts a new axis of size 2 after the axis, which flattening interleaves.
    return torch.stack([even, odd], dim=dim).flatten(dim - 1, dim)


def _upsample2d_shifted(x: torch.Tensor) -> torch.Tensor:
    return _upsample_axis_shifted(_upsample_axis_shifted(x, dim=-1), dim=-2)


def _conv1x1_summed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # A 1x1 convolution as a broadcast product summed over input channels, which inductor fuses with
    # its neighbours instead of calling oneDNN (toRGB layers have 1 to 3 output channels). Eager code
    # allocates the [B, O, I, H, W] product, O times the size of x, so there it takes einsum for O > 1.
    if _is_compiling() or weight.shape[0] == 1:
        return (x[:, None] * weight[None]).sum(dim=2)
    return torch.einsum("bihw,oi->bohw", x, weight[:, :, 0, 0])


def validate_activation(activation: str) -> None:
    """Raise ValueError unless activation is "linear" or "lrelu"."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


class EqualizedLinear(nn.Module):
    """Fully connected layer with an equalized learning rate.

    The stored weight is drawn from N(0, 1) / lr_multiplier and scaled at run time, so the layer computes

        y = act(x @ (weight * lr_multiplier / sqrt(in_features)).T + bias * lr_multiplier)

    With Adam, the effective learning rate of every weight is then the same, times lr_multiplier.
    act is the identity for "linear" and leaky ReLU (slope 0.2) times sqrt(2) for "lrelu".

    Args:
        in_features: size of the last input dimension.
        out_features: size of the last output dimension.
        bias: whether to add a learned bias.
        bias_init: initial value of the effective bias.
        lr_multiplier: learning rate multiplier (0.01 in the StyleGAN2 mapping network).
        activation: "linear" or "lrelu".

    Example:
        >>> layer = EqualizedLinear(8, 4, activation="lrelu")
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        validate_activation(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation

        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier)) if bias else None

        # The leaky ReLU is positively homogeneous, so its sqrt(2) gain folds into the weight and bias scales.
        output_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight_gain = lr_multiplier / math.sqrt(in_features) * output_gain
        self.bias_gain = lr_multiplier * output_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_gain if self.bias is not None else None
        y = F.linear(x, self.weight * self.weight_gain, bias)

        if self.activation == "lrelu":
            y = F.leaky_relu(y, LRELU_SLOPE)
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class EqualizedConv2d(nn.Module):
    """2D convolution with an equalized learning rate, optional downsampling by 2 and an output gain.

    The stored weight [out_channels, in_channels, k, k] is drawn from N(0, 1) and scaled at run time
    by 1 / sqrt(in_channels * k * k). With down=2 the input is first blurred with the [1, 3, 3, 1]
    filter and the convolution takes stride 2, which halves H and W (they must be even). The output is

        y = act(conv(x, weight / sqrt(fan_in)) + bias) * gain

    where act is the identity for "linear" and leaky ReLU (slope 0.2) times sqrt(2) for "lrelu".

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size. Zero padding keeps H and W unless down=2.
        bias: whether to add a learned bias (initialized to 0).
        activation: "linear" or "lrelu".
        down: 1 or 2.
        gain: constant output gain, for example sqrt(0.5) on both branches of a residual block.

    Example:
        >>> conv = EqualizedConv2d(3, 8, kernel_size=3, activation="lrelu", down=2)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        validate_activation(activation)
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so that padding keeps the image centered, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.down = down

        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

        # The leaky ReLU is positively homogeneous, so its sqrt(2) gain and the output gain fold
        # into the weight and bias scales.
        output_gain = gain * (LRELU_GAIN if activation == "lrelu" else 1.0)
        self.weight_gain = output_gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.bias_gain = output_gain

        if down == 2:
            self.register_buffer("resample_filter", make_depthwise_resample_filter(in_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        bias = self.bias * self.bias_gain if self.bias is not None else None

        if self.down == 2:
            # Blur with padding (k + 1) // 2 so that the stride-2 convolution without padding returns H / 2.
            x = blur2d(x, self.resample_filter, padding=(self.kernel_size + 1) // 2)
            y = F.conv2d(x, weight, bias, stride=2)
        else:
            y = F.conv2d(x, weight, bias, padding=self.kernel_size // 2)

        if self.activation == "lrelu":
            y = F.leaky_relu(y, LRELU_SLOPE)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"activation={self.activation}, down={self.down}"
        )


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Return d [B, out_channels] with d[b, o] = 1 / sqrt(sum over i, kh, kw of (weight[o, i] * styles[b, i])^2 + 1e-8).

    The sum factors as styles^2 @ (sum over the kernel of weight^2).T, which avoids building the
    per-sample weights [B, out_channels, in_channels, k, k].
    """
    weight_energy = weight.square().sum(dim=[2, 3])
    return torch.rsqrt(styles.square() @ weight_energy.T + NORMALIZE_EPS)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: bool = False,
    resample_filter: torch.Tensor | None = None,
    output_gain: float = 1.0,
    fused: bool = False,
) -> torch.Tensor:
    """Convolve x with weights modulated per sample by styles and, optionally, demodulated.

    For sample b the effective weight is w'[o, i] = weight[o, i] * styles[b, i], and with
    demodulation w''[o, i] = w'[o, i] * d[b, o] (see `demodulation_coefficients`), which gives the
    output unit variance for unit-variance input. The result is multiplied by output_gain.

    Two forms compute the same result. fused=False scales the input channels by the styles, runs one
    convolution with the shared weight and scales the output channels by d. fused=True builds the
    per-sample weights and runs one grouped convolution with B groups: about 5x slower on a CPU, but
    fewer kernel launches on a GPU.

    Args:
        x: input [B, in_channels, H, W].
        weight: shared weight [out_channels, in_channels, k, k] with odd k.
        styles: per-sample input channel scales [B, in_channels].
        demodulate: whether to normalize each output channel by d.
        up: upsample by 2 with a stride-2 transposed convolution followed by a blur, giving [B, O, 2H, 2W].
        resample_filter: depthwise [1, 3, 3, 1] filter [out_channels, 1, 4, 4], required when up is True.
        output_gain: constant factor on the output.
        fused: which of the two forms to run.

    Returns:
        [B, out_channels, H, W], or [B, out_channels, 2H, 2W] with up=True, in the dtype of x.

    Example:
        >>> x, weight, styles = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(2, 4)
        >>> modulated_conv2d(x, weight, styles).shape
        torch.Size([2, 6, 8, 8])
    """
    batch_size, in_channels, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    if up and resample_filter is None:
        raise ValueError("modulated_conv2d with up=True needs resample_filter, got None")

    if demodulate:
        output_scales = demodulation_coefficients(weight, styles) * output_gain
    else:
        output_scales = None

    if fused:
        per_sample_weight = weight[None] * styles[:, None, :, None, None]
        if output_scales is not None:
            per_sample_weight = per_sample_weight * output_scales[:, :, None, None, None]
        elif output_gain != 1.0:
            per_sample_weight = per_sample_weight * output_gain

        grouped_input = x.reshape(1, batch_size * in_channels, height, width)
        if up:
            # conv_transpose2d weights are [in, out / groups, k, k].
            transposed_weight = per_sample_weight.transpose(1, 2).reshape(
                batch_size * in_channels, out_channels, kernel_size, kernel_size
            )
            y = F.conv_transpose2d(grouped_input, transposed_weight, stride=2, groups=batch_size)
        else:
            grouped_weight = per_sample_weight.reshape(batch_size * out_channels, in_channels, kernel_size, kernel_size)
            y = F.conv2d(grouped_input, grouped_weight, padding=kernel_size // 2, groups=batch_size)
        y = y.reshape(batch_size, out_channels, y.shape[2], y.shape[3])

    else:
        x = x * styles[:, :, None, None]
        if up:
            y = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        elif kernel_size == 1 and _use_shifted_sums():
            y = _conv1x1_summed(x, weight)
        else:
            y = F.conv2d(x, weight, padding=kernel_size // 2)

        if output_scales is not None:
            y = y * output_scales[:, :, None, None]
        elif output_gain != 1.0:
            y = y * output_gain

    if up:
        # The stride-2 transposed convolution returns 2H + k - 2, so a blur padded by (k - 1) // 2 returns 2H.
        y = blur2d(y, resample_filter, padding=(kernel_size - 1) // 2, gain=4.0)
    return y


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append the minibatch standard deviation feature maps to x [B, C, H, W], giving [B, C + num_channels, H, W].

    Sample b belongs to group b mod G, where G = ceil(B / min(group_size, B)) is the number of groups.
    When B is a multiple of the group size, every group contains exactly group_size samples. Otherwise
    group sizes differ by at most one, so no sample is dropped. Within each group, the channels are split
    into num_channels slices, and feature f is the mean over its slice and all pixels of
    sqrt(var over the group + 1e-8), with the population variance. Every sample of the group gets the
    group's value as a constant map.

    Raises:
        ValueError: if group_size or num_channels is not a positive integer, or C is not a multiple of num_channels.

    Example:
        >>> minibatch_stddev(torch.randn(5, 8, 4, 4), group_size=4).shape
        torch.Size([5, 9, 4, 4])
    """
    if group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}")
    if num_channels < 1:
        raise ValueError(f"num_channels must be a positive integer, got {num_channels}")
    batch_size, channels, height, width = x.shape
    if channels % num_channels != 0:
        raise ValueError(f"the {channels} channels must be a multiple of num_channels, got num_channels={num_channels}")

    num_groups = math.ceil(batch_size / min(group_size, batch_size))
    group_index = torch.arange(batch_size, device=x.device) % num_groups
    membership = F.one_hot(group_index, num_groups).to(x.dtype)
    group_counts = membership.sum(dim=0)[:, None]

    # Group statistics as matrix products with the [B, groups] membership matrix, which handles
    # unequal group sizes and stays differentiable twice.
    features = x.reshape(batch_size, -1)
    group_mean = membership.T @ features / group_counts
    deviation = features - membership @ group_mean
    group_var = membership.T @ deviation.square() / group_counts
    group_std = torch.sqrt(group_var + NORMALIZE_EPS)

    group_feature = group_std.reshape(num_groups, num_channels, -1).mean(dim=2)
    sample_feature = membership @ group_feature
    feature_maps = sample_feature[:, :, None, None].expand(batch_size, num_channels, height, width)
    return torch.cat([x, feature_maps], dim=1)
