"""A `torch.compile`-friendly form of the path length regularization step.

`torch.compile` cannot differentiate a compiled generator twice, so the eager penalty (which calls
``autograd.grad(create_graph=True)``) cannot be compiled. Here the whole step (the generator, J^T y,
the lengths, the ``pl_mean`` update and the penalty) is one function of the parameters written with
`torch.func`, and its parameter gradient is compiled as a single graph.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vjp

from pathlength.penalty import (
    NonFinitePathLengthError,
    PathLengthPenalty,
    PathLengthResult,
    _safe_sqrt,
)

__all__ = ["CompiledPathLengthPenalty"]

logger = logging.getLogger(__name__)


class CompiledPathLengthPenalty:
    r"""Run a :class:`PathLengthPenalty` step on a synthesis network as one compiled graph.

    A call on latents ``ws`` computes exactly what the eager step does::

        images = synthesis(ws, **synthesis_kwargs)
        result = plr(images, ws, noise)
        result.loss.backward()

    but in `torch.func` form: ``vjp`` of ``functional_call(synthesis, params, (ws,))`` gives
    :math:`g = J_w^T y`, the lengths :math:`\ell_b = \lVert g_b \rVert` (layers averaged for W+),
    :math:`a \leftarrow a + \beta(\operatorname{mean}_b \ell_b - a)` and
    :math:`\text{loss} = \lambda k \operatorname{mean}_b(\ell_b - a)^2` form one function of the
    trainable parameters and ``ws``, and ``torch.func.grad_and_value`` of it is compiled with
    ``torch.compile(backend=backend)``. The call then

    * adds the parameter gradients to ``.grad`` of every trainable synthesis parameter (they equal
      those of the eager ``backward`` to float32 rounding, a relative error of about 1e-6);
    * backpropagates the gradient with respect to ``ws`` into the graph that produced ``ws`` (a
      mapping network) or into ``ws.grad`` for leaf latents that require grad;
    * updates ``plr.pl_mean`` as the eager module does, after the non-finite guard.

    The weight, decay, interval, ``on_nonfinite`` policy and ``pl_mean`` buffer are those of
    ``plr``, read at every call, so the compiled and eager steps can be mixed and ``plr``'s state
    dict stays the one to save. A weight of 0 returns a skipped result without running anything.

    Differences from the eager step:

    * ``result.loss`` is detached, because the gradients are already accumulated: do not call
      ``backward`` on it (with ``accumulate=False`` it can be, see below).
    * Every trainable synthesis parameter gets a gradient, zeros where the penalty does not reach it
      (the eager step gives zeros to every parameter that reaches the images).
    * Random per-layer noise inside the synthesis network (StyleGAN2's ``noise_mode="random"``) is
      drawn by the compiled code from its own random stream, so its values differ from an eager
      call with the same seed. Pass ``synthesis_kwargs={"noise_mode": "const"}`` (or ``"none"``)
      for results that match the eager step. The path length noise y is drawn outside the graph
      with ``torch.randn``, so with the same seed it equals the eager draw.
    * There is no ``scaler`` argument: the fast path is for float32 (or float64) training. Use the
      eager module for float16 with a GradScaler.

    When the step cannot be compiled (dynamo or inductor raise), or ``plr.sync`` is set (the
    differentiable all-reduce is not traced), the object logs one warning with the reason and runs
    the eager step from then on. :attr:`fallback_reason` records why.

    Inductor compiles one graph per input shape. On a 2-core CPU with PyTorch 2.13 the first call
    for the 16x16 to 64x64 reference generators took 30 seconds to 2.5 minutes, and a later process
    that finds the graph in inductor's on-disk cache took 2 to 20 seconds. Later calls with the same
    shapes reuse the compiled code.

    NOTE: every instance and every batch size adds an entry to torch.compile's cache of one
    function. Past ``torch._dynamo.config.recompile_limit`` entries (8 by default) a new shape
    cannot be compiled, and the object falls back to the eager step as for any compile error.

    Args:
        plr: the penalty whose settings and ``pl_mean`` the step uses and updates.
        synthesis: a module called as ``synthesis(ws, **synthesis_kwargs)`` that returns images
            [B, C, H, W]; its trainable parameters receive the gradients.
        backend: the ``torch.compile`` backend: ``"inductor"`` (fast code, slow first call),
            ``"aot_eager"`` (quick to compile, for tests), a backend callable, or ``None`` to run
            the `torch.func` step without compiling (slower than the eager module).
        synthesis_kwargs: extra keyword arguments of every synthesis call, such as
            ``{"noise_mode": "const"}``.
        compile_kwargs: extra keyword arguments of ``torch.compile`` such as ``mode``. The default
            ``dynamic=False`` compiles one graph per input shape: with PyTorch 2.13 the outer
            gradient specializes the batch size anyway, and ``dynamic=True`` fails in the
            convolution double backward (and then falls back to eager).
        accumulate: True adds the gradients to ``.grad`` during the call and returns a detached
            loss. False adds nothing and returns a loss whose ``backward()`` adds exactly those
            gradients (its value is the loss), for training loops that call ``backward``
            themselves, such as ``result.loss.backward(); optimizer.step()``.

    Example:
        >>> from pathlength.models import Generator
        >>> generator = Generator(img_resolution=8, channel_base=64, channel_max=16, z_dim=16, w_dim=16)
        >>> plr = PathLengthPenalty()
        >>> step = CompiledPathLengthPenalty(plr, generator.synthesis, backend=None,
        ...                                  synthesis_kwargs={"noise_mode": "const"})
        >>> result = step(generator.mapping(torch.randn(4, 16)))
        >>> result.lengths.shape, generator.synthesis.blocks[0].const.grad is not None
        (torch.Size([4]), True)
    """

    def __init__(
        self,
        plr: PathLengthPenalty,
        synthesis: nn.Module,
        backend: str | Callable[..., Any] | None = "inductor",
        *,
        synthesis_kwargs: Mapping[str, Any] | None = None,
        compile_kwargs: Mapping[str, Any] | None = None,
        accumulate: bool = True,
    ) -> None:
        if not isinstance(plr, PathLengthPenalty):
            raise TypeError(f"plr must be a PathLengthPenalty, got {type(plr).__name__}")
        if not isinstance(synthesis, nn.Module):
            raise TypeError(f"synthesis must be an nn.Module (its parameters are differentiated), got {type(synthesis).__name__}")
        if backend is not None and not (isinstance(backend, str) or callable(backend)):
            raise TypeError(f"backend must be a torch.compile backend (a name or a callable) or None, got {backend!r}")

        self.plr = plr
        self.synthesis = synthesis
        self.backend = backend
        self.synthesis_kwargs = dict(synthesis_kwargs or {})
        self.compile_kwargs = dict(compile_kwargs or {})
        self.accumulate = accumulate
        self.fallback_reason: str | None = None

        step = self._penalty_gradients
        if backend is None:
            self._step: Callable[..., Any] = step
        else:
            options = {"dynamic": False, **self.compile_kwargs}
            self._step = torch.compile(step, backend=backend, **options)
        self._image_specs: dict[tuple[Any, ...], tuple[torch.Size, torch.dtype]] = {}
        # Latent shapes whose first call, which compiles, has finished. Each gets one log line.
        self._compiled_keys: set[tuple[Any, ...]] = set()

    @property
    def compiled(self) -> bool:
        """Whether calls run the compiled `torch.func` step (False after a fallback to eager)."""
        return self.fallback_reason is None

    def __call__(self, ws: Tensor, noise: Tensor | None = None, *, step: int | None = None) -> PathLengthResult:
        """Run one regularization step on ``ws`` and hand over its gradients as the class describes.

        The caller decides whether the step is due and has cut the batch, as for
        :meth:`PathLengthPenalty.forward`. :meth:`run` does both.

        Args:
            ws: latents [B, D] or [B, L, D] in the synthesis network's dtype.
            noise: optional y with the shape of the images, already divided by sqrt(H * W); drawn
                when None.
            step: the caller's step number, used only in messages.

        Returns:
            A :class:`PathLengthResult`. Its ``loss`` is detached, or with ``accumulate=False`` a
            tensor whose ``backward()`` adds the gradients.

        Raises:
            RuntimeError: when autograd is disabled.
            ValueError: for ``ws`` of the wrong rank or ``noise`` of the wrong shape.
            NonFinitePathLengthError: for a non-finite image, length or ``pl_mean`` when
                ``plr.on_nonfinite`` is "raise".
        """
        plr = self.plr
        if not plr.enabled:
            return plr._skipped_result(ws.device, "weight is 0")
        _check_latents(ws)

        if self.fallback_reason is None and plr.sync is not None:
            self._fall_back("plr.sync is set, and its differentiable all-reduce cannot be traced by torch.compile")
        if self.fallback_reason is not None:
            return self._eager_step(ws, noise, step)

        if noise is None:
            noise = self._draw_noise(ws)
        else:
            shape, _ = self._image_spec(ws)
            if noise.shape != shape:
                raise ValueError(f"noise must have the shape of the images {tuple(shape)}, got {tuple(noise.shape)}")

        key = (tuple(ws.shape), ws.dtype, ws.device)
        started = time.perf_counter()
        try:
            gradients, aux = self._run_compiled(ws, noise)
        except Exception as error:
            # Run the eager step first: an input that breaks both is the caller's error, and the
            # eager step raises it with its own message without disabling the compiled path.
            result = self._eager_step(ws, noise, step)
            logger.debug("The compiled path length step failed", exc_info=error)
            self._fall_back(_describe(error))
            return result

        if key not in self._compiled_keys:
            self._compiled_keys.add(key)
            if self.backend is not None:
                logger.info(
                    "Compiled the path length step for ws of shape %s in %.1f s (first call, %s backend)",
                    tuple(ws.shape),
                    time.perf_counter() - started,
                    self.backend if isinstance(self.backend, str) else "custom",
                )
        return self._commit(ws, gradients, aux, step)

    def run(self, ws: Tensor, *, step: int | None = None, noise: Tensor | None = None) -> PathLengthResult | None:
        """Run the step on a shrunk batch on due steps only, as :meth:`PathLengthPenalty.run` does.

        When ``step`` is None the step counter ``plr.step`` is used and advanced. On steps that are not
        due, and when the weight is 0, returns None without calling the synthesis network. Otherwise
        the first ``plr.batch_size(B)`` latents (and noise rows) go to :meth:`__call__`.
        """
        plr = self.plr
        current = plr.count_step(step)
        if not plr.is_due(current):
            return None

        batch = plr.batch_size(ws.shape[0])
        if noise is not None:
            noise = noise[:batch]
        return self(ws[:batch], noise, step=current)

    def _penalty_gradients(
        self,
        params: dict[str, Tensor],
        ws: Tensor,
        noise: Tensor,
        pl_mean: Tensor,
        decay: float,
        scale: float,
    ) -> tuple[tuple[dict[str, Tensor], Tensor], tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]]:
        # Returns ((parameter gradients, ws gradient), (loss, (penalty, lengths, new pl_mean, images))).
        def scaled_penalty(params: dict[str, Tensor], ws: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
            def generate(latents: Tensor) -> Tensor:
                return functional_call(self.synthesis, params, (latents,), dict(self.synthesis_kwargs))

            images, pullback = vjp(generate, ws)

            # J^T y, the same gradient as autograd.grad(sum(images * y), ws) in the eager step.
            (grad,) = pullback(noise.to(images.dtype))
            grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
            squares = grad.square().sum(dim=-1)
            if squares.ndim == 2:
                squares = squares.mean(dim=1)
            lengths = _safe_sqrt(squares)

            # As in the eager module, the penalty is differentiated through the updated average.
            new_pl_mean = pl_mean + decay * (lengths.mean() - pl_mean)
            penalty = (lengths - new_pl_mean).square().mean()
            loss = penalty * scale
            return loss, (penalty.detach(), lengths.detach(), new_pl_mean.detach(), images.detach())

        return grad_and_value(scaled_penalty, argnums=(0, 1), has_aux=True)(params, ws)

    def _run_compiled(self, ws: Tensor, noise: Tensor) -> tuple[tuple[dict[str, Tensor], Tensor], tuple[Any, ...]]:
        plr = self.plr
        params = {name: parameter.detach() for name, parameter in self.synthesis.named_parameters() if parameter.requires_grad}
        ws = ws.detach()
        scale = plr.weight * plr.interval
        # Past the recompile limit dynamo would run the torch.func step uncompiled, which is slower
        # than the eager module, so hitting the limit raises and the call falls back to eager.
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            (gradients, (_, aux)) = self._step(params, ws, noise, plr.pl_mean.detach(), plr.decay, scale)
        return gradients, aux

    def _commit(self, ws: Tensor, gradients: tuple[dict[str, Tensor], Tensor], aux: tuple[Tensor, ...], step: int | None) -> PathLengthResult:
        plr = self.plr
        penalty, lengths, new_pl_mean, images = aux
        label = f"step {step if step is not None else int(plr.step)}"

        # Nothing is written (pl_mean, .grad, ws) before the guard has passed, as in the eager step.
        problem = plr._find_nonfinite(images, lengths)
        if problem is not None:
            if plr.on_nonfinite == "skip":
                logger.warning("Skipped path length %s: %s; pl_mean stays %.6g", label, problem, plr.pl_mean.item())
                return plr._skipped_result(images.device, f"{label}: {problem}", lengths)
            raise NonFinitePathLengthError(
                f"path length regularization {label}: {problem}; pl_mean was left at "
                f"{plr.pl_mean.item():.6g}. Check the generator for NaN/inf (learning rate, fp16 "
                "without a GradScaler), or pass on_nonfinite='skip' to skip such steps."
            )

        with torch.no_grad():
            plr.pl_mean.copy_(new_pl_mean)

        parameter_gradients, ws_gradient = gradients
        loss = (penalty * (plr.weight * plr.interval)).detach()
        if self.accumulate:
            _accumulate_gradients(self.synthesis, parameter_gradients)
            if ws.requires_grad:
                torch.autograd.backward(ws, ws_gradient)
        else:
            loss = loss + _gradient_carrier(self.synthesis, parameter_gradients, ws, ws_gradient)

        return PathLengthResult(
            loss=loss,
            penalty=penalty,
            lengths=lengths,
            pl_mean=plr.pl_mean.detach().clone(),
        )

    def _eager_step(self, ws: Tensor, noise: Tensor | None, step: int | None) -> PathLengthResult:
        if not ws.requires_grad:
            ws = ws.detach().requires_grad_(True)
        images = self.synthesis(ws, **self.synthesis_kwargs)
        result = self.plr(images, ws, noise, step=step)
        if not self.accumulate:
            return result
        if not result.skipped:
            result.loss.backward()
        return dataclasses.replace(result, loss=result.loss.detach())

    def _fall_back(self, reason: str) -> None:
        if self.fallback_reason is None:
            self.fallback_reason = reason
            logger.warning("Path length regularization runs eagerly instead of compiled: %s", reason)

    def _image_spec(self, ws: Tensor) -> tuple[torch.Size, torch.dtype]:
        key = (tuple(ws.shape), ws.dtype, ws.device)
        if key not in self._image_specs:
            # One forward without gradients per latent shape. The random state is restored, so
            # the noise draws that follow equal those of an eager step.
            devices = [ws.device] if ws.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                images = self.synthesis(ws.detach(), **self.synthesis_kwargs)
            self._image_specs[key] = (images.shape, images.dtype)
        return self._image_specs[key]

    def _draw_noise(self, ws: Tensor) -> Tensor:
        # The shape and dtype of the eager step's draw: float32 for half-precision images.
        shape, image_dtype = self._image_spec(ws)
        dtype = torch.promote_types(image_dtype, torch.float32)
        noise = torch.randn(shape, device=ws.device, dtype=dtype)
        return noise / math.sqrt(shape[-2] * shape[-1])


def _describe(error: BaseException) -> str:
    # Dynamo's messages run over many lines, and BackendCompilerFailed keeps the backend's error
    # in its inner_exception attribute, so the reason is the first line of the error and of its
    # innermost cause.
    def first_line(exception: BaseException) -> str:
        lines = str(exception).strip().splitlines()
        return f"{type(exception).__name__}: {lines[0] if lines else ''}"

    root = error
    while True:
        cause = root.__cause__ or getattr(root, "inner_exception", None)
        if not isinstance(cause, BaseException) or cause is root:
            break
        root = cause
    if root is error:
        return first_line(error)
    return f"{first_line(error)} (caused by {first_line(root)})"


def _check_latents(ws: Tensor) -> None:
    if not torch.is_grad_enabled():
        raise RuntimeError(
            "path length regularization needs autograd, but gradients are disabled (torch.no_grad or "
            "inference_mode). Run the penalty with gradients enabled."
        )
    if ws.ndim not in (2, 3):
        raise ValueError(f"ws must have shape [B, D] (W) or [B, L, D] (W+), got shape {tuple(ws.shape)}")


def _accumulate_gradients(module: nn.Module, gradients: dict[str, Tensor]) -> None:
    # Adds like autograd does: the first gradient is stored, later ones are summed in place.
    for name, parameter in module.named_parameters():
        gradient = gradients.get(name)
        if gradient is None:
            continue
        if parameter.grad is None:
            # A copy in the parameter's own layout, which autograd expects when it adds to .grad.
            parameter.grad = torch.empty_like(parameter).copy_(gradient)
        else:
            parameter.grad.add_(gradient)


def _gradient_carrier(module: nn.Module, gradients: dict[str, Tensor], ws: Tensor, ws_gradient: Tensor) -> Tensor:
    # A zero-valued term t - t.detach() with t = sum_p <p, g_p> + <ws, g_ws>: its gradient with
    # respect to each parameter p is exactly g_p, and with respect to ws it is g_ws.
    terms = []
    for name, parameter in module.named_parameters():
        gradient = gradients.get(name)
        if gradient is not None and parameter.requires_grad:
            terms.append((parameter * torch.empty_like(parameter).copy_(gradient)).sum())
    if ws.requires_grad:
        terms.append((ws * ws_gradient).sum())
    if not terms:
        return torch.zeros((), device=ws.device)

    total = torch.stack(terms).sum()
    return total - total.detach()
