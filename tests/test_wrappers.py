"""Generators behind torch.compile and activation checkpointing: eager gradients or a named error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pathlength import DoubleBackwardError, PathLengthPenalty


class MlpSynthesis(nn.Module):
    """Maps ws [B, 8] to images [B, 3, 4, 4], optionally through activation checkpointing."""

    def __init__(self, use_reentrant: bool | None = None) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 32)
        self.output = nn.Linear(32, 48)
        self.use_reentrant = use_reentrant

    def body(self, ws: torch.Tensor) -> torch.Tensor:
        return self.output(F.leaky_relu(self.hidden(ws), 0.2))

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        if self.use_reentrant is None:
            features = self.body(ws)
        else:
            features = checkpoint(self.body, ws, use_reentrant=self.use_reentrant)
        return features.reshape(-1, 3, 4, 4)


def penalty_grads(synthesis: nn.Module, ws: torch.Tensor, noise: torch.Tensor) -> list[torch.Tensor]:
    plr = PathLengthPenalty(interval=1, batch_shrink=1)
    result = plr.run(synthesis, ws, noise=noise)
    result.loss.backward()
    module = getattr(synthesis, "_orig_mod", synthesis)
    return [param.grad for param in module.parameters()]


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor, dict]:
    torch.manual_seed(0)
    state = MlpSynthesis().state_dict()
    return torch.randn(4, 8), torch.randn(4, 3, 4, 4) / 4, state


def test_non_reentrant_checkpoint_gives_eager_gradients(inputs):
    ws, noise, state = inputs
    eager = MlpSynthesis()
    eager.load_state_dict(state)
    wrapped = MlpSynthesis(use_reentrant=False)
    wrapped.load_state_dict(state)

    expected = penalty_grads(eager, ws, noise)
    actual = penalty_grads(wrapped, ws, noise)

    for got, want in zip(actual, expected):
        # Checkpointing recomputes the same float32 ops in the same order.
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_reentrant_checkpoint_raises_named_remedy(inputs):
    ws, noise, state = inputs
    wrapped = MlpSynthesis(use_reentrant=True)
    wrapped.load_state_dict(state)

    with pytest.raises(DoubleBackwardError) as caught:
        penalty_grads(wrapped, ws, noise)

    assert "torch.utils.checkpoint" in str(caught.value)
    assert "use_reentrant=False" in str(caught.value)


def test_compiled_generator_runs_eager_module(inputs):
    ws, noise, state = inputs
    eager = MlpSynthesis()
    eager.load_state_dict(state)
    compiled_module = MlpSynthesis()
    compiled_module.load_state_dict(state)
    compiled = torch.compile(compiled_module, backend="aot_eager")

    expected = penalty_grads(eager, ws, noise)
    actual = penalty_grads(compiled, ws, noise)

    for got, want in zip(actual, expected):
        # run() takes the eager module behind the compiled one: the same ops, the same values.
        assert torch.equal(got, want)


def test_compiled_images_raise_named_remedy(inputs):
    ws, noise, state = inputs
    compiled = torch.compile(MlpSynthesis(), backend="aot_eager")
    latents = ws.clone().requires_grad_(True)
    images = compiled(latents)

    with pytest.raises(DoubleBackwardError) as caught:
        PathLengthPenalty(interval=1)(images, latents, noise)

    assert "torch.compile" in str(caught.value)
    assert "_orig_mod" in str(caught.value)
