"""The four loss phases of StyleGAN2 training: the generator's non-saturating logistic loss, its path
length regularization, the discriminator's logistic loss and lazy R1 on real images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pathlength.compiled import CompiledPathLengthPenalty
from pathlength.models import Discriminator, Generator, shifted_sum_forms
from pathlength.penalty import PathLengthPenalty
from pathlength.training.latents import LatentSampler, map_with_style_mixing

Stats = dict[str, Tensor]


def generator_logistic_loss(fake_logits: Tensor) -> Tensor:
    """Return the non-saturating generator loss mean(softplus(-D(G(z)))) = -mean(log sigmoid(D(G(z))))."""
    return F.softplus(-fake_logits).mean()


def discriminator_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Return the discriminator loss mean(softplus(D(G(z)))) + mean(softplus(-D(x))).

    This is -log(1 - sigmoid(D(G(z)))) - log(sigmoid(D(x))), averaged over each batch.
    """
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(
    discriminator: Discriminator, real: Tensor, c: Tensor | None, grad_scale: float | Tensor | None = None
) -> Tensor:
    """Return ||grad_x D(x)||^2 per real image, float32 [B], differentiable w.r.t. the discriminator.

    The gradient is taken with ``create_graph=True`` so that the penalty can train the
    discriminator. ``real`` is detached first, so the caller's tensor is left untouched. With
    ``grad_scale`` (a GradScaler's scale under float16) the inner gradient is taken of the scaled
    logits and divided by the scale, so it does not underflow in float16.

    A zero-valued term ``0 * D(x)`` is added to each sample's penalty. It changes no value and no
    gradient, but it gives every discriminator parameter a gradient, including the output bias
    that grad_x D(x) does not depend on. DistributedDataParallel waits for a gradient of every
    parameter, and without this term its next forward fails.

    Example:
        >>> discriminator = Discriminator(img_resolution=8, channel_base=64, channel_max=16)
        >>> r1_penalty(discriminator, torch.randn(4, 1, 8, 8), None).shape
        torch.Size([4])
    """
    real = real.detach().requires_grad_(True)
    logits = discriminator(real, c).float()

    outputs = logits.sum()
    if grad_scale is not None:
        outputs = outputs * grad_scale
    (grad,) = torch.autograd.grad(outputs=outputs, inputs=real, create_graph=True)
    grad = grad.float()
    if grad_scale is not None:
        grad = grad / grad_scale

    squares = grad.square().sum(dim=[1, 2, 3])
    return squares + 0.0 * logits.reshape(len(squares), -1).sum(dim=1)


@dataclass
class PhaseResult:
    """The loss to backward for one phase and its detached statistics under their metric names."""

    loss: Tensor
    stats: Stats


class StyleGAN2Loss:
    """Loss phases of StyleGAN2 training with lazy path length regularization and lazy R1.

    Each method builds one phase's loss; the training loop backwards it and steps the phase's
    optimizer. The regularizer losses are already multiplied by their intervals, so their average
    strength matches a regularizer that runs every step. Metric names:

    * ``Loss/G/main``: non-saturating logistic loss of the generator.
    * ``Loss/G/pl_penalty``: ``pl_weight * mean_b (length_b - pl_mean)^2`` (before the interval
      scaling), plus ``pl_lengths`` (the detached lengths [B]).
    * ``pl_skipped``: 1 for a path length step that was skipped (a float16 overflow, with pl_mean
      left unchanged), else 0; averaged over a metric window it is the fraction skipped.
    * ``Loss/D/main``: logistic loss of the discriminator on real and generated images.
    * ``Loss/D/r1``: ``r1_gamma / 2 * mean_b ||grad_x D(x_b)||^2`` (before the interval scaling).

    Args:
        generator, discriminator: the networks being trained. Under DistributedDataParallel these
            are the wrappers (the generator as an object with ``mapping``, ``synthesis`` and
            ``num_ws``), so every phase's backward all-reduces the gradients.
        sampler: source of latents, labels and style-mixing cutoffs.
        path_length_penalty: the regularizer and its ``pl_mean`` state, or None to turn path
            length regularization off (then ``generator_path_length`` returns None).
        r1_gamma: R1 weight.
        r1_interval: discriminator steps between R1 steps; the R1 loss is multiplied by it.
        style_mixing_prob: probability of style mixing in each generator batch.
        compiled_penalty: a `CompiledPathLengthPenalty` of ``path_length_penalty`` built with
            ``accumulate=False``; when given, the path length phase runs it instead of the eager
            module (except under a float16 GradScaler, which it does not support).
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        sampler: LatentSampler,
        path_length_penalty: PathLengthPenalty | None,
        r1_gamma: float,
        r1_interval: int,
        style_mixing_prob: float,
        compiled_penalty: CompiledPathLengthPenalty | None = None,
    ) -> None:
        if compiled_penalty is not None and compiled_penalty.accumulate:
            raise ValueError(
                "compiled_penalty must be built with accumulate=False, so that the training loop's backward adds its gradients"
            )
        self.generator = generator
        self.discriminator = discriminator
        self.sampler = sampler
        self.path_length_penalty = path_length_penalty
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval
        self.style_mixing_prob = style_mixing_prob
        self.compiled_penalty = compiled_penalty

    def _generate(self, batch_size: int, update_w_avg: bool = False) -> tuple[Tensor, Tensor | None]:
        z, c = self.sampler.sample(batch_size)
        ws = map_with_style_mixing(self.generator, self.sampler, z, c, self.style_mixing_prob, update_w_avg)
        return self.generator.synthesis(ws), c

    def generator_main(self, batch_size: int) -> PhaseResult:
        """Generator main phase: make D call fresh generated images real.

        The mapping network updates its tracked ``w_avg`` here, once per step, for truncation.
        """
        fake, c = self._generate(batch_size, update_w_avg=True)
        fake_logits = self.discriminator(fake, c)
        loss = generator_logistic_loss(fake_logits)
        return PhaseResult(loss, {"Loss/G/main": loss.detach()})

    def generator_path_length(
        self, batch_size: int, scaler: torch.amp.GradScaler | None = None
    ) -> PhaseResult | None:
        """Generator regularization phase: path length penalty on a shrunk batch, every pl_interval steps.

        Call it once per generator step. The calls are counted in the penalty's ``step`` buffer.
        On due steps the phase samples latents, and ``run`` shrinks the batch and runs the
        synthesis network. On other steps, and when path length regularization is off, this
        returns None without sampling. Under float16 pass the generator's ``scaler``: the penalty
        scales its inner gradient by it, and a step that overflows is skipped and reported as
        ``pl_skipped``.
        """
        plr = self.path_length_penalty
        if plr is None:
            return None

        step = plr.count_step()
        if not plr.is_due(step):
            return None

        z, c = self.sampler.sample(batch_size)
        ws = map_with_style_mixing(self.generator, self.sampler, z, c, self.style_mixing_prob)
        if self.compiled_penalty is not None and scaler is None:
            result = self.compiled_penalty.run(ws, step=step)
        else:
            # The shifted-sum forms of the reference networks' filters make the double backward
            # faster on a CPU and change values only by float rounding (see `shifted_sum_forms`).
            scaler_option = {} if scaler is None else {"scaler": scaler}
            with shifted_sum_forms():
                result = plr.run(self.generator.synthesis, ws, step=step, **scaler_option)
        if result is None:
            return None

        stats = {"pl_skipped": torch.tensor(float(result.skipped))}
        if not result.skipped:
            stats["Loss/G/pl_penalty"] = result.penalty * plr.weight
            stats["pl_lengths"] = result.lengths
        return PhaseResult(result.loss, stats)

    def discriminator_main(self, real: Tensor, real_c: Tensor | None, batch_size: int) -> PhaseResult:
        """Discriminator main phase: logistic loss on real images and on generated ones (no G gradient)."""
        with torch.no_grad():
            fake, fake_c = self._generate(batch_size)

        fake_logits = self.discriminator(fake, fake_c)
        real_logits = self.discriminator(real, real_c)
        loss = discriminator_logistic_loss(real_logits, fake_logits)
        return PhaseResult(loss, {"Loss/D/main": loss.detach()})

    def discriminator_r1(
        self, real: Tensor, real_c: Tensor | None, scaler: torch.amp.GradScaler | None = None
    ) -> PhaseResult:
        """Discriminator regularization phase: lazy R1, ``r1_interval * r1_gamma / 2 * mean ||grad_x D(x)||^2``.

        Under float16 pass the discriminator's ``scaler``, whose scale protects the inner gradient.
        """
        grad_scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else None
        penalty = r1_penalty(self.discriminator, real, real_c, grad_scale).mean()
        weighted_penalty = penalty * (self.r1_gamma / 2)
        loss = weighted_penalty * self.r1_interval
        return PhaseResult(loss, {"Loss/D/r1": weighted_penalty.detach()})
