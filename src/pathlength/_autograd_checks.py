"""Checks that a generator's backward pass can be differentiated again, and which module breaks it.

Path length regularization differentiates the gradient J^T y a second time. An op without a double
backward fails only at the user's final ``backward()``, and a custom ``autograd.Function`` whose
backward is marked ``@once_differentiable`` silently drops its part of the gradient. These helpers
find both on the first regularization step and name the op and, when the generator is an
``nn.Module``, the submodule that contains it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


class DoubleBackwardError(RuntimeError):
    """Raised when the generator contains an op whose backward cannot be differentiated again."""


_WRAPPER_HINTS = (
    (
        ("torch.compile", "aot_autograd", "donated buffers"),
        "The generator runs under torch.compile, whose compiled backward cannot be differentiated "
        "again. Give the penalty the eager module behind it (compiled._orig_mod, which shares the "
        "parameters; PathLengthPenalty.run does this itself) or use pathlength.compiled for a "
        "compiled penalty.",
    ),
    (
        ("a second time",),
        "The images' graph was already freed by an earlier backward: run the generator again for "
        "the penalty, or pass retain_graph=True to the earlier backward.",
    ),
    (
        ("use_reentrant",),
        "The generator uses torch.utils.checkpoint with use_reentrant=True, which does not support "
        "autograd.grad. Pass use_reentrant=False to checkpoint.",
    ),
)


def explain(error: BaseException) -> str:
    """Return the error's message, followed by a remedy when a known wrapper caused it."""
    message = str(error)
    for markers, hint in _WRAPPER_HINTS:
        if any(marker in message for marker in markers):
            return f"{message} {hint}"
    return message


def _walk(roots: list[Any], stop: set[Any]) -> Iterator[Any]:
    seen: set[Any] = set()
    stack = [node for node in roots if node is not None]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        yield node
        stack.extend(child for child, _ in node.next_functions if child is not None)


def _is_once_differentiable(node: Any) -> bool:
    function_class = getattr(node, "_forward_cls", None)
    backward = getattr(function_class, "backward", None)
    code = getattr(backward, "__code__", None)
    # torch.autograd.function.once_differentiable wraps backward in a function defined in that file.
    return code is not None and code.co_filename == inspect.getsourcefile(torch.autograd.function.once_differentiable)


def _latent_nodes(ws: Tensor) -> set[Any]:
    if ws.grad_fn is not None:
        return {ws.grad_fn}
    return set()


def check_graph(outputs: Tensor, images: Tensor, ws: Tensor) -> None:
    """Raise DoubleBackwardError if ``outputs`` (built from J^T y) cannot be differentiated again.

    Two checks: no custom Function between ``ws`` and ``images`` marks its backward
    ``@once_differentiable``, and one real backward of ``outputs`` to the graph's leaves runs
    (the graph is retained, so the caller's own backward still works).
    """
    for node in _walk([images.grad_fn], _latent_nodes(ws)):
        if _is_once_differentiable(node):
            name = node._forward_cls.__qualname__
            raise DoubleBackwardError(
                f"the custom autograd.Function {name} marks its backward @once_differentiable, so the "
                "second backward of path length regularization would silently drop its part of the "
                f"gradient. Write {name}.backward with differentiable torch ops and remove the "
                "decorator, or replace the op."
            )

    leaves = []
    for node in _walk([outputs.grad_fn], set()):
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor) and variable.requires_grad:
            leaves.append(variable)
    if not leaves:
        raise DoubleBackwardError(
            "the path lengths do not depend on any trainable parameter, so the penalty cannot train "
            "the generator: either nothing trainable lies between ws and the images, or an op's "
            "backward detaches its result (a custom autograd.Function computing its gradient outside "
            "autograd). Use differentiable ops between ws and the images."
        )

    try:
        torch.autograd.grad(outputs.sum(), leaves, retain_graph=True, allow_unused=True)
    except (RuntimeError, NotImplementedError) as error:
        raise DoubleBackwardError(
            f"the generator cannot be differentiated twice, which path length regularization "
            f"needs: {explain(error)} Otherwise replace the op named above with one that supports "
            "double backward."
        ) from error


@dataclass
class ModuleCall:
    """One recorded call of a submodule: its qualified name and detached tensor inputs."""

    name: str
    module: nn.Module
    inputs: tuple[Any, ...]
    depth: int = field(default=0)


@contextlib.contextmanager
def record_module_calls(generator: Any, enabled: bool = True) -> Iterator[list[ModuleCall]]:
    """Record the inputs of every submodule call of ``generator`` while the context is open."""
    records: list[ModuleCall] = []
    if not enabled or not isinstance(generator, nn.Module):
        yield records
        return

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            detached = tuple(arg.detach() if isinstance(arg, Tensor) else arg for arg in args)
            records.append(ModuleCall(name, module, detached, name.count(".") + (1 if name else 0)))

        return hook

    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in generator.named_modules()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _probe(call: ModuleCall) -> DoubleBackwardError | None:
    # A copy, so a probe cannot change the real module's state (BatchNorm statistics, counters).
    call = ModuleCall(call.name, copy.deepcopy(call.module), call.inputs, call.depth)
    inputs = tuple(
        arg.clone().requires_grad_(True) if isinstance(arg, Tensor) and arg.is_floating_point() else arg
        for arg in call.inputs
    )
    differentiable = [arg for arg in inputs if isinstance(arg, Tensor) and arg.requires_grad]
    if not differentiable:
        return None

    with torch.enable_grad():
        output = call.module(*inputs)
        if isinstance(output, (tuple, list)):
            output = next((item for item in output if isinstance(item, Tensor)), None)
        if not isinstance(output, Tensor) or not output.requires_grad:
            return None

        # Walk the forward graph before any backward: with a constant cotangent a once-differentiable
        # backward returns gradients that do not require grad, which the checks below skip.
        for node in _walk([output.grad_fn], set()):
            if _is_once_differentiable(node):
                return DoubleBackwardError(f"{node._forward_cls.__qualname__} is @once_differentiable")

        cotangent = torch.randn_like(output)
        grads = torch.autograd.grad((output * cotangent).sum(), differentiable, create_graph=True, allow_unused=True)
        grads = [grad for grad in grads if grad is not None and grad.requires_grad]
        if not grads:
            return None
        second = sum(grad.float().square().sum() for grad in grads)
        try:
            params = [param for param in call.module.parameters() if param.requires_grad]
            torch.autograd.grad(second, differentiable + params, allow_unused=True)
        except (RuntimeError, NotImplementedError) as error:
            return DoubleBackwardError(str(error))
    return None


def with_module_name(error: DoubleBackwardError, records: list[ModuleCall]) -> DoubleBackwardError:
    """Return ``error`` with the innermost recorded submodule that reproduces it named in the message."""
    seen: set[int] = set()
    for call in sorted(records, key=lambda record: -record.depth):
        if id(call.module) in seen:
            continue
        seen.add(id(call.module))
        try:
            found = _probe(call)
        except Exception:  # noqa: BLE001 - a probe that cannot run says nothing about the module
            found = None
        if found is not None:
            where = call.name or "the generator itself"
            return DoubleBackwardError(f"{error} (the op sits in module '{where}' of type {type(call.module).__name__})")
    return error
