"""Configuration of PathLengthPenalty: batch shrink, lazy interval, turning it off, state and resume, Adam settings."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pathlength import PathLengthPenalty, lazy_adam_settings
from toys import LinearGenerator, ModConvGenerator, single_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with single_thread():
        yield


def scaled_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]
    return torch.randn(shape, generator=rng, dtype=torch.float64) / math.sqrt(height * width)


class CountingGenerator(nn.Module):
    """Linear toy that records the batch size and extra inputs of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.toy = LinearGenerator((3, 8, 8), (4, 16), seed=1)
        self.calls: list[dict] = []

    def forward(self, ws: torch.Tensor, *extra: torch.Tensor | None, **options: object) -> torch.Tensor:
        self.calls.append({"ws": ws.detach().clone(), "extra": extra, "options": options})
        return self.toy(ws)


class GradientWorkRecorder(TorchFunctionMode):
    """Records every torch function called with a tensor that requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        if any(tensor.requires_grad for tensor in tensors):
            self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **kwargs)


@pytest.mark.parametrize(("batch", "shrink", "expected"), [(1, 2, 1), (3, 2, 1), (8, 2, 4), (8, 2.0, 4), (8, 3, 2)])
def test_batch_size_shrinks_never_below_one(batch, shrink, expected):
    assert PathLengthPenalty(batch_shrink=shrink).batch_size(batch) == expected


@pytest.mark.parametrize("shrink", [0, -1, 1.5, True, math.inf])
def test_invalid_batch_shrink_raises(shrink):
    with pytest.raises(ValueError, match=f"batch_shrink must be a positive integer, got {shrink!r}"):
        PathLengthPenalty(batch_shrink=shrink)


def test_run_cuts_per_sample_inputs():
    generator = CountingGenerator()
    ws = torch.randn(6, 4, 16, dtype=torch.float64)
    labels = torch.arange(6)
    noise = scaled_noise((6, 3, 8, 8), seed=2)
    penalty = PathLengthPenalty(batch_shrink=2)

    result = penalty.run(generator, ws, labels, None, noise=noise)

    (call,) = generator.calls
    assert torch.equal(call["ws"], ws[:3])
    assert torch.equal(call["extra"][0], labels[:3])
    assert call["extra"][1] is None
    # The lengths were formed with the first 3 noise images: compare with A^T y of those.
    expected = (noise[:3].reshape(3, -1) @ generator.toy.A.detach()).reshape(3, 4, 16)
    expected = expected.square().sum(dim=-1).mean(dim=1).sqrt()
    torch.testing.assert_close(result.lengths, expected, rtol=0, atol=1e-10)


def test_run_cuts_keyword_per_sample_inputs():
    generator = CountingGenerator()
    ws = torch.randn(6, 4, 16, dtype=torch.float64)
    labels = torch.arange(6)
    table = torch.arange(4)

    PathLengthPenalty(batch_shrink=2).run(generator, ws, c=labels, table=table, mode="const")

    (call,) = generator.calls
    assert torch.equal(call["options"]["c"], labels[:3])
    # A tensor whose leading size is not the batch is not a per-sample input.
    assert torch.equal(call["options"]["table"], table)
    assert call["options"]["mode"] == "const"


def test_run_single_sample_batch_runs_on_one():
    generator = CountingGenerator()

    result = PathLengthPenalty(batch_shrink=2).run(generator, torch.randn(1, 4, 16, dtype=torch.float64))

    assert generator.calls[0]["ws"].shape[0] == 1
    assert result.lengths.shape == (1,)


@pytest.mark.parametrize(("weight", "interval"), [(2.0, 4), (2.0, 1), (0.5, 3)])
def test_due_step_loss_is_scaled_once(weight, interval):
    generator = LinearGenerator((3, 8, 16), (4, 16), seed=3)
    ws = torch.randn(4, 4, 16, dtype=torch.float64, requires_grad=True)
    noise = scaled_noise((4, 3, 8, 16), seed=4)
    penalty = PathLengthPenalty(weight=weight, interval=interval)
    penalty.pl_mean.fill_(0.5)

    result = penalty(generator(ws), ws, noise)

    # Independent computation: closed-form lengths A^T y, the updated average, the mean square.
    lengths = (noise.reshape(4, -1) @ generator.A.detach()).reshape(4, 4, 16).square().sum(-1).mean(1).sqrt()
    pl_mean = 0.5 + 0.01 * (lengths.mean() - 0.5)
    expected_penalty = (lengths - pl_mean).square().mean()

    # The penalty is the unscaled mean square: closed form and autograd agree to float64 rounding.
    assert abs(result.penalty.item() - expected_penalty.item()) <= 1e-12 * expected_penalty.item()
    # The loss is the penalty times weight * interval, exactly once.
    assert result.loss.item() == (result.penalty * (weight * interval)).item()
    assert abs(result.loss.item() - weight * interval * expected_penalty.item()) <= 1e-12 * result.loss.item()


def test_run_skips_off_interval_steps():
    generator = CountingGenerator()
    penalty = PathLengthPenalty(interval=4)
    ws = torch.randn(4, 4, 16, dtype=torch.float64)

    results = [penalty.run(generator, ws) for _ in range(9)]

    assert [result is not None for result in results] == [step % 4 == 0 for step in range(9)]
    assert len(generator.calls) == 3
    assert int(penalty.step) == 9


def test_off_interval_step_does_no_autograd_work():
    generator = CountingGenerator()
    penalty = PathLengthPenalty(interval=4)
    ws = torch.randn(4, 4, 16, dtype=torch.float64, requires_grad=True)

    with GradientWorkRecorder() as recorder:
        result = penalty.run(generator, ws, step=3)

    assert result is None
    assert generator.calls == []
    assert recorder.names == []
    assert ws.grad is None

    # The recorder does see the work of a due step.
    with GradientWorkRecorder() as recorder:
        result = penalty.run(generator, ws, step=4)

    assert result is not None
    assert len(generator.calls) == 1
    assert recorder.names != []


def test_explicit_step_follows_interval():
    generator = CountingGenerator()
    penalty = PathLengthPenalty(interval=4)
    ws = torch.randn(4, 4, 16, dtype=torch.float64)

    assert penalty.run(generator, ws, step=5) is None
    assert penalty.run(generator, ws, step=8) is not None
    assert int(penalty.step) == 0


def test_count_step_advances_only_the_buffer():
    penalty = PathLengthPenalty(interval=4)

    counted = [penalty.count_step() for _ in range(3)]
    explicit = penalty.count_step(step=10)

    assert counted == [0, 1, 2]
    assert explicit == 10
    assert int(penalty.step) == 3


def test_zero_weight_is_noop():
    generator = CountingGenerator()
    penalty = PathLengthPenalty(weight=0, interval=1)
    penalty.pl_mean.fill_(0.3)
    before = penalty.pl_mean.clone()
    ws = torch.randn(4, 4, 16, dtype=torch.float64, requires_grad=True)

    results = [penalty.run(generator, ws) for _ in range(4)]
    direct = penalty(generator.toy(ws), ws)

    assert results == [None] * 4
    assert generator.calls == []
    assert direct.skipped
    assert direct.loss.item() == 0.0
    assert torch.equal(penalty.pl_mean, before)


@pytest.mark.parametrize("interval", [0, -1, 2.5])
def test_invalid_interval_raises(interval):
    with pytest.raises(ValueError, match=f"interval must be a positive integer, got {interval!r}"):
        PathLengthPenalty(interval=interval)


@pytest.mark.parametrize("name", ["gamma", "r1_gamma", "pl_weight"])
def test_constructor_rejects_other_option_names(name):
    with pytest.raises(TypeError, match=name):
        PathLengthPenalty(**{name: 2.0})


def test_state_dict_holds_float32_average_and_step():
    penalty = PathLengthPenalty(interval=1)
    penalty.run(LinearGenerator(seed=5), torch.randn(4, 4, 16, dtype=torch.float64))

    state = penalty.state_dict()

    assert set(state) == {"pl_mean", "step"}
    assert state["pl_mean"].dtype == torch.float32
    assert state["pl_mean"].item() > 0
    assert state["step"].dtype == torch.int64
    assert state["step"].item() == 1


def train_steps(generator, optimizer, penalty, first: int, last: int):
    """Run generator steps first..last-1: a main loss on every step and run() for the penalty."""
    result = None
    for step in range(first, last):
        torch.manual_seed(1000 + step)
        ws = generator.random_ws(4, seed=step)
        optimizer.zero_grad()
        generator(ws).square().mean().backward()
        result = penalty.run(generator, ws)
        if result is not None:
            result.loss.backward()
        optimizer.step()
    return result


def test_resume_matches_uninterrupted_run():
    # Uninterrupted: 21 steps; the last (index 20) is a due step for interval 4.
    generator = ModConvGenerator(seed=6, dtype=torch.float32)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    penalty = PathLengthPenalty(interval=4)
    train_steps(generator, optimizer, penalty, 0, 20)

    buffer = io.BytesIO()
    torch.save({"G": generator.state_dict(), "opt": optimizer.state_dict(), "pl": penalty.state_dict()}, buffer)
    expected = train_steps(generator, optimizer, penalty, 20, 21)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_generator = ModConvGenerator(seed=99, dtype=torch.float32)
    resumed_generator.load_state_dict(saved["G"])
    resumed_optimizer = torch.optim.Adam(resumed_generator.parameters(), lr=1e-2)
    resumed_optimizer.load_state_dict(saved["opt"])
    resumed_penalty = PathLengthPenalty(interval=4)
    resumed_penalty.load_state_dict(saved["pl"])
    resumed = train_steps(resumed_generator, resumed_optimizer, resumed_penalty, 20, 21)

    assert expected is not None
    assert resumed is not None
    assert torch.equal(resumed_penalty.pl_mean, penalty.pl_mean)
    assert torch.equal(resumed_penalty.step, penalty.step)
    assert torch.equal(resumed.loss, expected.loss)
    for (name, parameter), resumed_parameter in zip(generator.named_parameters(), resumed_generator.parameters()):
        assert torch.equal(resumed_parameter.grad, parameter.grad), name
        assert torch.equal(resumed_parameter, parameter), name


@pytest.mark.parametrize("strict", [True, False])
def test_loading_state_without_average_warns(strict):
    penalty = PathLengthPenalty()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = penalty.load_state_dict({}, strict=strict)

    messages = [str(item.message) for item in caught if item.category is UserWarning]
    assert any("no 'pl_mean'" in message and "keeps its current value 0.0" in message for message in messages)
    assert any("no 'step'" in message and "keeps its current value 0" in message for message in messages)
    assert result.missing_keys == []
    assert penalty.pl_mean.item() == 0.0


def test_loading_nested_state_without_average_warns():
    model = nn.Module()
    model.pl = PathLengthPenalty()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_state_dict({}, strict=True)

    messages = [str(item.message) for item in caught]
    assert any("no 'pl.pl_mean'" in message for message in messages)
    assert any("no 'pl.step'" in message for message in messages)


@pytest.mark.parametrize(
    "cast",
    [
        lambda module: module.double(),
        lambda module: module.half(),
        lambda module: module.to(torch.float64),
        lambda module: module.to(dtype=torch.bfloat16),
    ],
)
def test_module_casts_keep_float32_average(cast):
    model = nn.Module()
    model.pl = PathLengthPenalty()
    model.pl.pl_mean.fill_(0.123456789)
    model.pl.step.fill_(5)
    before = model.pl.pl_mean.clone()

    cast(model)

    assert model.pl.pl_mean.dtype == torch.float32
    # A round trip through float16 or bfloat16 would change this value.
    assert torch.equal(model.pl.pl_mean, before)
    assert model.pl.step.dtype == torch.int64
    assert "pl_mean" in dict(model.pl.named_buffers())


def test_double_cast_penalty_still_runs():
    penalty = PathLengthPenalty(interval=1).double()
    generator = LinearGenerator(seed=7)

    result = penalty.run(generator, torch.randn(4, 4, 16, dtype=torch.float64))

    assert penalty.pl_mean.dtype == torch.float32
    assert penalty.state_dict()["pl_mean"].dtype == torch.float32
    assert result.lengths.dtype == torch.float64


def test_copy_keeps_state():
    penalty = PathLengthPenalty()
    penalty.pl_mean.fill_(0.25)

    duplicate = copy.deepcopy(penalty)

    assert torch.equal(duplicate.pl_mean, penalty.pl_mean)
    assert duplicate.pl_mean.data_ptr() != penalty.pl_mean.data_ptr()


def test_lazy_adam_settings_for_interval_four():
    lr, (beta1, beta2) = lazy_adam_settings(0.002, (0.0, 0.99), 4)

    # c = 4 / 5: lr * c and beta ** c, to float64 rounding.
    assert math.isclose(lr, 0.0016, rel_tol=1e-12)
    assert beta1 == 0.0
    assert math.isclose(beta2, 0.99**0.8, rel_tol=1e-12)


@pytest.mark.parametrize("interval", [None, 0])
def test_lazy_adam_settings_pass_through_without_interval(interval):
    assert lazy_adam_settings(0.002, (0.5, 0.99), interval) == (0.002, (0.5, 0.99))


@pytest.mark.parametrize("interval", [-1, 2.5, "4", True])
def test_lazy_adam_settings_reject_invalid_interval(interval):
    with pytest.raises(ValueError, match="interval must be a non-negative integer or None"):
        lazy_adam_settings(0.002, (0.0, 0.99), interval)


def test_zero_weight_run_warns_nothing():
    penalty = PathLengthPenalty(weight=0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert penalty.run(CountingGenerator(), torch.randn(2, 4, 16, dtype=torch.float64)) is None

    assert not penalty.enabled
