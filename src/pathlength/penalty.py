"""Path length regularization: the per-sample path lengths ||J_w^T y|| and the stateful penalty.

The penalty is E_{w, y}[(||J_w^T y||_2 - a)^2] from StyleGAN2 (Karras et al., "Analyzing and Improving
the Image Quality of StyleGAN", CVPR 2020), where a is an exponential moving average of the lengths.
`path_lengths` is the pure computation; `PathLengthPenalty` keeps the average as a buffer, applies
the weight and the lazy-regularization interval, and guards against non-finite values.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from pathlength import _autograd_checks, distributed
from pathlength._autograd_checks import DoubleBackwardError

__all__ = [
    "DoubleBackwardError",
    "NonFinitePathLengthError",
    "PathLengthPenalty",
    "PathLengthResult",
    "lazy_adam_settings",
    "path_lengths",
]

logger = logging.getLogger(__name__)

NonFinitePolicy = Literal["raise", "skip"]


class NonFinitePathLengthError(FloatingPointError):
    """Raised when a regularization step meets a NaN or infinite image, gradient or length."""


@dataclass(frozen=True)
class PathLengthResult:
    """Outcome of one path length regularization step.

    Attributes:
        loss: the term to backward, ``weight * interval * penalty`` (already scaled: do not multiply
            by the interval again). A zero tensor when the step was skipped.
        penalty: the unscaled penalty ``mean_b((length_b - pl_mean)^2)``, detached.
        lengths: the detached path lengths, shape [B], float32 (float64 for a float64 generator).
        pl_mean: the detached float32 moving average after this step.
        skipped: True when the step was skipped; pl_mean is then unchanged.
        reason: why the step was skipped, or None.
    """

    loss: Tensor
    penalty: Tensor
    lengths: Tensor
    pl_mean: Tensor
    skipped: bool = False
    reason: str | None = None


def path_lengths(
    images: Tensor,
    ws: Tensor,
    noise: Tensor | None = None,
    *,
    create_graph: bool = True,
    grad_scale: float | Tensor | None = None,
) -> Tensor:
    r"""Compute the path length ||J_w^T y||_2 of each sample.

    With images x = g(w) of shape [B, C, H, W] and y ~ N(0, I) of the same shape divided by
    sqrt(H * W), the gradient ``grad = d/dw sum(x * y)`` equals J_w^T y (one backward pass). The
    length of sample b is

    * plain W latents ``ws`` [B, D]: ``sqrt(sum_d grad[b, d]^2)``;
    * W+ latents ``ws`` [B, L, D]: ``sqrt(mean_l sum_d grad[b, l, d]^2)``.

    Then ``E[length^2] = ||J||_F^2 / (H * W * L)`` (L = 1 for plain W). The noise is scaled by the
    pixels of one channel, not C * H * W, and the layers are averaged, as in the official StyleGAN2
    code. The square root is a safe one: exact for positive squares, and 0 with a zero gradient at 0,
    where a plain ``sqrt`` has an infinite derivative that turns into NaN parameter gradients. A NaN
    square stays NaN, so a non-finite gradient is never hidden as a zero length.

    The product ``x * y`` and the reduction are done in float32 when the images or the gradient are
    half precision (float16, bfloat16), so the lengths are float32; a float64 generator keeps
    float64 throughout, so its lengths are exact to float64 rounding.

    Args:
        images: generator output [B, C, H, W] that was computed from ``ws`` with autograd enabled.
        ws: the latents that produced ``images``, [B, D] or [B, L, D].
        noise: optional y, already scaled, with the shape of ``images``; drawn when None.
        create_graph: keep the graph of the gradient so the lengths can be differentiated with
            respect to the generator's parameters. The penalty needs it, and measuring does not.
        grad_scale: optional loss scale (a GradScaler's current scale) applied to the inner
            gradient and removed afterwards, so fp16 gradients neither underflow nor overflow.

    Returns:
        Tensor [B] of lengths, float32 (float64 for float64 images and ws), differentiable when
        ``create_graph`` is True.

    Raises:
        RuntimeError: when autograd is disabled or ``images`` does not require grad.
        ValueError: when ``ws`` has the wrong rank or batch size, or did not produce ``images``.
        DoubleBackwardError: when the generator's backward cannot be differentiated.

    Example:
        >>> A = torch.randn(16, 8, requires_grad=True)
        >>> ws = torch.randn(4, 8, requires_grad=True)
        >>> images = (ws @ A.T).reshape(4, 1, 4, 4)
        >>> path_lengths(images, ws).shape
        torch.Size([4])
    """
    _check_inputs(images, ws, noise)

    # Half-precision images are promoted to float32 so the inner gradient starts from a float32
    # cotangent under autocast; float64 images stay float64.
    compute_dtype = torch.promote_types(images.dtype, torch.float32)

    if noise is None:
        height, width = images.shape[-2:]
        noise = torch.randn(images.shape, device=images.device, dtype=compute_dtype)
        noise = noise / math.sqrt(height * width)

    inner = (images.to(compute_dtype) * noise.to(compute_dtype)).sum()
    if grad_scale is not None:
        inner = inner * grad_scale

    try:
        (grad,) = torch.autograd.grad(
            outputs=inner, inputs=ws, create_graph=create_graph, allow_unused=True
        )
    except RuntimeError as error:
        if "a second time" in str(error):
            raise RuntimeError(_autograd_checks.explain(error)) from error
        raise DoubleBackwardError(
            f"the backward pass from the images to ws failed: {_autograd_checks.explain(error)} "
            "With create_graph=True every op of the generator must support double backward."
        ) from error

    if grad is None:
        raise ValueError(
            "ws did not produce images: the gradient of the images with respect to ws is None. Pass "
            "the very tensor the generator consumed (not a copy, a detached tensor or the latents of "
            "another forward pass); for leaf latents call ws.requires_grad_() before the forward."
        )

    if grad_scale is not None:
        grad = grad / grad_scale

    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    squares = grad.square().sum(dim=-1)
    if squares.ndim == 2:
        squares = squares.mean(dim=1)

    return _safe_sqrt(squares)


def _safe_sqrt(squares: Tensor) -> Tensor:
    # The inner where keeps sqrt away from 0, so its infinite derivative never enters the graph;
    # the outer one returns an exact 0 there with a zero gradient. Testing `== 0` rather than `> 0`
    # keeps a NaN square NaN, so the non-finite guard detects it.
    zero = squares == 0
    safe = torch.where(zero, torch.ones_like(squares), squares)
    return torch.where(zero, torch.zeros_like(squares), safe.sqrt())


def _check_inputs(images: Tensor, ws: Tensor, noise: Tensor | None) -> None:
    if not torch.is_grad_enabled():
        raise RuntimeError(
            "path length regularization needs autograd, but gradients are disabled (torch.no_grad or "
            "inference_mode). Run the generator and the penalty with gradients enabled."
        )
    if images.ndim != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got shape {tuple(images.shape)}")
    if ws.ndim not in (2, 3):
        raise ValueError(
            f"ws must have shape [B, D] (W) or [B, L, D] (W+), got shape {tuple(ws.shape)}"
        )
    if ws.shape[0] != images.shape[0]:
        raise ValueError(
            f"ws and images must have the same batch size, got {ws.shape[0]} latents and "
            f"{images.shape[0]} images; cut per-sample inputs to the shrunk batch together"
        )
    if not images.requires_grad:
        raise RuntimeError(
            "images do not require grad, so path length regularization cannot differentiate them; "
            "run the generator with autograd enabled and with ws in its graph"
        )
    if not ws.requires_grad:
        raise ValueError(
            "ws does not require grad, so it cannot have produced images through autograd. Pass the "
            "latents the generator consumed; for leaf latents call ws.requires_grad_() before the forward."
        )
    if noise is not None and noise.shape != images.shape:
        raise ValueError(
            f"noise must have the shape of images {tuple(images.shape)}, got {tuple(noise.shape)}"
        )


def lazy_adam_settings(
    lr: float, betas: tuple[float, float], interval: int | None
) -> tuple[float, tuple[float, float]]:
    """Return Adam's learning rate and betas for a loss that runs a regularizer every `interval` steps.

    Lazy regularization adds one regularization step after every `interval` main steps, so the
    optimizer takes interval + 1 steps where it took interval. With c = interval / (interval + 1),
    the learning rate becomes lr * c and the betas beta ** c, which keeps the per-main-step
    behaviour of Adam unchanged. An interval of None or 0 means no lazy regularizer.

    Example:
        >>> lazy_adam_settings(0.002, (0.0, 0.99), 4)
        (0.0016, (0.0, 0.992...))
    """
    if interval is None or interval == 0:
        return lr, betas
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ValueError(f"interval must be a non-negative integer or None, got {interval!r}")

    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


def _check_positive_int(name: str, value: Any) -> int:
    is_integral_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
    if isinstance(value, bool) or not (isinstance(value, int) or is_integral_float) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _eager_module(generator: Callable[..., Tensor]) -> Callable[..., Tensor]:
    # torch.compile's module wrapper keeps the eager module, which shares its parameters, as
    # _orig_mod. Its compiled backward cannot be differentiated again, so the penalty runs eagerly.
    original = getattr(generator, "_orig_mod", None)
    if isinstance(generator, nn.Module) and isinstance(original, nn.Module):
        logger.info("Running the eager module behind torch.compile for path length regularization")
        return original
    return generator


class PathLengthPenalty(nn.Module):
    r"""Path length regularizer with its moving average, lazy interval and batch shrink.

    On each call with images x = g(ws):

    .. math::

        \ell_b = \lVert J_{w_b}^T y_b \rVert_2, \quad
        a \leftarrow a + \beta (\operatorname{mean}_b \ell_b - a), \quad
        \text{loss} = \lambda \cdot k \cdot \operatorname{mean}_b (\ell_b - a)^2

    with decay :math:`\beta`, weight :math:`\lambda` and interval :math:`k`. The average ``pl_mean``
    starts at 0 and is updated before the penalty is formed, and the penalty is differentiated
    through the updated average, as in the official StyleGAN2 code. Multiplying by the interval keeps
    the average strength of a penalty that runs only every ``interval`` generator steps.

    ``pl_mean`` (float32) and ``step`` (int64, generator steps seen by :meth:`run`) are buffers, so
    ``state_dict``, ``load_state_dict`` and ``.to()`` carry them. A non-finite image, gradient or
    length never reaches ``pl_mean``: by default the call raises :class:`NonFinitePathLengthError`,
    and with ``on_nonfinite="skip"`` it returns a skipped result with ``pl_mean`` bit-identical.

    Args:
        weight: penalty weight (2 in StyleGAN2). 0 turns the regularizer into a no-op.
        decay: moving-average rate of ``pl_mean`` (0.01).
        interval: run the penalty every ``interval`` generator steps and scale it by ``interval``.
        batch_shrink: the regularization batch is ``max(1, batch // batch_shrink)`` samples.
        on_nonfinite: ``"raise"`` (default) or ``"skip"``.
        sync: a callable that averages a float32 tensor over data-parallel processes, used for the
            batch mean of the lengths before it updates ``pl_mean``. None keeps a per-process average.
            ``pathlength.distributed`` provides one whose gradient is correct.
        check_double_backward: on the first call, inspect the autograd graph for ops whose backward
            cannot be differentiated, and raise :class:`DoubleBackwardError` naming them.

    Example:
        >>> plr = PathLengthPenalty(weight=2.0, interval=4)
        >>> A = torch.randn(16, 8, requires_grad=True)
        >>> ws = torch.randn(4, 8, requires_grad=True)
        >>> result = plr((ws @ A.T).reshape(4, 1, 4, 4), ws)
        >>> result.loss.backward()
        >>> plr.state_dict()["pl_mean"].dtype
        torch.float32
    """

    pl_mean: Tensor
    step: Tensor

    def __init__(
        self,
        weight: float = 2.0,
        decay: float = 0.01,
        interval: int = 4,
        batch_shrink: int = 2,
        *,
        on_nonfinite: NonFinitePolicy = "raise",
        sync: Callable[[Tensor], Tensor] | None = None,
        check_double_backward: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")

        self.weight = float(weight)
        self.decay = float(decay)
        self.interval = _check_positive_int("interval", interval)
        self.batch_shrink = _check_positive_int("batch_shrink", batch_shrink)
        self.on_nonfinite = on_nonfinite
        self.sync = sync
        self.check_double_backward = check_double_backward
        self._graph_checked = False
        self._warned_fp16 = False

        self.register_buffer("pl_mean", torch.zeros((), dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def enabled(self) -> bool:
        """Whether the regularizer does anything (its weight is not 0)."""
        return self.weight != 0

    def batch_size(self, batch: int) -> int:
        """Return the regularization batch for a main batch of `batch` samples (never below 1)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        return max(1, batch // self.batch_shrink)

    def count_step(self, step: int | None = None) -> int:
        """Return the generator step of this call: ``step`` when given, else the ``step`` buffer, which then advances by one."""
        if step is not None:
            return step
        current = int(self.step)
        self.step += 1
        return current

    def is_due(self, step: int) -> bool:
        """Return whether the penalty runs at generator step `step` (0-based), given the interval."""
        return self.enabled and step % self.interval == 0

    def forward(
        self,
        images: Tensor,
        ws: Tensor,
        noise: Tensor | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        step: int | None = None,
    ) -> PathLengthResult:
        """Update ``pl_mean`` from ``images = g(ws)`` and return the scaled penalty.

        The caller decides whether this generator step is due (:meth:`is_due`) and has already cut
        the batch (:meth:`batch_size`); :meth:`run` does both and calls the generator itself.

        Args:
            images: generator output [B, C, H, W] computed from ``ws`` with autograd enabled.
            ws: the latents that produced the images, [B, D] or [B, L, D].
            noise: optional y (already divided by sqrt(H * W)); drawn when None.
            scaler: an enabled ``torch.amp.GradScaler`` for fp16: its scale is applied to the inner
                gradient and removed, and an overflow skips the step.
            step: the caller's step number, used only in messages.
        """
        # run() always passes its step. The step buffer counts run() calls only, so a direct call
        # without `step` has no number to report.
        label = f"step {step}" if step is not None else "step ? (pass step= to number it)"
        device = images.device

        if not self.enabled:
            return self._skipped_result(device, "weight is 0")

        self._warn_fp16_without_scaler(images, scaler)
        grad_scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

        lengths = path_lengths(images, ws, noise, grad_scale=grad_scale)

        if self.check_double_backward and not self._graph_checked:
            _autograd_checks.check_graph(lengths, images, ws)
            self._graph_checked = True

        problem = self._find_nonfinite(images, lengths)
        if problem is not None:
            if scaler is not None and grad_scale is not None:
                return self._overflow_result(images, lengths, f"{label}: {problem} (fp16 overflow)")
            if self.on_nonfinite == "skip":
                logger.warning("Skipped path length %s: %s; pl_mean stays %.6g", label, problem, self.pl_mean.item())
                return self._skipped_result(device, f"{label}: {problem}", lengths)
            raise NonFinitePathLengthError(
                f"path length regularization {label}: {problem}; pl_mean was left at "
                f"{self.pl_mean.item():.6g}. Check the generator for NaN/inf (learning rate, fp16 "
                "without a GradScaler), or pass on_nonfinite='skip' to skip such steps."
            )

        batch_mean = lengths.mean()
        if self.sync is not None:
            batch_mean = self.sync(batch_mean)

        # The average is updated before the penalty, and the penalty uses the updated value with its
        # gradient, so a step pulls the lengths towards the average they are moving.
        pl_mean = self.pl_mean + self.decay * (batch_mean - self.pl_mean)
        with torch.no_grad():
            self.pl_mean.copy_(pl_mean.detach())

        penalty = (lengths - pl_mean).square().mean()
        loss = penalty * (self.weight * self.interval)

        # A zero-valued term through the images gives every generator parameter a gradient, so
        # DistributedDataParallel's all-reduce fires even for parameters (such as an output bias)
        # that the double backward does not reach.
        loss = loss + 0.0 * images[:, :1, :1, :1].float().sum()

        return PathLengthResult(
            loss=loss,
            penalty=penalty.detach(),
            lengths=lengths.detach(),
            pl_mean=self.pl_mean.detach().clone(),
        )

    def run(
        self,
        generator: Callable[..., Tensor],
        ws: Tensor,
        *per_sample: Tensor | None,
        step: int | None = None,
        noise: Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
        **generator_kwargs: Any,
    ) -> PathLengthResult | None:
        """Run the generator on a shrunk batch and return the penalty, on due steps only.

        When ``step`` is None the module counts calls in its ``step`` buffer, so calling ``run``
        once per generator step gives the lazy schedule (steps 0, interval, 2 * interval, ...).
        On other steps, and when the weight is 0, it returns None without calling the generator.

        Args:
            generator: a callable ``generator(ws, *per_sample, **generator_kwargs) -> images``,
                such as a synthesis network.
            ws: latents for the main batch, [B, D] or [B, L, D]; the first ``batch_size(B)`` are
                used. Latents computed by a mapping network keep its gradient; leaf latents get
                ``requires_grad`` on a detached copy.
            per_sample: further per-sample inputs (labels, noise), cut to the same batch; None
                entries pass through.
            step: the caller's generator step; None uses and advances the internal counter.
            noise, scaler: as in :meth:`forward`.
        """
        current = self.count_step(step)
        if not self.is_due(current):
            return None

        generator = _eager_module(generator)
        batch = self.batch_size(ws.shape[0])
        ws_full = ws
        ws = ws[:batch]
        if not ws.requires_grad:
            ws = ws.detach().requires_grad_(True)
        per_sample = tuple(None if value is None else value[:batch] for value in per_sample)
        # Keyword tensors with the main batch's leading size are per-sample inputs too (labels as c=).
        generator_kwargs = {
            name: value[:batch] if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == len(ws_full) else value
            for name, value in generator_kwargs.items()
        }
        if noise is not None:
            noise = noise[:batch]

        with _autograd_checks.record_module_calls(generator, enabled=not self._graph_checked) as records:
            images = generator(ws, *per_sample, **generator_kwargs)
            try:
                return self(images, ws, noise, scaler=scaler, step=current)
            except DoubleBackwardError as error:
                raise _autograd_checks.with_module_name(error, records) from error

    def _find_nonfinite(self, images: Tensor, lengths: Tensor) -> str | None:
        # One device synchronisation for all three checks.
        flags = torch.stack(
            [
                torch.isfinite(images.detach()).all().logical_not(),
                torch.isfinite(lengths.detach()).logical_not().sum(),
                torch.isfinite(self.pl_mean).logical_not(),
            ]
        )
        if self.sync is not None:
            # With a synced average every process must skip or raise together, or the next
            # collective would wait for a process that left the step.
            flags = distributed.any_process(flags)
        flags = flags.tolist()
        if flags[0]:
            return "the images contain NaN or inf"
        if flags[1]:
            return f"{int(flags[1])} of {lengths.numel()} path lengths are NaN or inf (the gradient J^T y is non-finite)"
        if flags[2]:
            return f"pl_mean is {self.pl_mean.item()} (a loaded state was non-finite); reset it with plr.pl_mean.zero_()"
        return None

    def _overflow_result(self, images: Tensor, lengths: Tensor, reason: str) -> PathLengthResult:
        # The loss keeps its non-finite value, so its parameter gradients are non-finite too:
        # GradScaler.step then skips the optimizer step and GradScaler.update lowers the scale, as
        # for any overflowed float16 step. pl_mean is not updated.
        penalty = (lengths - self.pl_mean).square().mean()
        loss = penalty * (self.weight * self.interval) + 0.0 * images[:, :1, :1, :1].float().sum()
        return PathLengthResult(
            loss=loss,
            penalty=penalty.detach(),
            lengths=lengths.detach(),
            pl_mean=self.pl_mean.detach().clone(),
            skipped=True,
            reason=reason,
        )

    def _skipped_result(self, device: torch.device, reason: str, lengths: Tensor | None = None) -> PathLengthResult:
        zero = torch.zeros((), device=device, dtype=torch.float32)
        return PathLengthResult(
            loss=zero.clone().requires_grad_(True),
            penalty=zero,
            lengths=lengths.detach() if lengths is not None else zero.new_empty(0),
            pl_mean=self.pl_mean.detach().clone(),
            skipped=True,
            reason=reason,
        )

    def _warn_fp16_without_scaler(self, images: Tensor, scaler: torch.amp.GradScaler | None) -> None:
        if self._warned_fp16 or scaler is not None:
            return
        device_type = images.device.type
        autocast_fp16 = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
        if images.dtype == torch.float16 or autocast_fp16:
            warnings.warn(
                "path length regularization under float16 without a GradScaler: the inner gradient "
                "J^T y can underflow to 0 or overflow. Pass scaler=torch.amp.GradScaler() to the call.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned_fp16 = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        absent = [name for name in ("pl_mean", "step") if prefix + name not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for name in absent:
            missing_keys.remove(prefix + name)
            warnings.warn(
                f"state dict has no '{prefix}{name}'; it keeps its current value "
                f"{getattr(self, name).item()} (0 for a new module, so pl_mean restarts from 0)",
                UserWarning,
                stacklevel=3,
            )

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Module.double(), .half() and .to(dtype) cast every floating-point buffer. pl_mean keeps its
        # float32 value and takes only the new device, so a half-precision cast cannot round it.
        pl_mean = self.pl_mean
        super()._apply(fn, recurse)
        if self.pl_mean.dtype != torch.float32:
            self.pl_mean = pl_mean.to(self.pl_mean.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, decay={self.decay}, interval={self.interval}, "
            f"batch_shrink={self.batch_shrink}, on_nonfinite={self.on_nonfinite!r}, "
            f"sync={'on' if self.sync is not None else 'off'}"
        )
