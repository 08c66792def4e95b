"""Guards of PathLengthPenalty: non-finite values, zero lengths, autograd misuse, ops without double backward, low precision."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pathlength import DoubleBackwardError, NonFinitePathLengthError, PathLengthPenalty, path_lengths
from toys import LinearGenerator, ModConvGenerator, single_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with single_thread():
        yield


def scaled_noise(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]
    return (torch.randn(shape, generator=rng, dtype=torch.float64) / math.sqrt(height * width)).to(dtype)


def finite_step(penalty: PathLengthPenalty, generator: LinearGenerator, seed: int):
    ws = torch.randn(4, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    return penalty(generator(ws), ws, scaled_noise((4, 3, 8, 8), seed))


# Each builder returns (images, ws) of a batch of 4 whose first sample is non-finite in one way.
def nan_image(generator: LinearGenerator):
    ws = torch.randn(4, 4, 16, dtype=torch.float64, requires_grad=True)
    poison = torch.ones(4, 1, 1, 1, dtype=torch.float64)
    poison[0] = math.nan
    return generator(ws) * poison, ws


def nan_gradient(generator: LinearGenerator):
    # d/dw sqrt(w^2) at w = 0 is 0 * inf = NaN, while the image itself stays finite.
    latents = torch.randn(4, 4, 16, dtype=torch.float64)
    latents[0, 0, 0] = 0.0
    ws = latents.requires_grad_()
    extra = ws[:, 0, 0].square().sqrt().reshape(4, 1, 1, 1)
    return generator(ws) + extra, ws


def inf_gradient(generator: LinearGenerator):
    # d/dw sqrt(max(w, 0)) at w = 0 is inf, while the image itself stays finite.
    latents = torch.randn(4, 4, 16, dtype=torch.float64)
    latents[0, 0, 0] = 0.0
    ws = latents.requires_grad_()
    extra = ws[:, 0, 0].clamp(min=0).sqrt().reshape(4, 1, 1, 1)
    return generator(ws) + extra, ws


def inf_length(generator: LinearGenerator):
    # Finite float32 images and gradients near 1e30 whose squares overflow float32 to inf.
    ws = torch.randn(4, 4, 16, requires_grad=True)
    scale = torch.ones(4, 1, 1, 1)
    scale[0] = 1e30
    return generator.float()(ws) * scale, ws


NONFINITE_CASES = [
    (nan_image, "images contain NaN or inf"),
    (nan_gradient, "1 of 4 path lengths are NaN or inf"),
    (inf_gradient, "1 of 4 path lengths are NaN or inf"),
    (inf_length, "1 of 4 path lengths are NaN or inf"),
]


@pytest.mark.parametrize(("make_batch", "what"), NONFINITE_CASES)
def test_nonfinite_step_raises_and_keeps_average(make_batch, what):
    generator = LinearGenerator(seed=1)
    penalty = PathLengthPenalty()
    finite_step(penalty, generator, seed=2)
    before = penalty.pl_mean.clone()

    images, ws = make_batch(LinearGenerator(seed=1))
    with pytest.raises(NonFinitePathLengthError) as raised:
        penalty(images, ws, step=7)

    assert "step 7" in str(raised.value)
    assert what in str(raised.value)
    assert torch.equal(penalty.pl_mean, before)


@pytest.mark.parametrize(("make_batch", "what"), NONFINITE_CASES)
def test_nonfinite_step_skips_when_asked(make_batch, what):
    generator = LinearGenerator(seed=1)
    penalty = PathLengthPenalty(on_nonfinite="skip")
    finite_step(penalty, generator, seed=2)
    before = penalty.pl_mean.clone()

    images, ws = make_batch(LinearGenerator(seed=1))
    result = penalty(images, ws, step=7)

    assert result.skipped
    assert "step 7" in result.reason
    assert what in result.reason
    assert torch.equal(penalty.pl_mean, before)
    assert torch.equal(result.pl_mean, before)
    assert result.loss.item() == 0.0

    after = finite_step(penalty, generator, seed=3)
    after.loss.backward()

    assert not after.skipped
    assert torch.isfinite(after.penalty)
    assert torch.isfinite(generator.A.grad).all()


def test_nonfinite_error_names_run_step():
    generator = LinearGenerator(seed=1)
    calls = []

    def generator_nan_on_third_call(ws: torch.Tensor) -> torch.Tensor:
        calls.append(ws.shape[0])
        images = generator(ws)
        return images * math.nan if len(calls) == 3 else images

    penalty = PathLengthPenalty(interval=1, batch_shrink=1)
    for _ in range(2):
        penalty.run(generator_nan_on_third_call, torch.randn(4, 4, 16, dtype=torch.float64))
    before = penalty.pl_mean.clone()

    with pytest.raises(NonFinitePathLengthError, match="step 2"):
        penalty.run(generator_nan_on_third_call, torch.randn(4, 4, 16, dtype=torch.float64))

    assert torch.equal(penalty.pl_mean, before)


def test_nonfinite_error_without_step_says_so():
    generator = LinearGenerator(seed=1)
    penalty = PathLengthPenalty()
    for _ in range(3):
        penalty.run(generator, torch.randn(4, 4, 16, dtype=torch.float64))

    images, ws = nan_image(generator)
    with pytest.raises(NonFinitePathLengthError, match=r"step \? \(pass step= to number it\)"):
        penalty(images, ws)


def test_nonfinite_loaded_average_is_reported():
    generator = LinearGenerator(seed=1)
    penalty = PathLengthPenalty()
    penalty.load_state_dict({"pl_mean": torch.tensor(math.inf), "step": torch.tensor(0)})

    with pytest.raises(NonFinitePathLengthError, match="pl_mean is inf"):
        finite_step(penalty, generator, seed=2)


def masked_linear_batch():
    """Return (generator, ws, images) of the linear toy with sample 0 multiplied by 0."""
    generator = LinearGenerator((3, 8, 16), (4, 16), seed=4)
    ws = torch.randn(4, 4, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(4, 1, 1, 1, dtype=torch.float64)
    mask[0] = 0.0
    return generator, ws, generator(ws) * mask


def test_constant_sample_has_zero_length():
    generator, ws, images = masked_linear_batch()
    penalty = PathLengthPenalty()
    penalty.pl_mean.fill_(0.5)

    result = penalty(images, ws, scaled_noise(images.shape, seed=5))
    result.loss.backward()

    assert result.lengths[0].item() == 0.0
    assert (result.lengths[1:] > 0).all()
    assert torch.isfinite(result.penalty)
    assert torch.isfinite(generator.A.grad).all()


def test_constant_sample_keeps_modconv_grads_finite():
    generator = ModConvGenerator(seed=6)
    ws = generator.random_ws(3, seed=7).requires_grad_()
    mask = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    penalty = PathLengthPenalty()

    result = penalty(generator(ws) * mask, ws)
    result.loss.backward()

    assert result.lengths[0].item() == 0.0
    for name, parameter in generator.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


def test_safe_norm_matches_plain_sqrt():
    generator = ModConvGenerator(seed=8)
    ws = generator.random_ws(6, seed=9).requires_grad_()
    images = generator(ws)
    noise = scaled_noise(images.shape, seed=10)

    lengths = path_lengths(images, ws, noise)
    (grad,) = torch.autograd.grad((images * noise).sum(), ws)
    plain = grad.square().sum(dim=-1).mean(dim=1).sqrt()

    # The safe square root differs from sqrt only at 0, so normal lengths must agree to well below 1e-6.
    assert ((lengths.detach() - plain).abs() / plain).max().item() < 1e-6


def test_penalty_loss_trains_every_modconv_weight():
    generator = ModConvGenerator(seed=11)
    ws = generator.random_ws(4, seed=12).requires_grad_()
    penalty = PathLengthPenalty()

    result = penalty(generator(ws), ws)

    assert result.loss.requires_grad

    result.loss.backward()

    # The output bias adds a constant to the images, so J^T y and the penalty do not depend on it.
    shaping = {name: parameter for name, parameter in generator.named_parameters() if name != "to_rgb.bias"}
    for name, parameter in shaping.items():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum().item() > 0, name


def test_penalty_loss_gives_output_bias_zero_grad():
    generator = ModConvGenerator(seed=11)
    ws = generator.random_ws(4, seed=12).requires_grad_()

    PathLengthPenalty()(generator(ws), ws).loss.backward()

    # A zero gradient, not None, so data-parallel gradient reduction reaches this parameter too.
    assert generator.to_rgb.bias.grad is not None
    assert generator.to_rgb.bias.grad.abs().sum().item() == 0.0


def test_penalty_under_no_grad_raises():
    generator = ModConvGenerator(seed=13)
    ws = generator.random_ws(2, seed=14).requires_grad_()
    penalty = PathLengthPenalty()

    with torch.no_grad():
        images = generator(ws)
        with pytest.raises(RuntimeError, match="path length regularization needs autograd"):
            penalty(images, ws)

    with torch.no_grad(), pytest.raises(RuntimeError, match="path length regularization needs autograd"):
        penalty.run(generator, generator.random_ws(4, seed=15))


class CubeFunction(torch.autograd.Function):
    """x^3 with a backward that autograd cannot differentiate again."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


class CubeLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return CubeFunction.apply(x)


class DistanceLayer(nn.Module):
    """Distances to learned centers through torch.cdist, which has no double backward in PyTorch 2.13."""

    def __init__(self) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(8, 8, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x, self.centers)


class ThreeLayerGenerator(nn.Module):
    """Plain W latents [B, 8] through project, `middle` and out to images [B, 1, 4, 4]."""

    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.project = nn.Linear(8, 8, dtype=torch.float64)
        self.middle = middle
        self.out = nn.Linear(8, 16, dtype=torch.float64)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.out(self.middle(self.project(ws))).reshape(-1, 1, 4, 4)


@pytest.mark.parametrize(("middle", "op_name"), [(CubeLayer, "CubeFunction"), (DistanceLayer, "_cdist_backward")])
def test_op_without_double_backward_is_named(middle, op_name):
    generator = ThreeLayerGenerator(middle())
    ws = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)

    with pytest.raises(DoubleBackwardError) as raised:
        PathLengthPenalty()(generator(ws), ws)

    assert op_name in str(raised.value)


@pytest.mark.parametrize(("middle", "op_name"), [(CubeLayer, "CubeFunction"), (DistanceLayer, "_cdist_backward")])
def test_run_names_module_without_double_backward(middle, op_name):
    generator = ThreeLayerGenerator(middle())

    with pytest.raises(DoubleBackwardError) as raised:
        PathLengthPenalty().run(generator, torch.randn(8, 8, dtype=torch.float64))

    assert op_name in str(raised.value)
    assert f"module 'middle' of type {middle.__name__}" in str(raised.value)


def recreated_latents(generator: ModConvGenerator):
    ws = generator.random_ws(2, seed=16).requires_grad_()
    images = generator(ws)
    return images, ws.detach().clone().requires_grad_()


def detached_latents(generator: ModConvGenerator):
    ws = generator.random_ws(2, seed=16).requires_grad_()
    return generator(ws), ws.detach()


def latents_of_other_forward(generator: ModConvGenerator):
    mapping = nn.Linear(16, 16, dtype=torch.float64)
    z = torch.randn(2, 4, 16, dtype=torch.float64)
    images = generator(mapping(z))
    return images, mapping(z)


@pytest.mark.parametrize("make_pair", [recreated_latents, detached_latents, latents_of_other_forward])
def test_latents_not_in_graph_raise(make_pair):
    images, ws = make_pair(ModConvGenerator(seed=17))

    with pytest.raises(ValueError) as raised:
        PathLengthPenalty()(images, ws)

    message = str(raised.value)
    assert message.startswith("ws ")
    assert "ws.requires_grad_() before the forward" in message


def test_float16_without_scaler_warns_once():
    generator = LinearGenerator((1, 4, 4), (8,), seed=18, dtype=torch.float16)
    ws = torch.randn(4, 8, dtype=torch.float16, requires_grad=True)
    penalty = PathLengthPenalty()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [penalty(generator(ws), ws) for _ in range(3)]

    scaler_warnings = [item for item in caught if "without a GradScaler" in str(item.message)]
    assert len(scaler_warnings) == 1
    assert scaler_warnings[0].category is RuntimeWarning
    assert results[-1].lengths.dtype == torch.float32


@pytest.mark.parametrize("toy", ["linear", "modconv"])
def test_bfloat16_autocast_keeps_float32_state(toy):
    if toy == "linear":
        generator = LinearGenerator((3, 8, 16), (4, 16), seed=19, dtype=torch.float32)
        ws = torch.randn(8, 4, 16, generator=torch.Generator().manual_seed(20))
    else:
        generator = ModConvGenerator(seed=19, dtype=torch.float32)
        ws = generator.random_ws(8, seed=20)
    ws.requires_grad_()
    noise = scaled_noise((8, 3, *generator(ws).shape[-2:]), seed=21, dtype=torch.float32)
    reference = PathLengthPenalty()(generator(ws), ws, noise)
    penalty = PathLengthPenalty()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = generator(ws)
        result = penalty(images, ws, noise)
    result.loss.backward()

    if toy == "linear":
        assert images.dtype == torch.bfloat16
    assert penalty.pl_mean.dtype == torch.float32
    assert result.lengths.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa; reducing in float32 keeps the penalty within 2%.
    assert abs(result.penalty.item() / reference.penalty.item() - 1) < 2e-2
    for name, parameter in generator.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


def test_freed_graph_gets_plain_message():
    generator = LinearGenerator((3, 8, 8), (4, 16), seed=0)
    ws = torch.randn(2, 4, 16, dtype=torch.float64, requires_grad=True)
    images = generator(ws)
    images.sum().backward()

    with pytest.raises(RuntimeError) as caught:
        PathLengthPenalty()(images, ws)

    assert not isinstance(caught.value, DoubleBackwardError)
    assert "run the generator again" in str(caught.value)
