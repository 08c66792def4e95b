"""The ``pathlength`` command line: ``train`` a reference StyleGAN2 model and ``generate`` sample grids.

Each subcommand is a `Command` in the `COMMANDS` registry: a function that adds its arguments
to an argparse parser and a function that runs it and returns the exit code. A new verb is added by
writing those two functions and calling `register_command` at import time of this module (or
of a module this one imports). Exit codes: 0 success, 2 bad arguments or input, 1 any other
failure, 130 interrupted; every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pathlength.data import DatasetError

if TYPE_CHECKING:
    from pathlength.training import TrainConfig

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Raised by a command for bad arguments or input; `main` prints it and exits with code 2."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, argument definitions and the function that runs it.

    ``run`` receives the parsed arguments and returns an exit code. It raises `UsageError` (or
    another error in `input_errors`) for bad input, which `main` turns into exit code 2.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Add ``command`` to the registry that `build_parser` reads; a name can be registered once."""
    if command.name in COMMANDS:
        raise ValueError(f"a command named {command.name!r} is already registered")
    COMMANDS[command.name] = command
    return command


def input_errors() -> tuple[type[Exception], ...]:
    """Return the exception types that mean bad arguments or input (exit code 2)."""
    from pathlength.training import CheckpointError, ConfigError, RunFolderError

    return (UsageError, ConfigError, DatasetError, CheckpointError, RunFolderError)


class _OneLineErrorParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line on stderr (exit code 2), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _number(minimum: float | None = None) -> Callable[[str], float]:
    bound = f" >= {minimum:g}" if minimum is not None else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------------------------------------
# train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pathlength train``; unset options keep the config defaults."""
    parser.add_argument("--config", help="JSON file of TrainConfig fields (a run's config.json); options given here override it")
    parser.add_argument("--data", help="bundled dataset name ('digits'), a folder of images or a dataset zip (default: digits)")
    parser.add_argument("--out", required=True, help="run folder; must be missing or empty unless --resume")
    parser.add_argument("--resolution", type=_integer(4), help="image height and width in pixels, a power of two (default: 16)")
    parser.add_argument("--steps", type=_integer(0), help="training steps, counted from the start of the run")
    parser.add_argument("--batch-size", type=_integer(1), help="images per step (default: 32); under torchrun the global batch, split evenly across processes")
    parser.add_argument("--pl-weight", type=_number(0), help="path length penalty weight; 0 turns it off (default: 2)")
    parser.add_argument("--pl-interval", type=_integer(1), help="generator steps between path length steps (default: 4)")
    parser.add_argument("--no-pl", action="store_true", help="train without path length regularization")
    parser.add_argument("--r1-gamma", type=_number(0), help="R1 penalty weight on real images (default: 0.1)")
    parser.add_argument("--conditional", action="store_true", default=None, help="train a class-conditional model")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest complete checkpoint")
    parser.add_argument("--seed", type=_integer(0), help="seed of every random draw (default: 0)")
    parser.add_argument(
        "--device",
        help="'cpu', 'cuda' or 'cuda:N' (default: cuda when available, else cpu); under torchrun each process "
        "uses cuda:LOCAL_RANK for 'cuda'",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="fp32; bf16 autocast (CPU or CUDA); fp16 autocast with gradient scaling (CUDA only) (default: fp32)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="run the path length steps as one graph compiled by torch.compile (fp32 only; the first "
        "regularized step waits about 30 s to 2 minutes for the compilation)",
    )
    parser.add_argument(
        "--no-pl-sync",
        action="store_true",
        help="under torchrun, keep a separate pl_mean in each process instead of averaging it over processes",
    )
    parser.add_argument(
        "--rank-checksums",
        metavar="DIR",
        help="at the end, each process writes DIR/rank-R.json with SHA-256 digests of its weights and its pl_mean",
    )
    parser.add_argument("--log-interval", type=_integer(1), help="steps between metric records (default: 50)")
    parser.add_argument("--sample-interval", type=_integer(1), help="steps between sample grids (default: 500)")
    parser.add_argument("--checkpoint-interval", type=_integer(1), help="steps between checkpoints (default: 500)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# Options of `pathlength train` that set the TrainConfig field of the same name.
_TRAIN_CONFIG_OPTIONS = (
    "data",
    "resolution",
    "steps",
    "batch_size",
    "pl_weight",
    "pl_interval",
    "r1_gamma",
    "conditional",
    "seed",
    "device",
    "precision",
    "compile",
    "log_interval",
    "sample_interval",
    "checkpoint_interval",
)


def train_config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """Build the TrainConfig for ``pathlength train``.

    The base is the run's saved config.json on --resume, else the --config file, else the
    defaults. Every option given on the command line is applied on top, and --out always wins.
    """
    from pathlength.training import TrainConfig
    from pathlength.training.run_folder import check_run_folder

    overrides = {name: getattr(args, name) for name in _TRAIN_CONFIG_OPTIONS if getattr(args, name) is not None}
    if args.no_pl:
        if overrides.get("pl_weight", 0) != 0:
            raise UsageError(f"--no-pl conflicts with --pl-weight {overrides['pl_weight']:g}; pass one of them")
        overrides["pl_weight"] = 0.0
    if args.no_pl_sync:
        overrides["pl_sync"] = False
    overrides["out"] = args.out

    if args.resume:
        if args.config is not None:
            raise UsageError(f"--config {args.config!r} cannot be combined with --resume, which reads the run's own config.json")
        base = TrainConfig.load(check_run_folder(args.out, resume=True).config).to_dict()
    elif args.config is not None:
        base = TrainConfig.load(args.config).to_dict()
    else:
        base = {}
    base.update(overrides)
    return TrainConfig.from_dict(base)


def run_train(args: argparse.Namespace) -> int:
    """Run ``pathlength train``; under torchrun every process runs it and rank 0 prints the summary."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from pathlength.training import train
    from pathlength.training.parallel import launch_environment

    config = train_config_from_arguments(args)
    with logging_redirect_tqdm(loggers=[logging.getLogger("pathlength")]):
        result = train(config, resume=args.resume, progress=not args.no_progress, rank_checksums=args.rank_checksums)
    environment = launch_environment()
    if environment is None or environment[0] == 0:
        print(f"Trained {result.run_dir} to step {result.step}; checkpoint {result.checkpoint}")
    return EXIT_SUCCESS


register_command(
    Command(
        name="train",
        help="train the reference StyleGAN2 generator with path length regularization",
        add_arguments=add_train_arguments,
        run=run_train,
    )
)


# ---------------------------------------------------------------------------------------------
# generate


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pathlength generate``."""
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its newest checkpoint) or a checkpoint folder")
    parser.add_argument("--num", type=_integer(1), default=64, help="number of images; the grid has ceil(sqrt(num)) columns (default: 64)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--seed", type=_integer(0), default=0, help="seed of the latents (default: 0)")
    parser.add_argument("--truncation", type=_number(), default=1.0, help="truncation psi; 1 samples without truncation (default: 1)")
    parser.add_argument("--scale", type=_integer(1), default=1, help="enlarge each pixel this many times (default: 1)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw generator G instead of its moving average G_ema")
    parser.add_argument("--device", help="'cpu', 'cuda' or 'cuda:N' (default: cuda when available, else cpu)")


def run_generate(args: argparse.Namespace) -> int:
    """Run ``pathlength generate``: write a grid of ``--num`` images from fixed latents as a PNG."""
    from pathlength.training import load_generator, resolve_device
    from pathlength.training.samples import fixed_latents, generate_images, grid_shape, make_grid, save_png

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got {args.out!r}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {args.out!r}: folder {str(out.parent)!r} does not exist; create it first")

    device = resolve_device(args.device)
    generator, info = load_generator(args.checkpoint, device=device, ema=not args.no_ema)
    z, c, _ = fixed_latents(generator, args.num, args.seed, labels_per_column=False)
    images = generate_images(generator, z, c, truncation_psi=args.truncation)
    rows, columns = grid_shape(args.num)
    grid = make_grid(images, columns=columns, scale=args.scale)

    try:
        save_png(grid, out)
    except OSError as error:
        raise UsageError(f"cannot write --out {args.out!r}: {error.strerror or error}") from error
    print(
        f"Wrote {args.num} images ({rows}x{columns} grid, {grid.width}x{grid.height} pixels) from "
        f"{info['network']} of {info['checkpoint']} (step {info['step']}) to {out}"
    )
    return EXIT_SUCCESS


register_command(
    Command(
        name="generate",
        help="write a PNG grid of images from a trained generator",
        add_arguments=add_generate_arguments,
        run=run_generate,
    )
)


# ---------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    """Return the ``pathlength`` parser with one subparser per registered command."""
    parser = _OneLineErrorParser(prog="pathlength", description="Path length regularization for PyTorch generators.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(subparser)
    return parser


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    """Send INFO and higher records of the ``pathlength`` loggers to stderr while a command runs."""
    package_logger = logging.getLogger("pathlength")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"pathlength {args.command}"

    try:
        with _log_to_stderr():
            return COMMANDS[args.command].run(args)
    except input_errors() as error:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - every other failure becomes exit code 1 with one line
        if args.debug:
            raise
        print(f"{prog}: error: {type(error).__name__}: {_one_line(error)} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


import pathlength.cli_diagnostics  # noqa: E402, F401  (registers measure, ppl, project and compare)
