"""Exactness of path_lengths and PathLengthPenalty against closed forms, full Jacobians and finite differences.

Everything runs in float64 on the toy generators of tests/toys.py, so the tolerances are near float64
rounding (1e-10) unless a test measures a statistical estimate.
"""

from __future__ import annotations

import math

import pytest
import torch

from pathlength import PathLengthPenalty, path_lengths
from toys import LinearGenerator, ModConvGenerator, single_thread

# (image_shape, latent_shape): square W+, non-square W+ and plain W latents.
LINEAR_LAYOUTS = [
    ((3, 8, 8), (4, 16)),
    ((3, 8, 16), (4, 16)),
    ((3, 8, 16), (16,)),
]


@pytest.fixture(autouse=True)
def _single_thread():
    with single_thread():
        yield


def scaled_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Return y ~ N(0, I) divided by sqrt(H * W), in float64, from its own seed."""
    rng = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]
    return torch.randn(shape, generator=rng, dtype=torch.float64) / math.sqrt(height * width)


def lengths_from_gradient(grad: torch.Tensor) -> torch.Tensor:
    """Return sqrt(mean over layers of the squared norm) for [B, L, D], or the plain norm for [B, D]."""
    squares = grad.square().sum(dim=-1)
    if squares.ndim == 2:
        squares = squares.mean(dim=1)
    return squares.sqrt()


def closed_form_lengths(generator: LinearGenerator, noise: torch.Tensor) -> torch.Tensor:
    """Return the lengths of the linear toy from J^T y = A^T flatten(y_b), without autograd."""
    batch = noise.shape[0]
    grad = noise.reshape(batch, -1) @ generator.A.detach()
    return lengths_from_gradient(grad.reshape(batch, *generator.latent_shape))


def jacobian_lengths(generator: torch.nn.Module, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Return the lengths from each sample's full Jacobian [C, H, W, *latent] contracted with y."""
    lengths = []
    for w, y in zip(ws.detach(), noise):
        jacobian = torch.func.jacrev(lambda latent: generator(latent.unsqueeze(0)).squeeze(0))(w)
        grad = torch.tensordot(y, jacobian, dims=3)
        lengths.append(lengths_from_gradient(grad.unsqueeze(0)))
    return torch.cat(lengths)


@pytest.mark.parametrize(("image_shape", "latent_shape"), LINEAR_LAYOUTS)
def test_linear_lengths_match_closed_form(image_shape, latent_shape):
    generator = LinearGenerator(image_shape, latent_shape, seed=1)
    ws = torch.randn(5, *latent_shape, dtype=torch.float64, requires_grad=True)
    noise = scaled_noise((5, *image_shape), seed=2)

    lengths = path_lengths(generator(ws), ws, noise)
    expected = closed_form_lengths(generator, noise)

    assert lengths.dtype == torch.float64
    # Both sides are one matrix product and a norm in float64: only rounding separates them.
    torch.testing.assert_close(lengths.detach(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (8, 16)])
def test_modconv_lengths_match_full_jacobian(height, width):
    generator = ModConvGenerator(height, width, seed=3)
    ws = generator.random_ws(4, seed=4).requires_grad_()
    noise = scaled_noise((4, 3, height, width), seed=5)

    lengths = path_lengths(generator(ws), ws, noise)
    expected = jacobian_lengths(generator, ws, noise)

    # jacrev and one backward pass compute the same J^T y in float64, in a different order.
    torch.testing.assert_close(lengths.detach(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("image_shape", "latent_shape"), LINEAR_LAYOUTS)
def test_mean_squared_length_matches_jacobian_norm(image_shape, latent_shape):
    generator = LinearGenerator(image_shape, latent_shape, seed=6)
    height, width = image_shape[1:]
    layers = latent_shape[0] if len(latent_shape) == 2 else 1
    expected = generator.A.detach().square().sum() / (height * width * layers)

    torch.manual_seed(7)
    squares = []
    for _ in range(4):
        ws = torch.randn(1024, *latent_shape, dtype=torch.float64, requires_grad=True)
        squares.append(path_lengths(generator(ws), ws, create_graph=False).square())
    mean_square = torch.cat(squares).mean()

    # 4096 draws put the standard error near 0.3%; 2% is about 6 standard errors. Scaling the noise
    # by C * H * W instead of H * W, or summing the layers instead of averaging, is off by 3x or 4x.
    assert abs(mean_square.item() / expected.item() - 1) < 0.02


def test_penalty_gradcheck_on_linear_toy():
    generator = LinearGenerator((2, 2, 3), (2, 3), seed=8)
    ws = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    noise = scaled_noise((3, 2, 2, 3), seed=9)
    penalty = PathLengthPenalty(check_double_backward=False)

    def loss_of(matrix: torch.Tensor) -> torch.Tensor:
        # pl_mean moves on every call, so each evaluation starts from the same value.
        penalty.pl_mean.fill_(0.25)
        images = (ws.reshape(3, -1) @ matrix.T).reshape(3, 2, 2, 3)
        return penalty(images, ws, noise).loss

    matrix = generator.A.detach().clone().requires_grad_()

    assert torch.autograd.gradcheck(loss_of, (matrix,))


def test_penalty_gradcheck_on_modconv_toy():
    generator = ModConvGenerator(seed=10)
    names = [name for name, _ in generator.named_parameters()]
    values = tuple(parameter.detach().clone().requires_grad_() for parameter in generator.parameters())
    ws = generator.random_ws(2, seed=11).requires_grad_()
    noise = scaled_noise((2, 3, 8, 8), seed=12)
    penalty = PathLengthPenalty(check_double_backward=False)

    def loss_of(*parameters: torch.Tensor) -> torch.Tensor:
        penalty.pl_mean.fill_(0.25)
        images = torch.func.functional_call(generator, dict(zip(names, parameters)), (ws,))
        return penalty(images, ws, noise).loss

    # Fast mode compares random projections of the analytical and numerical Jacobians. The full
    # check of all 975 parameters took about 14 s on one CPU thread.
    assert torch.autograd.gradcheck(loss_of, values, fast_mode=True)


def test_modconv_toy_passes_gradgradcheck():
    generator = ModConvGenerator(seed=13)
    names = [name for name, _ in generator.named_parameters()]
    values = tuple(parameter.detach().clone().requires_grad_() for parameter in generator.parameters())
    ws = generator.random_ws(2, seed=14).requires_grad_()

    def images_of(latents: torch.Tensor, *parameters: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(generator, dict(zip(names, parameters)), (latents,))

    assert torch.autograd.gradgradcheck(images_of, (ws, *values), fast_mode=True)


def test_penalty_formula_matches_independent_computation():
    generator = LinearGenerator((3, 8, 16), (4, 16), seed=15)
    ws = torch.randn(6, 4, 16, dtype=torch.float64, requires_grad=True)
    noise = scaled_noise((6, 3, 8, 16), seed=16)
    penalty = PathLengthPenalty(weight=2.0, decay=0.01, interval=4)
    penalty.pl_mean.fill_(0.75)

    result = penalty(generator(ws), ws, noise)

    lengths = closed_form_lengths(generator, noise)
    start = torch.tensor(0.75, dtype=torch.float32).double()
    expected_mean = start + 0.01 * (lengths.mean() - start)
    expected_penalty = (lengths - expected_mean).square().mean()

    # Closed form against autograd, both float64.
    assert abs(result.penalty.item() - expected_penalty.item()) <= 1e-12 * expected_penalty.item()
    # The buffer stores the updated average in float32.
    assert result.pl_mean.item() == expected_mean.float().item()
    assert penalty.pl_mean.dtype == torch.float32
