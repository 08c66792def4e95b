"""Tests of the reference StyleGAN2 networks in pathlength.models, on tiny models."""

from __future__ import annotations

import json
import math

import numpy
import pytest
import torch
import torch.nn.functional as F

from pathlength.models import Discriminator, Generator, MappingNetwork, SynthesisNetwork
from pathlength.models.layers import (
    EqualizedLinear,
    make_depthwise_resample_filter,
    minibatch_stddev,
    modulated_conv2d,
    upsample2d,
)

# Tiny sizes that keep every test at a fraction of a second: channels 8 at 4x4 down to 2 at 16x16.
TINY = {"channel_base": 32, "channel_max": 8}


def tiny_generator(img_resolution: int = 8, img_channels: int = 1, c_dim: int = 0, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=img_resolution, img_channels=img_channels, **TINY)


def tiny_discriminator(img_resolution: int = 8, img_channels: int = 1, c_dim: int = 0, seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, **TINY)


def set_noise_strengths(module: torch.nn.Module, value: float) -> None:
    """Give every synthesis layer a non-zero noise strength, since they start at 0 and hide the noise."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("noise_strength"):
                parameter.fill_(value)


@pytest.mark.parametrize("img_resolution", [4, 8, 16, 32])
@pytest.mark.parametrize("img_channels", [1, 3])
def test_generator_output_shape_and_dtype(img_resolution, img_channels):
    generator = tiny_generator(img_resolution, img_channels)

    images = generator(torch.randn(3, 8))

    assert images.shape == (3, img_channels, img_resolution, img_resolution)
    assert images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert generator.num_ws == 2 * int(math.log2(img_resolution)) - 2
    assert generator.synthesis.num_ws == generator.num_ws


@pytest.mark.parametrize("img_resolution", [4, 8, 16, 32])
@pytest.mark.parametrize("img_channels", [1, 3])
def test_discriminator_output_shape_and_dtype(img_resolution, img_channels):
    discriminator = tiny_discriminator(img_resolution, img_channels)

    logits = discriminator(torch.randn(4, img_channels, img_resolution, img_resolution))

    assert logits.shape == (4, 1)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_default_generator_is_small_digits_model():
    generator = Generator()

    conv_channels = [block.conv1.out_channels for block in generator.synthesis.blocks]

    assert generator.img_resolution == 16
    assert generator.img_channels == 1
    assert generator.z_dim == 128
    assert generator.w_dim == 128
    assert conv_channels == [128, 64, 32]
    assert len(generator.mapping.layers) == 2


def test_default_images_roughly_unit_range():
    torch.manual_seed(0)
    generator = Generator()

    with torch.no_grad():
        images = generator(torch.randn(64, 128))

    # At initialization the three toRGB outputs add up to about unit standard deviation (0.8 to 1.4 over seeds 0-5),
    # and samples differ from each other by about as much.
    assert 0.5 < images.std().item() < 2.0
    assert images.mean().abs().item() < 1.0
    assert images.std(dim=0).mean().item() > 0.3


def test_channels_follow_channel_base_and_max():
    synthesis = SynthesisNetwork(w_dim=4, img_resolution=32, img_channels=1, channel_base=64, channel_max=8)
    discriminator = Discriminator(img_resolution=32, channel_base=64, channel_max=8)

    synthesis_channels = [block.conv1.out_channels for block in synthesis.blocks]
    discriminator_channels = [block.conv0.in_channels for block in discriminator.blocks]

    assert synthesis_channels == [8, 8, 4, 2]
    assert discriminator_channels == [2, 4, 8]
    assert discriminator.conv.out_channels == 8


@pytest.mark.parametrize("img_resolution", [0, 2, 3, 6, 12, 17, 4.0, -8])
def test_bad_resolution_raises_value_error(img_resolution):
    with pytest.raises(ValueError, match="img_resolution must be a power of two"):
        Generator(img_resolution=img_resolution, **TINY)
    with pytest.raises(ValueError, match="img_resolution must be a power of two"):
        Discriminator(img_resolution=img_resolution, **TINY)


def test_bad_channels_raise_value_error():
    with pytest.raises(ValueError, match="img_channels must be a positive integer"):
        Generator(img_channels=0, **TINY)
    with pytest.raises(ValueError, match="img_channels must be a positive integer"):
        Discriminator(img_channels=0, **TINY)
    with pytest.raises(ValueError, match="leaves no channels at resolution 32"):
        Generator(img_resolution=32, channel_base=16, channel_max=8)


def test_wrong_input_shapes_raise_value_error():
    generator = tiny_generator()
    discriminator = tiny_discriminator()

    with pytest.raises(ValueError, match=r"z must have shape \[B, 8\]"):
        generator(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"ws must have shape \[B, 4, 8\]"):
        generator.synthesis(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"images must have shape \[B, 1, 8, 8\]"):
        discriminator(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        generator(torch.randn(2, 8), noise_mode="fixed")


def test_w_avg_is_buffer_in_state_dict():
    generator = tiny_generator()

    parameter_names = {name for name, _ in generator.named_parameters()}
    state = generator.state_dict()

    assert "mapping.w_avg" in state
    assert "mapping.w_avg" not in parameter_names
    assert state["mapping.w_avg"].shape == (8,)
    assert state["mapping.w_avg"].dtype == torch.float32


def test_update_w_avg_tracks_moving_average():
    generator = tiny_generator()
    z = torch.randn(16, 8)
    beta = generator.mapping.w_avg_beta

    ws = generator.mapping(z)
    generator.mapping(z, update_w_avg=True)
    expected = (1 - beta) * ws[:, 0].mean(dim=0)

    torch.testing.assert_close(generator.mapping.w_avg, expected, atol=1e-7, rtol=1e-6)
    updated = generator.mapping.w_avg.clone()
    generator.mapping(z)
    assert torch.equal(generator.mapping.w_avg, updated)


def test_mapping_broadcasts_one_w_to_all_layers():
    generator = tiny_generator()

    ws = generator.mapping(torch.randn(5, 8))

    assert ws.shape == (5, generator.num_ws, 8)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))


def test_truncation_psi_zero_gives_w_avg():
    generator = tiny_generator()
    with torch.no_grad():
        generator.mapping.w_avg.copy_(torch.randn(8))

    ws = generator.mapping(torch.randn(4, 8), truncation_psi=0.0)

    torch.testing.assert_close(ws, generator.mapping.w_avg.expand_as(ws), atol=0, rtol=0)


def test_truncation_psi_interpolates_towards_w_avg():
    generator = tiny_generator()
    with torch.no_grad():
        generator.mapping.w_avg.copy_(torch.randn(8))
    z = torch.randn(4, 8)

    ws = generator.mapping(z)
    truncated = generator.mapping(z, truncation_psi=0.7)
    expected = generator.mapping.w_avg + 0.7 * (ws - generator.mapping.w_avg)

    torch.testing.assert_close(truncated, expected, atol=1e-6, rtol=1e-6)


def test_truncation_cutoff_limits_truncated_layers():
    generator = tiny_generator(img_resolution=16)
    with torch.no_grad():
        generator.mapping.w_avg.copy_(torch.randn(8))
    z = torch.randn(3, 8)

    ws = generator.mapping(z)
    truncated = generator.mapping(z, truncation_psi=0.0, truncation_cutoff=2)

    assert torch.equal(truncated[:, :2], generator.mapping.w_avg.expand(3, 2, 8))
    assert torch.equal(truncated[:, 2:], ws[:, 2:])


def test_generator_truncation_psi_zero_gives_one_image():
    generator = tiny_generator()
    with torch.no_grad():
        generator.mapping.w_avg.copy_(torch.randn(8))

    images = generator(torch.randn(3, 8), truncation_psi=0.0, noise_mode="const")

    torch.testing.assert_close(images[1:], images[:1].expand(2, -1, -1, -1), atol=0, rtol=0)


def test_const_noise_is_deterministic():
    generator = tiny_generator()
    set_noise_strengths(generator, 0.5)
    z = torch.randn(2, 8)

    first = generator(z, noise_mode="const")
    second = generator(z, noise_mode="const")

    assert torch.equal(first, second)


def test_random_noise_changes_images():
    generator = tiny_generator()
    set_noise_strengths(generator, 0.5)
    z = torch.randn(2, 8)

    first = generator(z, noise_mode="random")
    second = generator(z, noise_mode="random")

    # Noise of strength 0.5 in every layer moves the images far beyond float32 rounding.
    assert (first - second).abs().max().item() > 1e-3


def test_noise_none_differs_from_random_and_const():
    generator = tiny_generator()
    set_noise_strengths(generator, 0.5)
    z = torch.randn(2, 8)

    without_noise = generator(z, noise_mode="none")

    assert torch.equal(without_noise, generator(z, noise_mode="none"))
    assert (without_noise - generator(z, noise_mode="random")).abs().max().item() > 1e-3
    assert (without_noise - generator(z, noise_mode="const")).abs().max().item() > 1e-3


def test_zero_noise_strength_makes_noise_modes_equal():
    generator = tiny_generator()
    z = torch.randn(2, 8)

    # noise_strength starts at 0, so a fresh generator ignores its noise inputs.
    without_noise = generator(z, noise_mode="none")

    assert torch.equal(without_noise, generator(z, noise_mode="random"))
    assert torch.equal(without_noise, generator(z, noise_mode="const"))


def test_noise_const_buffers_are_saved():
    generator = tiny_generator(img_resolution=8)

    state = generator.state_dict()
    noise_keys = sorted(key for key in state if key.endswith("noise_const"))
    filter_keys = [key for key in state if "resample_filter" in key]

    assert noise_keys == [
        "synthesis.blocks.0.conv1.noise_const",
        "synthesis.blocks.1.conv0.noise_const",
        "synthesis.blocks.1.conv1.noise_const",
    ]
    assert state["synthesis.blocks.1.conv0.noise_const"].shape == (8, 8)
    assert filter_keys == []


@pytest.mark.parametrize("img_channels", [1, 3])
def test_fused_modconv_matches_unfused(img_channels):
    generator = tiny_generator(img_resolution=16, img_channels=img_channels)
    set_noise_strengths(generator, 0.5)
    ws = generator.mapping(torch.randn(3, 8))

    unfused = generator.synthesis(ws, noise_mode="const", fused_modconv=False)
    fused = generator.synthesis(ws, noise_mode="const", fused_modconv=True)

    # Both forms compute the same sums in a different order, so they agree to float32 rounding.
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
def test_modulated_conv2d_forms_agree(up, demodulate):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5)
    weight = torch.randn(6, 4, 3, 3)
    styles = torch.randn(3, 4)
    resample_filter = make_depthwise_resample_filter(6)

    unfused = modulated_conv2d(x, weight, styles, demodulate, up, resample_filter, output_gain=1.5, fused=False)
    fused = modulated_conv2d(x, weight, styles, demodulate, up, resample_filter, output_gain=1.5, fused=True)

    size = 10 if up else 5
    assert unfused.shape == (3, 6, size, size)
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


def test_modulated_conv2d_matches_per_sample_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    styles = torch.randn(2, 3, dtype=torch.float64)

    result = modulated_conv2d(x, weight, styles, demodulate=True)

    for sample in range(2):
        modulated = weight * styles[sample][None, :, None, None]
        demodulated = modulated / modulated.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        expected = F.conv2d(x[sample : sample + 1], demodulated, padding=1)
        torch.testing.assert_close(result[sample : sample + 1], expected, atol=1e-12, rtol=1e-10)


def test_demodulation_gives_unit_output_variance():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 16, 16)
    weight = torch.randn(32, 64, 3, 3)
    styles = torch.rand(8, 64) * 2 + 0.1

    y = modulated_conv2d(x, weight, styles, demodulate=True)

    # Demodulated weights have unit norm per output channel, so unit-variance inputs give unit-variance outputs.
    # The 8 * 32 * 256 outputs leave a sampling error of a few percent.
    assert abs(y.var().item() - 1.0) < 0.1


def test_upsample2d_keeps_constant_interior():
    constant = torch.ones(1, 2, 6, 6)
    resample_filter = make_depthwise_resample_filter(2)

    upsampled = upsample2d(constant, resample_filter)

    assert upsampled.shape == (1, 2, 12, 12)
    # Zero padding darkens only the outermost rows and columns.
    # Elsewhere the [1, 3, 3, 1] filter preserves the mean.
    torch.testing.assert_close(upsampled[:, :, 1:-1, 1:-1], torch.ones(1, 2, 10, 10), atol=1e-6, rtol=0)


def test_upsample2d_matches_bilinear_interior():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    resample_filter = make_depthwise_resample_filter(3)

    upsampled = upsample2d(x, resample_filter)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    torch.testing.assert_close(upsampled[:, :, 1:-1, 1:-1], bilinear[:, :, 1:-1, 1:-1], atol=1e-6, rtol=1e-6)


def test_equalized_linear_scales_weight_at_runtime():
    torch.manual_seed(0)
    layer = EqualizedLinear(256, 128, bias_init=1.0, lr_multiplier=0.01)

    effective_weight = layer.weight * layer.weight_gain
    effective_bias = layer.bias * layer.bias_gain

    # Stored weights are N(0, 1) / lr_multiplier, and the effective weights are N(0, 1 / in_features).
    assert abs(layer.weight.std().item() * 0.01 - 1.0) < 0.02
    assert abs(effective_weight.std().item() * math.sqrt(256) - 1.0) < 0.02
    torch.testing.assert_close(effective_bias, torch.ones(128), atol=1e-6, rtol=0)


def test_equalized_lrelu_keeps_second_moment():
    torch.manual_seed(0)
    layer = EqualizedLinear(256, 256, activation="lrelu")

    y = layer(torch.randn(4096, 256))

    # Leaky ReLU times sqrt(2) keeps E[y^2] near 1 for unit-variance pre-activations (slope 0.2 gives 1.04).
    assert abs(y.square().mean().item() - 1.04) < 0.05


def synthesis_path_length_grad(images: torch.Tensor, ws: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
    return grad


@pytest.mark.parametrize("fused_modconv", [False, True])
def test_synthesis_double_backward_gradgradcheck(fused_modconv):
    torch.manual_seed(0)
    synthesis = SynthesisNetwork(w_dim=3, img_resolution=8, img_channels=2, channel_base=16, channel_max=3).double()
    set_noise_strengths(synthesis, 0.3)
    ws = torch.randn(2, synthesis.num_ws, 3, dtype=torch.float64, requires_grad=True)
    conv_weight = synthesis.blocks[1].conv0.weight.detach().clone().requires_grad_(True)

    def synthesize(ws, conv_weight):
        parameters = {"blocks.1.conv0.weight": conv_weight}
        options = {"noise_mode": "const", "fused_modconv": fused_modconv}
        return torch.func.functional_call(synthesis, parameters, (ws,), options)

    # Path length regularization differentiates d(images . y)/d(ws) again, with respect to ws and the weights.
    assert torch.autograd.gradcheck(synthesize, (ws, conv_weight), fast_mode=True)
    assert torch.autograd.gradgradcheck(synthesize, (ws, conv_weight), fast_mode=True)


def test_discriminator_double_backward_gradgradcheck():
    torch.manual_seed(0)
    discriminator = Discriminator(img_resolution=8, channel_base=16, channel_max=3, mbstd_group_size=2).double()
    images = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)

    # The R1 penalty differentiates the gradient of the logits with respect to the images again.
    assert torch.autograd.gradgradcheck(discriminator, (images,), fast_mode=True)


def test_path_length_gradient_reaches_synthesis_weights():
    generator = tiny_generator()
    set_noise_strengths(generator, 0.5)
    ws = generator.mapping(torch.randn(4, 8))
    images = generator.synthesis(ws)
    y = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])

    grad = synthesis_path_length_grad(images, ws, y)
    grad.square().sum(dim=2).mean(dim=1).sqrt().mean().backward()

    for name, parameter in generator.synthesis.named_parameters():
        # A toRGB bias adds a constant to the image, so it does not change the Jacobian of images with respect to ws.
        if name.endswith("torgb.bias"):
            continue
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum().item() > 0, name


def test_bf16_autocast_returns_float32_outputs():
    generator = tiny_generator()
    discriminator = tiny_discriminator()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        ws = generator.mapping(torch.randn(2, 8))
        images = generator.synthesis(ws)
        logits = discriminator(images)

    assert ws.dtype == torch.float32
    assert images.dtype == torch.float32
    assert logits.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert torch.isfinite(logits).all()


def reference_minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-sample feature from explicit groups: sample b is in group b mod ceil(B / min(group_size, B))."""
    batch_size = x.shape[0]
    num_groups = math.ceil(batch_size / min(group_size, batch_size))
    feature = torch.empty(batch_size, dtype=x.dtype)
    for group in range(num_groups):
        members = [index for index in range(batch_size) if index % num_groups == group]
        values = x[members]
        std = (values.var(dim=0, unbiased=False) + 1e-8).sqrt()
        feature[members] = std.mean()
    return feature


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_minibatch_stddev_matches_explicit_groups(batch_size):
    torch.manual_seed(batch_size)
    x = torch.randn(batch_size, 6, 4, 4, dtype=torch.float64)

    result = minibatch_stddev(x, group_size=4)
    expected = reference_minibatch_stddev(x, group_size=4)

    assert result.shape == (batch_size, 7, 4, 4)
    assert torch.equal(result[:, :6], x)
    torch.testing.assert_close(result[:, 6], expected[:, None, None].expand(batch_size, 4, 4), atol=1e-12, rtol=1e-10)


def test_minibatch_stddev_groups_differ_by_one():
    x = torch.randn(7, 2, 4, 4)

    feature = minibatch_stddev(x, group_size=4)[:, 2, 0, 0]

    # Seven samples with group size 4 form groups {0, 2, 4, 6} and {1, 3, 5}.
    assert torch.equal(feature[[0, 2, 4, 6]], feature[0].expand(4))
    assert torch.equal(feature[[1, 3, 5]], feature[1].expand(3))
    assert feature[0].item() != feature[1].item()


def test_minibatch_stddev_channel_slices():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 4, 4)

    result = minibatch_stddev(x, group_size=2, num_channels=2)
    first_slice = minibatch_stddev(x[:, :3], group_size=2)
    second_slice = minibatch_stddev(x[:, 3:], group_size=2)

    assert result.shape == (4, 8, 4, 4)
    torch.testing.assert_close(result[:, 6], first_slice[:, 3], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(result[:, 7], second_slice[:, 3], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 5, 7])
def test_discriminator_odd_batch_sizes(batch_size):
    discriminator = tiny_discriminator(img_resolution=8)

    logits = discriminator(torch.randn(batch_size, 1, 8, 8))

    assert logits.shape == (batch_size, 1)
    assert torch.isfinite(logits).all()


def test_minibatch_stddev_couples_samples_in_group():
    discriminator = tiny_discriminator(img_resolution=8)
    images = torch.randn(4, 1, 8, 8)

    changed = images.clone()
    changed[1] = changed[1] * 3

    # With group size 4, changing one sample changes the group statistic and so every logit.
    difference = (discriminator(images) - discriminator(changed)).abs()
    assert (difference[[0, 2, 3]] > 0).all()


def test_conditional_generator_uses_labels():
    generator = tiny_generator(c_dim=3)
    z = torch.randn(2, 8).repeat(3, 1)
    labels = torch.eye(3).repeat_interleave(2, dim=0)

    images = generator(z, labels, noise_mode="const")

    assert images.shape == (6, 1, 8, 8)
    assert (images[0:2] - images[2:4]).abs().max().item() > 1e-4
    assert (images[2:4] - images[4:6]).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match=r"c is required with shape \[B, 3\]"):
        generator(z)


def test_conditional_discriminator_uses_labels():
    discriminator = tiny_discriminator(c_dim=3)
    images = torch.randn(2, 1, 8, 8).repeat(3, 1, 1, 1)
    labels = torch.eye(3).repeat_interleave(2, dim=0)

    logits = discriminator(images, labels)

    assert logits.shape == (6, 1)
    assert (logits[0:2] - logits[2:4]).abs().max().item() > 1e-6
    assert (logits[2:4] - logits[4:6]).abs().max().item() > 1e-6
    with pytest.raises(ValueError, match=r"c must have shape \[B, 3\]"):
        discriminator(images, torch.eye(4)[:6])


def test_unconditional_models_ignore_labels():
    generator = tiny_generator()
    discriminator = tiny_discriminator()
    z = torch.randn(2, 8)
    images = torch.randn(2, 1, 8, 8)

    assert torch.equal(generator(z, torch.zeros(2, 0), noise_mode="const"), generator(z, noise_mode="const"))
    assert torch.equal(discriminator(images, torch.zeros(2, 0)), discriminator(images))


def test_label_only_mapping_returns_single_w():
    mapping = MappingNetwork(z_dim=0, c_dim=4, w_dim=6, num_ws=None, w_avg_beta=None)

    w = mapping(None, torch.eye(4))

    assert w.shape == (4, 6)
    assert mapping.w_avg is None
    with pytest.raises(ValueError, match="truncation needs a tracked w_avg"):
        mapping(None, torch.eye(4), truncation_psi=0.5)


@pytest.mark.parametrize("c_dim", [0, 3])
def test_generator_init_kwargs_round_trip(c_dim):
    generator = tiny_generator(img_resolution=16, c_dim=c_dim, seed=1)
    set_noise_strengths(generator, 0.5)
    generator.mapping(torch.randn(8, 8), torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]] if c_dim else None, update_w_avg=True)

    torch.manual_seed(2)
    rebuilt = Generator(**json.loads(json.dumps(generator.init_kwargs)))
    rebuilt.load_state_dict(generator.state_dict())
    z = torch.randn(3, 8)
    labels = torch.eye(3) if c_dim else None

    assert rebuilt.init_kwargs == generator.init_kwargs
    rebuilt_images = rebuilt(z, labels, truncation_psi=0.5, noise_mode="const")
    assert torch.equal(rebuilt_images, generator(z, labels, truncation_psi=0.5, noise_mode="const"))
    torch.manual_seed(3)
    original_random = generator(z, labels)
    torch.manual_seed(3)
    assert torch.equal(rebuilt(z, labels), original_random)


@pytest.mark.parametrize("c_dim", [0, 3])
def test_discriminator_init_kwargs_round_trip(c_dim):
    discriminator = tiny_discriminator(img_resolution=16, c_dim=c_dim, seed=1)

    torch.manual_seed(2)
    rebuilt = Discriminator(**json.loads(json.dumps(discriminator.init_kwargs)))
    rebuilt.load_state_dict(discriminator.state_dict())
    images = torch.randn(5, 1, 16, 16)
    labels = torch.eye(3)[[0, 1, 2, 0, 1]] if c_dim else None

    assert rebuilt.init_kwargs == discriminator.init_kwargs
    assert torch.equal(rebuilt(images, labels), discriminator(images, labels))


def test_numpy_sizes_give_json_init_kwargs():
    generator = Generator(z_dim=numpy.int64(8), w_dim=8, img_resolution=numpy.int64(8), **TINY)
    discriminator = Discriminator(img_resolution=numpy.int64(8), img_channels=numpy.int32(1), **TINY)

    assert json.loads(json.dumps(generator.init_kwargs)) == generator.init_kwargs
    assert json.loads(json.dumps(discriminator.init_kwargs)) == discriminator.init_kwargs
    assert type(generator.img_resolution) is int
    assert type(discriminator.img_channels) is int


def test_rebuilt_generator_differs_before_loading():
    generator = tiny_generator(seed=1)

    torch.manual_seed(2)
    rebuilt = Generator(**generator.init_kwargs)
    z = torch.randn(2, 8)

    # Guards the round-trip tests: a fresh initialization must not match by accident.
    assert not torch.equal(rebuilt(z, noise_mode="const"), generator(z, noise_mode="const"))
