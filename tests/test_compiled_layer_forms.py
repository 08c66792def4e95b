"""Tests of the shifted-sum forms of the reference networks' filters and toRGB convolutions.

Under `torch.compile` and inside `shifted_sum_forms` the blur, the upsampling and the 1x1
modulated convolution run as shifted sums and products instead of convolution calls. They must
compute the same values and the same first and second derivatives as the convolutions, and both
compiled code and the block must actually take them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathlength.models import Generator, shifted_sum_forms
from pathlength.models.layers import (
    _blur2d_shifted,
    _conv1x1_summed,
    _upsample2d_shifted,
    blur2d,
    make_depthwise_resample_filter,
    upsample2d,
)


def first_and_second_derivatives(function, x: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return f(x), the gradient of <f(x)^2, probe> and the gradient of that gradient's squared norm."""
    x = x.detach().requires_grad_(True)
    y = function(x)
    (grad,) = torch.autograd.grad((y.square() * probe).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), x)
    return y.detach(), grad.detach(), second


@pytest.mark.parametrize("padding, gain", [(1, 4.0), (2, 1.0), (0, 1.0)])
@pytest.mark.parametrize("size", [(5, 5), (8, 11)])
def test_shifted_blur_equals_depthwise_conv(padding, gain, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    weight = make_depthwise_resample_filter(3).double()
    out_size = (size[0] + 2 * padding - 3, size[1] + 2 * padding - 3)
    probe = torch.randn(2, 3, *out_size, dtype=torch.float64)

    expected = first_and_second_derivatives(lambda t: F.conv2d(t, weight * gain, padding=padding, groups=3), x, probe)
    shifted = first_and_second_derivatives(lambda t: _blur2d_shifted(t, padding, gain), x, probe)

    for got, want in zip(shifted, expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (5, 7)])
def test_shifted_upsample_equals_transposed_conv(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    weight = make_depthwise_resample_filter(3).double()
    probe = torch.randn(2, 3, 2 * size[0], 2 * size[1], dtype=torch.float64)

    expected = first_and_second_derivatives(lambda t: upsample2d(t, weight), x, probe)
    shifted = first_and_second_derivatives(_upsample2d_shifted, x, probe)

    assert shifted[0].shape == (2, 3, 2 * size[0], 2 * size[1])
    for got, want in zip(shifted, expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("out_channels", [1, 3])
def test_summed_1x1_equals_conv2d(out_channels):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    weight = torch.randn(out_channels, 5, 1, 1, dtype=torch.float64)
    probe = torch.randn(2, out_channels, 4, 6, dtype=torch.float64)

    expected = first_and_second_derivatives(lambda t: F.conv2d(t, weight), x, probe)
    summed = first_and_second_derivatives(lambda t: _conv1x1_summed(t, weight), x, probe)

    for got, want in zip(summed, expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_eager_blur_applies_gain():
    x = torch.ones(1, 2, 6, 6)
    weight = make_depthwise_resample_filter(2)

    blurred = blur2d(x, weight, padding=0, gain=4.0)

    # Without padding each output sums four taps per axis with weights that add up to 1, so ones give the gain.
    torch.testing.assert_close(blurred, torch.full((1, 2, 3, 3), 4.0))


def test_compiled_synthesis_uses_shifted_forms():
    torch.manual_seed(0)
    generator = Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, channel_base=32, channel_max=8)
    ws = generator.mapping(torch.randn(2, 8)).detach()
    convolutions: list[tuple[tuple[int, ...], int]] = []

    def recording_backend(graph_module: torch.fx.GraphModule, example_inputs):
        # Record (weight shape, groups) of every convolution in the traced graph.
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and node.target is F.conv2d:
                weight = node.args[1].meta["example_value"]
                convolutions.append((tuple(weight.shape), node.kwargs.get("groups", 1)))
        return graph_module.forward

    compiled = torch.compile(generator.synthesis, backend=recording_backend, fullgraph=True)
    with torch.no_grad():
        expected = generator.synthesis(ws, noise_mode="const")
        images = compiled(ws, noise_mode="const")

    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)
    # The 3x3 convolutions remain, and no blur (grouped) or toRGB (1x1) convolution does.
    assert convolutions
    assert all(groups == 1 and shape[-1] == 3 for shape, groups in convolutions)


class ConvolutionRecorder(torch.overrides.TorchFunctionMode):
    """Record (weight shape, groups) of every conv2d and conv_transpose2d call made inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, F.conv_transpose2d):
            self.calls.append((tuple(args[1].shape), kwargs.get("groups", 1)))
        return func(*args, **kwargs)


def synthesis_convolutions(generator: Generator, ws: torch.Tensor) -> tuple[torch.Tensor, list[tuple[tuple[int, ...], int]]]:
    recorder = ConvolutionRecorder()
    with recorder:
        images = generator.synthesis(ws, noise_mode="const")
    return images, recorder.calls


def test_shifted_sum_forms_replace_filter_convolutions():
    torch.manual_seed(0)
    generator = Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, channel_base=32, channel_max=8)
    ws = generator.mapping(torch.randn(2, 8)).detach()

    expected, default_calls = synthesis_convolutions(generator, ws)
    with shifted_sum_forms():
        images, shifted_calls = synthesis_convolutions(generator, ws)

    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)
    # Outside the block the grouped blurs and the 1x1 toRGB convolutions are convolution calls.
    assert any(groups > 1 for _, groups in default_calls)
    assert any(shape[-1] == 1 for shape, _ in default_calls)
    assert all(groups == 1 and shape[-1] == 3 for shape, groups in shifted_calls)


def test_shifted_sum_forms_restores_the_setting():
    torch.manual_seed(0)
    generator = Generator(z_dim=8, w_dim=8, img_resolution=8, channel_base=32, channel_max=8)
    ws = generator.mapping(torch.randn(2, 8)).detach()

    with pytest.raises(RuntimeError, match="inside the block"):
        with shifted_sum_forms():
            raise RuntimeError("failure inside the block")
    _, after_error = synthesis_convolutions(generator, ws)

    with shifted_sum_forms():
        with shifted_sum_forms(enabled=False):
            _, nested_off = synthesis_convolutions(generator, ws)
        _, nested_restored = synthesis_convolutions(generator, ws)

    assert any(groups > 1 for _, groups in after_error)
    assert any(groups > 1 for _, groups in nested_off)
    assert all(groups == 1 for _, groups in nested_restored)
