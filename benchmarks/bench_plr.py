"""Benchmark of path length regularization steps on the reference StyleGAN2 generator.

Four steps run interleaved in one process on the same generator and inputs: (a) the textbook
step written out below, (b) pathlength's `PathLengthPenalty` as the trainer runs it (the synthesis
forward inside `shifted_sum_forms`), (c) the compiled `torch.func` step
of `pathlength.compiled`, and (d) a plain generator forward and backward. For each it records the
time, the peak memory and the FLOPs, then fits how the time grows with pixels and batch size and
measures what regularization adds to a full training step of the real trainer.

    python benchmarks/bench_plr.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import pathlength
from pathlength import PathLengthPenalty
from pathlength.compiled import CompiledPathLengthPenalty
from pathlength.data import load_dataset
from pathlength.models import Generator, shifted_sum_forms
from pathlength.report.files import write_text_atomically
from pathlength.training.config import TrainConfig
from pathlength.training.loop import Trainer
from pathlength.training.run_logging import MetricWindow

METHODS = ("textbook", "pathlength", "compiled", "forward_backward")
RATIOS = {
    "pathlength/textbook": ("pathlength", "textbook"),
    "compiled/textbook": ("compiled", "textbook"),
    "textbook/forward_backward": ("textbook", "forward_backward"),
    "pathlength/forward_backward": ("pathlength", "forward_backward"),
    "compiled/forward_backward": ("compiled", "forward_backward"),
}
# Constant per-layer noise in every step, so all four compute the same function of the same inputs.
SYNTHESIS_KWARGS = {"noise_mode": "const"}
PL_WEIGHT = 2.0
PL_DECAY = 0.01
PL_INTERVAL = 4
PL_BATCH_SHRINK = 2
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_plr.json"
# --quick writes elsewhere by default, so that a check does not replace the full run's report.
DEFAULT_QUICK_OUT = Path(tempfile.gettempdir()) / "bench_plr_quick.json"


@dataclass
class Settings:
    """Sizes, repeats and backends of one benchmark run."""

    pixel_resolutions: tuple[int, ...]
    pixel_batch: int
    batch_resolution: int
    batch_sizes: tuple[int, ...]
    compiled_batch_sizes: tuple[int, ...]
    repeats: int
    warmup: int
    compiled_backend: str | None
    train_resolution: int
    train_batch: int
    train_windows: int
    threads: int | None = None
    generator_kwargs: dict = field(default_factory=dict)


FULL = Settings(
    pixel_resolutions=(16, 32, 64),
    pixel_batch=16,
    batch_resolution=32,
    batch_sizes=(4, 8, 16, 32),
    # Inductor compiles one graph per shape, 30 s to 2 minutes each on 2 cores with a cold cache, so
    # the compiled step skips batches 4 and 8 to keep a cold run under 10 minutes.
    compiled_batch_sizes=(16, 32),
    repeats=10,
    warmup=2,
    compiled_backend="inductor",
    train_resolution=32,
    train_batch=32,
    train_windows=12,
)

QUICK = Settings(
    pixel_resolutions=(8, 16),
    pixel_batch=2,
    batch_resolution=8,
    batch_sizes=(2, 4),
    compiled_batch_sizes=(2, 4),
    repeats=2,
    warmup=1,
    compiled_backend=None,
    train_resolution=8,
    train_batch=4,
    train_windows=1,
    # One thread: a tiny model gains nothing from two, and one is not stalled by other processes.
    threads=1,
    generator_kwargs={"channel_base": 64, "channel_max": 16, "z_dim": 16, "w_dim": 16},
)


class Case:
    """One generator at one resolution and batch size, with the four steps bound to its inputs."""

    def __init__(self, generator: Generator, batch: int, compiled: CompiledPathLengthPenalty | None, seed: int = 0) -> None:
        resolution = generator.img_resolution
        rng = torch.Generator().manual_seed(seed)
        self.generator = generator
        self.batch = batch
        self.z = torch.randn(batch, generator.z_dim, generator=rng)
        self.noise = torch.randn(batch, generator.img_channels, resolution, resolution, generator=rng) / resolution
        self.plr = PathLengthPenalty(weight=PL_WEIGHT, decay=PL_DECAY, interval=PL_INTERVAL)
        self.textbook_pl_mean = torch.zeros(())
        self.compiled = compiled
        self.steps: dict[str, Callable[[], None]] = {
            "textbook": self.textbook_step,
            "pathlength": self.pathlength_step,
            "forward_backward": self.forward_backward_step,
        }
        if compiled is not None:
            self.steps["compiled"] = self.compiled_step

    def textbook_step(self) -> None:
        """(a) Forward, J^T y by autograd.grad with create_graph, the penalty and its backward."""
        ws = self.generator.mapping(self.z)
        images = self.generator.synthesis(ws, **SYNTHESIS_KWARGS)

        (grad,) = torch.autograd.grad((images * self.noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()

        pl_mean = self.textbook_pl_mean + PL_DECAY * (lengths.mean() - self.textbook_pl_mean)
        self.textbook_pl_mean = pl_mean.detach()
        loss = (lengths - pl_mean).square().mean() * (PL_WEIGHT * PL_INTERVAL)
        loss.backward()

    def pathlength_step(self) -> None:
        """(b) The same step as the trainer runs it: PathLengthPenalty, and the synthesis forward in shifted_sum_forms."""
        ws = self.generator.mapping(self.z)
        with shifted_sum_forms():
            images = self.generator.synthesis(ws, **SYNTHESIS_KWARGS)
        result = self.plr(images, ws, self.noise)
        result.loss.backward()

    def compiled_step(self) -> None:
        """(c) The compiled torch.func step; it accumulates the gradients itself."""
        self.compiled(self.generator.mapping(self.z), self.noise)

    def forward_backward_step(self) -> None:
        """(d) A plain forward and backward of the generator, the cost of one ordinary generator update."""
        images = self.generator.synthesis(self.generator.mapping(self.z), **SYNTHESIS_KWARGS)
        (images * self.noise).sum().backward()

    def run(self, method: str) -> float:
        """Run one step of `method` from cleared gradients and return its wall time in seconds."""
        self.generator.zero_grad(set_to_none=True)
        started = time.perf_counter()
        self.steps[method]()
        return time.perf_counter() - started


def measure_peak_memory(case: Case, method: str) -> float:
    """Return the peak of CPU tensor memory a step allocates on top of what is alive before it, in MiB.

    Every allocation and free of PyTorch's CPU allocator during the step is a profiler memory
    event, and compiled code allocates through the same allocator. The running sum of their sizes
    in time order peaks at the step's high-water mark. Gradients left in ``.grad`` are included.
    """
    case.generator.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        case.steps[method]()

    events = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def count_flops(case: Case, method: str) -> float | None:
    """Return the FLOPs of one step by FlopCounterMode, or None where it cannot count them.

    The forward, the inner ``autograd.grad`` and the final backward are counted in separate
    contexts, because one context around both the forward and ``autograd.grad`` raises in
    PyTorch 2.13. The counter cannot follow the torch.func transforms of the compiled step. That
    step runs the same convolutions and matrix products as the textbook step, so it gets the
    textbook count.
    """
    generator = case.generator
    generator.zero_grad(set_to_none=True)
    total = 0

    def counted(function: Callable[[], object]) -> object:
        nonlocal total
        with FlopCounterMode(display=False) as counter:
            value = function()
        total += counter.get_total_flops()
        return value

    if method == "compiled":
        return None
    ws = counted(lambda: generator.mapping(case.z))
    images = counted(lambda: generator.synthesis(ws, **SYNTHESIS_KWARGS))
    if method == "forward_backward":
        counted(lambda: (images * case.noise).sum().backward())
    elif method == "textbook":
        grad = counted(lambda: torch.autograd.grad((images * case.noise).sum(), ws, create_graph=True)[0])
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        counted(lambda: (lengths - lengths.mean()).square().mean().backward())
    else:
        result = counted(lambda: case.plr(images, ws, case.noise))
        counted(lambda: result.loss.backward())
    return float(total)


def time_case(case: Case, settings: Settings) -> dict[str, list[float]]:
    """Time every step of the case `settings.repeats` times, rotating their order each round."""
    methods = list(case.steps)
    for method in methods:
        for _ in range(settings.warmup):
            case.run(method)

    times: dict[str, list[float]] = {method: [] for method in methods}
    for round_index in range(settings.repeats):
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            times[method].append(case.run(method))
    return times


def summarize(samples: list[float]) -> dict[str, float]:
    """Return the median, quartiles and minimum of a list of seconds, in milliseconds."""
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p25_ms": quartiles[0] * 1e3,
        "p75_ms": quartiles[2] * 1e3,
        "min_ms": min(samples) * 1e3,
        "repeats": len(samples),
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Return the median over rounds of the per-round time ratio, which cancels slow drift."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def benchmark_case(generator: Generator, batch: int, compiled: CompiledPathLengthPenalty | None, settings: Settings) -> dict:
    """Return times, ratios, peak memory and FLOPs of the four steps at one configuration."""
    resolution = generator.img_resolution
    case = Case(generator, batch, compiled)
    logging.info("Case %dx%d, batch %d: warming up %s", resolution, resolution, batch, ", ".join(case.steps))

    first_call_s = None
    if compiled is not None:
        started = time.perf_counter()
        case.run("compiled")
        first_call_s = time.perf_counter() - started
        if not compiled.compiled:
            raise RuntimeError(f"the compiled step fell back to eager: {compiled.fallback_reason}")

    times = time_case(case, settings)
    flops = {method: count_flops(case, method) for method in case.steps}
    if "compiled" in flops:
        flops["compiled"] = flops["textbook"]

    methods = {}
    for method, samples in times.items():
        summary = summarize(samples)
        summary["peak_memory_mib"] = measure_peak_memory(case, method)
        summary["gflop"] = flops[method] / 1e9
        summary["gflop_per_s"] = flops[method] / 1e9 / (summary["median_ms"] / 1e3)
        methods[method] = summary
    if first_call_s is not None:
        methods["compiled"]["first_call_s"] = first_call_s

    ratios = {
        name: paired_ratio(times[top], times[bottom])
        for name, (top, bottom) in RATIOS.items()
        if top in times and bottom in times
    }
    return {"resolution": resolution, "batch": batch, "pixels": resolution * resolution, "methods": methods, "ratios": ratios}


def fit_exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Return the slope k of log(seconds) = k * log(size) + c by least squares (None below 2 points)."""
    if len(sizes) < 2:
        return None
    slope, _ = np.polyfit(np.log(sizes), np.log(seconds), deg=1)
    return float(slope)


def fit_scaling(cases: list[dict], key: str) -> dict[str, float | None]:
    """Return the fitted exponent of each step's median time against `key` ("pixels" or "batch")."""
    exponents = {}
    for method in METHODS:
        points = [(case[key], case["methods"][method]["median_ms"]) for case in cases if method in case["methods"]]
        exponents[method] = fit_exponent([size for size, _ in points], [ms for _, ms in points])
    return exponents


def make_generator(resolution: int, settings: Settings, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(img_resolution=resolution, **settings.generator_kwargs)


def make_compiled(generator: Generator, settings: Settings) -> CompiledPathLengthPenalty:
    plr = PathLengthPenalty(weight=PL_WEIGHT, decay=PL_DECAY, interval=PL_INTERVAL)
    return CompiledPathLengthPenalty(plr, generator.synthesis, backend=settings.compiled_backend, synthesis_kwargs=SYNTHESIS_KWARGS)


def trainer_compile_backend(settings: Settings) -> str:
    """Return the backend of the trainer with ``--compile``: the compiled step's, or aot_eager when that is None."""
    return settings.compiled_backend or "aot_eager"


def make_trainer(settings: Settings, pl_weight: float, out: str, compile_backend: str | None = None) -> Trainer:
    """Return a real trainer; with ``compile_backend`` it runs its path length steps compiled (``--compile``)."""
    generator_sizes = {key: settings.generator_kwargs[key] for key in ("channel_base", "channel_max", "z_dim", "w_dim") if key in settings.generator_kwargs}
    config = TrainConfig(
        data="digits",
        out=out,
        resolution=settings.train_resolution,
        batch_size=settings.train_batch,
        pl_weight=pl_weight,
        pl_interval=PL_INTERVAL,
        pl_batch_shrink=PL_BATCH_SHRINK,
        device="cpu",
        compile=compile_backend is not None,
        compile_backend=compile_backend or "inductor",
        **generator_sizes,
    )
    dataset = load_dataset(config.data, config.resolution, config.channels)
    return Trainer(config, dataset, torch.device("cpu"))


def time_phases(trainer: Trainer) -> dict[str, list[float]]:
    """Record the wall time of every phase the trainer runs, by phase name ("G/main", "G/pl", ...)."""
    phase_seconds: dict[str, list[float]] = {}
    run_phase = trainer._run_phase

    def timed_run_phase(name: str, *args, **kwargs) -> None:
        started = time.perf_counter()
        run_phase(name, *args, **kwargs)
        phase_seconds.setdefault(name, []).append(time.perf_counter() - started)

    trainer._run_phase = timed_run_phase
    return phase_seconds


def benchmark_training(settings: Settings) -> dict:
    """Return the time per training step without regularization, with the eager step and with the compiled one.

    Each variant is a real `Trainer` (generator main, path length when due, discriminator main, R1
    every 16 steps). Windows of `PL_INTERVAL` steps, each with one regularization step, run in
    rotation between the variants. All variants take the same steps, so R1 falls into the same
    windows of each.

    Two overheads are reported. ``overhead`` compares whole steps of different trainers, so the
    load on the machine moves it. ``phase_overhead`` divides the time of a trainer's own G/pl
    phase (the regularization steps plus the latent mapping that every step does to decide) by
    the rest of the same trainer's steps, which the load moves much less.
    """
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            "none": make_trainer(settings, 0.0, out),
            "eager": make_trainer(settings, PL_WEIGHT, out),
            # The quick configuration compiles nothing elsewhere; aot_eager traces the same graph in seconds.
            "compiled": make_trainer(settings, PL_WEIGHT, out, trainer_compile_backend(settings)),
        }
    compiled = trainers["compiled"].compiled_penalty

    def run_window(trainer: Trainer) -> float:
        window = MetricWindow()
        started = time.perf_counter()
        for _ in range(PL_INTERVAL):
            trainer.train_step(window)
        return time.perf_counter() - started

    logging.info("Training %dx%d, batch %d: warming up", settings.train_resolution, settings.train_resolution, settings.train_batch)
    warmup_seconds = {name: run_window(trainer) for name, trainer in trainers.items()}
    phases = {name: time_phases(trainer) for name, trainer in trainers.items()}

    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for round_index in range(settings.train_windows):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(run_window(trainers[name]))

    steps = settings.train_windows * PL_INTERVAL
    ms_per_step = {name: sum(values) / steps * 1e3 for name, values in seconds.items()}
    overhead = {name: ms_per_step[name] / ms_per_step["none"] - 1 for name in ("eager", "compiled")}
    phase_ms_per_step = {
        name: {phase: sum(values) / steps * 1e3 for phase, values in trainer_phases.items()}
        for name, trainer_phases in phases.items()
    }
    phase_overhead = {}
    for name in ("eager", "compiled"):
        regularization = sum(phases[name]["G/pl"])
        phase_overhead[name] = regularization / (sum(seconds[name]) - regularization)

    return {
        "resolution": settings.train_resolution,
        "batch_size": settings.train_batch,
        "pl_interval": PL_INTERVAL,
        "pl_batch_shrink": PL_BATCH_SHRINK,
        "steps_timed": steps,
        "ms_per_step": ms_per_step,
        "overhead": overhead,
        "phase_ms_per_step": phase_ms_per_step,
        "phase_overhead": phase_overhead,
        "window_seconds": seconds,
        "first_window_seconds": warmup_seconds,
        "compiled_fell_back": not compiled.compiled,
    }


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def run(settings: Settings) -> dict:
    """Run every measurement and return the JSON-ready report."""
    started = time.perf_counter()
    report: dict = {
        "meta": {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "pathlength": pathlength.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_start": load_average(),
            "compiled_backend": settings.compiled_backend,
            "trainer_compile_backend": trainer_compile_backend(settings),
            "synthesis_kwargs": SYNTHESIS_KWARGS,
            "generator_kwargs": settings.generator_kwargs,
            "repeats": settings.repeats,
            "memory": "peak CPU allocator bytes during one step above those alive before it (torch.profiler memory events), MiB",
            "flops": "torch.utils.flop_counter.FlopCounterMode; compiled uses the textbook count (same ops)",
        }
    }

    generators: dict[int, Generator] = {}
    compiled_steps: dict[int, CompiledPathLengthPenalty] = {}
    for resolution in sorted({*settings.pixel_resolutions, settings.batch_resolution}):
        generators[resolution] = make_generator(resolution, settings)
        compiled_steps[resolution] = make_compiled(generators[resolution], settings)

    cases: dict[tuple[int, int], dict] = {}
    configurations = [(resolution, settings.pixel_batch) for resolution in settings.pixel_resolutions]
    configurations += [(settings.batch_resolution, batch) for batch in settings.batch_sizes]
    for resolution, batch in dict.fromkeys(configurations):
        compiled = compiled_steps[resolution] if batch in settings.compiled_batch_sizes or resolution != settings.batch_resolution else None
        cases[(resolution, batch)] = benchmark_case(generators[resolution], batch, compiled, settings)

    pixel_cases = [cases[(resolution, settings.pixel_batch)] for resolution in settings.pixel_resolutions]
    batch_cases = [cases[(settings.batch_resolution, batch)] for batch in settings.batch_sizes]
    report["cases"] = list(cases.values())
    report["scaling"] = {
        "pixels": {"batch": settings.pixel_batch, "exponents": fit_scaling(pixel_cases, "pixels")},
        "batch": {"resolution": settings.batch_resolution, "exponents": fit_scaling(batch_cases, "batch")},
    }
    report["training"] = benchmark_training(settings)

    report["meta"]["load_average_end"] = load_average()
    report["meta"]["wall_s"] = time.perf_counter() - started
    return report


# Row labels and order of the four steps in the printed tables, as in docs/benchmarks.md.
STEP_LABELS = {
    "textbook": "(a) textbook",
    "pathlength": "(b) pathlength",
    "compiled": "(c) compiled",
    "forward_backward": "(d) forward_backward",
}
RATIO_COLUMNS = {
    "b/a": "pathlength/textbook",
    "c/a": "compiled/textbook",
    "a/d": "textbook/forward_backward",
    "b/d": "pathlength/forward_backward",
    "c/d": "compiled/forward_backward",
}
TRAINER_LABELS = {"none": "no PLR", "eager": "eager PLR", "compiled": "`--compile`"}
PHASES = ("G/main", "G/pl", "D/main", "D/r1")


def format_report(report: dict) -> str:
    """Return the report as the Markdown tables of docs/benchmarks.md, after a line on the machine and backends."""
    meta = report["meta"]
    lines = [
        f"torch {meta['torch']}, {meta['cpu_count']} CPUs, {meta['torch_threads']} threads, "
        f"load {meta['load_average_start']} -> {meta['load_average_end']}, "
        f"compiled step backend {meta['compiled_backend'] or 'none (torch.func, not compiled)'}, "
        f"trainer --compile backend {meta['trainer_compile_backend']}",
        "",
        "| res | batch | step | median ms | p25-p75 ms | peak MiB | GFLOP | GFLOP/s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        for method, label in STEP_LABELS.items():
            values = case["methods"].get(method)
            if values is None:
                continue
            lines.append(
                f"| {case['resolution']} | {case['batch']} | {label} | {values['median_ms']:.1f} | "
                f"{values['p25_ms']:.1f}-{values['p75_ms']:.1f} | {values['peak_memory_mib']:.1f} | "
                f"{values['gflop']:.3f} | {values['gflop_per_s']:.1f} |"
            )

    lines += ["", "| res | batch | " + " | ".join(RATIO_COLUMNS) + " |", "|---:|---:|" + "---:|" * len(RATIO_COLUMNS)]
    for case in report["cases"]:
        ratios = [case["ratios"].get(key) for key in RATIO_COLUMNS.values()]
        cells = " | ".join("" if value is None else f"{value:.2f}" for value in ratios)
        lines.append(f"| {case['resolution']} | {case['batch']} | {cells} |")

    lines += ["", "| against | " + " | ".join(STEP_LABELS) + " |", "|---|" + "---:|" * len(STEP_LABELS)]
    for key, fit in report["scaling"].items():
        exponents = [fit["exponents"].get(method) for method in STEP_LABELS]
        cells = " | ".join("" if value is None else f"{value:.2f}" for value in exponents)
        fixed_size = f"batch {fit['batch']}" if key == "pixels" else f"{fit['resolution']}x{fit['resolution']}"
        lines.append(f"| {key} ({fixed_size}) | {cells} |")

    training = report["training"]
    lines += [
        "",
        f"Training at {training['resolution']}x{training['resolution']}, batch {training['batch_size']}, "
        f"interval {training['pl_interval']}, shrink {training['pl_batch_shrink']} "
        f"(ms per step over {training['steps_timed']} steps):",
        "",
        "| trainer | step | " + " | ".join(PHASES) + " | overhead of PLR |",
        "|---|---:|" + "---:|" * len(PHASES) + "---:|",
    ]
    for name, label in TRAINER_LABELS.items():
        phase_ms = training["phase_ms_per_step"][name]
        overhead = ""
        if name in training["phase_overhead"]:
            overhead = (
                f"**{training['phase_overhead'][name] * 100:.1f}%** "
                f"(whole steps: {training['overhead'][name] * 100:.1f}%)"
            )
        phases = " | ".join(f"{phase_ms.get(phase, 0.0):.1f}" for phase in PHASES)
        lines.append(f"| {label} | {training['ms_per_step'][name]:.1f} | {phases} | {overhead} |")
    lines += ["", f"wall time {meta['wall_s']:.0f} s"]
    return "\n".join(lines)


def report_path(out: Path | None, quick: bool) -> Path:
    """Return where the JSON report goes: ``out`` when given, else the default of the mode."""
    if out is not None:
        return out
    return DEFAULT_QUICK_OUT if quick else DEFAULT_OUT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny configuration in a few seconds (for tests): no inductor, the trainer's --compile through aot_eager",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON report path (default {DEFAULT_OUT}, with --quick {DEFAULT_QUICK_OUT})",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default, 1 with --quick)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = QUICK if args.quick else FULL
    threads = args.threads if args.threads is not None else settings.threads
    if threads is not None:
        torch.set_num_threads(threads)
    report = run(settings)

    out = report_path(args.out, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
