"""Perceptual path length (PPL, Karras et al., "A Style-Based Generator Architecture for Generative
Adversarial Networks", CVPR 2019): the image distance per squared latent step along interpolation
paths, in Z (slerp) or W (lerp), with a pluggable distance."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pathlength.diagnostics.distances import Distance, PixelDistance
from pathlength.diagnostics.protocol import (
    GeneratorLike,
    batch_slices,
    check_generator,
    check_noise_mode,
    check_positive_int,
    draw_labels,
    module_device_dtype,
    run_mapping,
    run_synthesis,
    seeded_global_rng,
)

logger = logging.getLogger(__name__)

SPACES = ("z", "w")
SAMPLINGS = ("end", "full")

# Below this 1 - cos(angle), slerp falls back to lerp: the two agree to O(angle^2) there, and the
# division by sin(angle) would lose precision or be 0 / 0.
_SLERP_PARALLEL_TOLERANCE = 1e-7


@dataclass(frozen=True)
class PerceptualPathLengthResult:
    """Perceptual path length and the per-sample distances behind it.

    Attributes:
        value: 0-dim float64 tensor, the mean of the kept distances. It has a graph only when the
            measurement ran with ``requires_grad=True``; ``float(result)`` gives the number.
        distances: [num_samples] float64 distances divided by epsilon^2, before filtering.
        kept: [num_samples] bool mask of the samples inside the percentile bounds.
        lower_bound, upper_bound: the distances at the lower and upper percentiles, or None when
            that side is not filtered.
        settings: space, sampling, epsilon, distance name, seed and the other arguments.
    """

    value: Tensor
    distances: Tensor
    kept: Tensor
    lower_bound: float | None
    upper_bound: float | None
    settings: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value.detach())

    @property
    def num_kept(self) -> int:
        """Number of samples inside the percentile bounds."""
        return int(self.kept.sum())

    def to_dict(self, include_distances: bool = False) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the value, the bounds and the settings."""
        result: dict[str, Any] = {
            "ppl": float(self),
            "num_samples": int(self.distances.numel()),
            "num_kept": self.num_kept,
            "lower_bound": self.lower_bound,
            "upper_bound": self.upper_bound,
            "settings": dict(self.settings),
        }
        if include_distances:
            result["distances"] = self.distances.detach().tolist()
        return result


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    r"""Spherical interpolation between the directions of ``a`` and ``b`` [N, D] at ``t`` [N].

    Both are normalised to unit length first; with angle :math:`\theta = \arccos(\hat a \cdot \hat b)`,

    .. math:: \operatorname{slerp}(a, b; t) = \frac{\sin((1 - t)\theta)}{\sin\theta} \hat a + \frac{\sin(t\theta)}{\sin\theta} \hat b,

    a unit vector that moves at constant angular speed; t outside [0, 1] extrapolates along the same
    great circle. For (nearly) parallel directions it returns :math:`\hat a + t(\hat b - \hat a)`,
    which is exactly :math:`\hat a` when a equals b, with finite gradients.

    Raises:
        ValueError: when a pair points in opposite directions (the great circle is not unique) or a
            vector is zero.

    Example:
        >>> a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> slerp(a, b, torch.tensor([0.5]))
        tensor([[0.7071, 0.7071]])
    """
    norms_a, norms_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    if bool((norms_a == 0).any()) or bool((norms_b == 0).any()):
        raise ValueError("slerp needs non-zero vectors, got a zero latent; draw latents from N(0, I)")
    a, b = a / norms_a, b / norms_b
    t = t.reshape(-1, 1).to(a.dtype)

    cosine = (a * b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    if bool((cosine <= -1 + _SLERP_PARALLEL_TOLERANCE).any()):
        raise ValueError("slerp between opposite latents is ambiguous (every great circle joins them); perturb one of them")
    parallel = cosine >= 1 - _SLERP_PARALLEL_TOLERANCE

    # acos has an infinite derivative at 1, so parallel pairs take a harmless angle on the unused branch.
    angle = torch.acos(torch.where(parallel, torch.zeros_like(cosine), cosine))
    sine = torch.sin(angle)
    spherical = (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / sine
    linear = a + t * (b - a)
    return torch.where(parallel, linear, spherical)


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Linear interpolation ``a + t * (b - a)`` with ``t`` [N] broadcast over the trailing dimensions.

    ``b - a`` is 0 when a equals b, so the result is then exactly ``a`` for every t.
    """
    t = t.reshape(-1, *([1] * (a.ndim - 1))).to(a.dtype)
    return a + t * (b - a)


def perceptual_path_length(
    generator: GeneratorLike,
    num_samples: int,
    space: str = "w",
    sampling: str = "end",
    epsilon: float = 1e-4,
    distance: Distance | None = None,
    batch_size: int = 64,
    seed: int = 0,
    lower_percentile: float | None = 1.0,
    upper_percentile: float | None = 99.0,
    *,
    latents: tuple[Tensor, Tensor] | None = None,
    labels: Tensor | None = None,
    truncation_psi: float = 1.0,
    noise_mode: str | None = "const",
    requires_grad: bool = False,
) -> PerceptualPathLengthResult:
    r"""Measure perceptual path length: E[d(G(p(t)), G(p(t + epsilon))) / epsilon^2].

    For each sample, two endpoints z_0, z_1 ~ N(0, I) and a position t are drawn, and

    * ``space="z"``: the path is ``slerp(z_0, z_1; t)`` between the normalised z, before the mapping
      network (`slerp`), so both images are G(mapping(slerp(...)));
    * ``space="w"``: the endpoints are mapped first and the path is ``lerp(w_0, w_1; t)`` after the
      mapping network, on the W+ ws the mapping network returns (one w broadcast to every layer).

    The two images at t and t + epsilon are compared with ``distance`` and the result is divided by
    epsilon^2, so for small epsilon it approximates the squared speed of the image along the path.

    Sampling: ``"full"`` draws t ~ U(0, 1), the whole path. ``"end"`` uses t = 0 exactly, the step
    that leaves z_0 (or w_0), as stylegan2-ada-pytorch's and stylegan3's ``perceptual_path_length.py``
    do. Endpoint sampling is also described as t in {0, 1}. The endpoints are exchangeable, so a step
    at t = 1 is in distribution a step of -epsilon from t = 0, and the two definitions agree up to
    O(epsilon). On a generator linear in w, "end" and "full" agree in W for every sample. In Z their
    per-sample values differ, but with Gaussian endpoints their expectations are equal for any
    generator: every point of a slerp path is uniform on the sphere and moves at the same angular
    speed. Only in W can the two samplings differ in expectation.

    Filtering: distances below the ``lower_percentile`` (``numpy.percentile`` with method "lower")
    and above the ``upper_percentile`` (method "higher") are dropped before the mean, which removes
    rare degenerate samples. The defaults 1 and 99 are also torchmetrics' defaults. None on a side
    disables filtering there.

    PPL is a metric of the trained generator, not the regularizer's training statistic (see
    :func:`pathlength.diagnostics.path_length_statistics`): it uses a distance network and latent
    interpolation paths, so the two numbers are not comparable. PPL values are comparable only with
    PPL values measured with the same distance, space, sampling, epsilon and image size. Numbers
    from `PixelDistance` or `FeatureDistance` are not the StyleGAN paper's LPIPS numbers.

    Reproducibility: z_0, z_1, t and the labels are drawn up front for all samples from a
    ``torch.Generator`` seeded with ``seed`` (the same draws for "end" and "full"), so ``batch_size``
    changes speed and memory but not the samples; the value then agrees across batch sizes up to
    floating-point rounding of batched kernels. ``noise_mode="const"`` keeps the generator's noise
    inputs fixed; with "random" the global RNG is seeded with ``seed`` for the call and restored.

    Gradients: the measurement runs under ``torch.no_grad`` unless ``requires_grad=True``, which
    keeps the graph from ``value`` to the generator's parameters (for example to use PPL as a loss).
    Identical images at t and t + epsilon (a constant generator, or equal endpoints) give exactly
    0 with finite gradients.

    Args:
        generator: a `GeneratorLike`.
        num_samples: number of paths.
        space: "z" or "w".
        sampling: "end" or "full".
        epsilon: step along the path, in units of t.
        distance: a `Distance`; None uses `PixelDistance`.
        batch_size: paths per forward pass (each pass runs 2 * batch_size images).
        seed: seed of every draw.
        lower_percentile, upper_percentile: filtering bounds in [0, 100], or None.
        latents: optional endpoints (start, end) to use instead of drawing them: [num_samples, z_dim]
            for ``space="z"``; [num_samples, w_dim] or [num_samples, num_ws, w_dim] for ``space="w"``.
        labels: optional labels [num_samples, c_dim] for a conditional generator; drawn uniformly
            (one-hot) when None.
        truncation_psi: passed to the mapping network when not 1.
        noise_mode: passed to the synthesis network; None passes nothing.
        requires_grad: keep the autograd graph.

    Returns:
        `PerceptualPathLengthResult`.

    Raises:
        ValueError: on an unknown ``space`` or ``sampling``, a non-positive count or epsilon,
            percentiles outside [0, 100] or out of order, and latents of the wrong space or shape
            (the message names the space the shape matches).

    Example:
        >>> from pathlength.models import Generator
        >>> generator = Generator(z_dim=16, w_dim=16, img_resolution=8, channel_base=64, channel_max=16)
        >>> result = perceptual_path_length(generator, num_samples=64, space="w", sampling="end")
        >>> result.to_dict()["num_samples"]
        64
    """
    check_generator(generator)
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    _check_settings(space, sampling, epsilon, lower_percentile, upper_percentile)
    check_noise_mode(noise_mode)
    distance = PixelDistance() if distance is None else distance
    device, dtype = module_device_dtype(generator)
    if isinstance(distance, torch.nn.Module):
        distance.to(device)

    # Every random number is drawn here, per sample, so batching cannot change them.
    rng = torch.Generator().manual_seed(seed)
    if latents is None:
        start = torch.randn(num_samples, generator.z_dim, generator=rng)
        end = torch.randn(num_samples, generator.z_dim, generator=rng)
        latent_space = "z"
    else:
        start, end = _check_latents(generator, latents, space, num_samples)
        latent_space = space
    positions = torch.rand(num_samples, generator=rng)
    if sampling == "end":
        positions = torch.zeros_like(positions)
    if labels is None:
        labels = draw_labels(generator, num_samples, rng)
    else:
        labels = _check_labels(generator, labels, num_samples)

    grad_context = torch.enable_grad() if requires_grad else torch.no_grad()
    batches = []
    with grad_context, seeded_global_rng(seed, device):
        for part in batch_slices(num_samples, batch_size):
            batch_labels = labels[part].to(device=device, dtype=dtype) if labels is not None else None
            images = _path_images(
                generator,
                start[part].to(device=device, dtype=dtype),
                end[part].to(device=device, dtype=dtype),
                positions[part].to(device=device, dtype=dtype),
                epsilon,
                space,
                latent_space,
                batch_labels,
                truncation_psi,
                noise_mode,
            )
            images_t, images_next = images.chunk(2)
            batches.append(distance(images_t, images_next).double() / (epsilon**2))

        distances = torch.cat(batches)
        kept, lower_bound, upper_bound = _percentile_mask(distances.detach(), lower_percentile, upper_percentile)
        value = distances[kept].mean()

    settings = {
        "space": space,
        "sampling": sampling,
        "epsilon": epsilon,
        "distance": getattr(distance, "name", type(distance).__name__),
        "seed": seed,
        "batch_size": batch_size,
        "lower_percentile": lower_percentile,
        "upper_percentile": upper_percentile,
        "truncation_psi": truncation_psi,
        "noise_mode": noise_mode,
    }
    return PerceptualPathLengthResult(
        value=value if requires_grad else value.detach(),
        distances=distances if requires_grad else distances.detach(),
        kept=kept,
        lower_bound=lower_bound,
        upper_bound=upper_bound,
        settings=settings,
    )


def _path_images(
    generator: GeneratorLike,
    start: Tensor,
    end: Tensor,
    positions: Tensor,
    epsilon: float,
    space: str,
    latent_space: str,
    labels: Tensor | None,
    truncation_psi: float,
    noise_mode: str | None,
) -> Tensor:
    # Returns the images at t and at t + epsilon stacked along the batch, [2B, C, H, W].
    both_labels = torch.cat([labels, labels]) if labels is not None else None

    if space == "z":
        path_z = torch.cat([slerp(start, end, positions), slerp(start, end, positions + epsilon)])
        ws = run_mapping(generator, path_z, both_labels, truncation_psi)
    else:
        if latent_space == "z":
            mapped = run_mapping(generator, torch.cat([start, end]), both_labels, truncation_psi)
            start, end = mapped.chunk(2)
        else:
            start, end = _broadcast_ws(generator, start), _broadcast_ws(generator, end)
        ws = torch.cat([lerp(start, end, positions), lerp(start, end, positions + epsilon)])

    return run_synthesis(generator, ws, noise_mode)


def _broadcast_ws(generator: GeneratorLike, ws: Tensor) -> Tensor:
    # A single w [B, D] is repeated to W+ [B, num_ws, D] when the synthesis network takes W+.
    if ws.ndim == 2 and generator.num_ws is not None:
        return ws.unsqueeze(1).repeat(1, generator.num_ws, 1)
    return ws


def _check_settings(
    space: str,
    sampling: str,
    epsilon: float,
    lower_percentile: float | None,
    upper_percentile: float | None,
) -> None:
    if space not in SPACES:
        raise ValueError(f"space must be 'z' (slerp before the mapping network) or 'w' (lerp after it), got {space!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be 'end' (t = 0) or 'full' (t ~ U(0, 1)), got {sampling!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be a number in (0, 1) (the usual value is 1e-4), got {epsilon!r}")
    for name, percent in (("lower_percentile", lower_percentile), ("upper_percentile", upper_percentile)):
        if percent is not None and not 0 <= percent <= 100:
            raise ValueError(f"{name} must be in [0, 100] or None, got {percent!r}")
    if lower_percentile is not None and upper_percentile is not None and lower_percentile >= upper_percentile:
        raise ValueError(
            f"lower_percentile must be below upper_percentile, got {lower_percentile} and {upper_percentile}"
        )


def _check_latents(
    generator: GeneratorLike, latents: tuple[Tensor, Tensor], space: str, num_samples: int
) -> tuple[Tensor, Tensor]:
    if not isinstance(latents, (tuple, list)) or len(latents) != 2:
        raise ValueError("latents must be a pair (start, end) of tensors")
    start, end = (torch.as_tensor(value).detach().cpu() for value in latents)
    if start.shape != end.shape:
        raise ValueError(f"the start and end latents must have the same shape, got {list(start.shape)} and {list(end.shape)}")
    if start.shape[0] != num_samples:
        raise ValueError(f"latents hold {start.shape[0]} samples but num_samples is {num_samples}; pass the same count")

    z_shape = [num_samples, generator.z_dim]
    w_shapes = [[num_samples, generator.w_dim]]
    if generator.num_ws is not None:
        w_shapes.append([num_samples, generator.num_ws, generator.w_dim])
    shape = list(start.shape)

    if space == "z" and shape != z_shape:
        hint = " They match the W latents of this generator; pass space='w'." if shape in w_shapes else ""
        raise ValueError(f"latents for space='z' must have shape {z_shape} (z_dim={generator.z_dim}), got {shape}.{hint}")
    if space == "w" and shape not in w_shapes:
        hint = " They match the Z latents of this generator; pass space='z'." if shape == z_shape else ""
        expected = " or ".join(str(item) for item in w_shapes)
        raise ValueError(f"latents for space='w' must have shape {expected} (w_dim={generator.w_dim}), got {shape}.{hint}")
    return start, end


def _check_labels(generator: GeneratorLike, labels: Tensor, num_samples: int) -> Tensor:
    c_dim = int(getattr(generator, "c_dim", 0) or 0)
    labels = torch.as_tensor(labels).detach().cpu()
    if c_dim == 0:
        raise ValueError("labels were given but the generator is unconditional (c_dim is 0); pass labels=None")
    if list(labels.shape) != [num_samples, c_dim]:
        raise ValueError(f"labels must have shape [{num_samples}, {c_dim}] (one-hot or float), got {list(labels.shape)}")
    return labels.float()


def _percentile_mask(
    distances: Tensor, lower_percentile: float | None, upper_percentile: float | None
) -> tuple[Tensor, float | None, float | None]:
    values = distances.cpu().numpy()
    if not np.isfinite(values).all():
        raise ValueError(
            f"{int((~np.isfinite(values)).sum())} of {values.size} path distances are NaN or inf; "
            "check the generator and the distance for non-finite outputs"
        )

    kept = np.ones(values.shape, dtype=bool)
    lower_bound = upper_bound = None
    if lower_percentile is not None:
        lower_bound = float(np.percentile(values, lower_percentile, method="lower"))
        kept &= values >= lower_bound
    if upper_percentile is not None:
        upper_bound = float(np.percentile(values, upper_percentile, method="higher"))
        kept &= values <= upper_bound
    return torch.from_numpy(kept).to(distances.device), lower_bound, upper_bound
