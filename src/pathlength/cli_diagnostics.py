"""The diagnostic verbs of the ``pathlength`` command: ``measure`` (path-length statistics and the
classifier Frechet distance), ``ppl`` (perceptual path length), ``project`` (fit w to an image) and
``compare`` (a report on two groups of runs). Importing this module registers them."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch

from pathlength.cli import EXIT_SUCCESS, Command, UsageError, _integer, _number, register_command

logger = logging.getLogger(__name__)

DISTANCE_HELP = (
    "image distance: 'pixel' (mean squared error), 'feature' (features of the bundled digits classifier, "
    "meaningful for digit-like images) or 'lpips:PATH' (LPIPS on VGG16 weights from the local file PATH)"
)
CHECKPOINT_HELP = "a run folder (its newest checkpoint) or a checkpoint folder"
# NOTE: the diagnostic verbs and pathlength.report have run on the CPU only; --device cuda is untested.
DEVICE_HELP = "'cpu', 'cuda' or 'cuda:N' (default: cuda when available, else cpu)"


# ---------------------------------------------------------------------------------------------
# shared helpers


def distance_option(text: str) -> str:
    """Check the syntax of a --distance value ('pixel', 'feature' or 'lpips:PATH') and return it."""
    if text in ("pixel", "feature") or (text.startswith("lpips:") and len(text) > len("lpips:")):
        return text
    raise argparse.ArgumentTypeError(f"must be 'pixel', 'feature' or 'lpips:PATH' (a VGG16/LPIPS weights file), got {text!r}")


def build_distance(text: str) -> Any:
    """Build the distance a --distance value names; a missing or unreadable LPIPS file raises UsageError."""
    from pathlength.diagnostics import FeatureDistance, LPIPSDistance, PixelDistance

    if text == "pixel":
        return PixelDistance()
    if text == "feature":
        return FeatureDistance()
    try:
        return LPIPSDistance.from_file(text.removeprefix("lpips:"))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--distance {text!r}: {error}") from error


def add_common_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """Add the generator, seed, device and --json arguments that every diagnostic verb takes."""
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help=CHECKPOINT_HELP)
    parser.add_argument("--seed", type=_integer(0), default=0, help=f"{seed_help} (default: 0)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw generator G instead of its moving average G_ema")
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there")


def load_checkpoint_generator(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Load the generator of ``args.checkpoint`` on ``args.device`` (CheckpointError for a bad path)."""
    from pathlength.training import load_generator, resolve_device

    return load_generator(args.checkpoint, device=resolve_device(args.device), ema=not args.no_ema)


def checkpoint_fields(info: dict[str, Any]) -> dict[str, Any]:
    """Return the checkpoint, network and step of a loaded generator for JSON output."""
    return {"checkpoint": info["checkpoint"], "network": info["network"], "step": info["step"]}


def print_json(value: dict[str, Any]) -> None:
    """Print ``value`` as one line of strict JSON on stdout (non-finite numbers become null)."""
    from pathlength.report.files import to_json

    print(to_json(value, indent=None))


def describe_checkpoint(info: dict[str, Any]) -> str:
    """Return "G_ema at step N of CHECKPOINT" for readable output."""
    return f"{info['network']} at step {info['step']} of {info['checkpoint']}"


# ---------------------------------------------------------------------------------------------
# measure


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pathlength measure``."""
    add_common_arguments(parser, "seed of the latents, the noise y and the generated images")
    parser.add_argument("--num", type=_integer(1), default=1024, help="latents whose path lengths are measured (default: 1024)")
    parser.add_argument("--noise-draws", type=_integer(1), default=4, help="random image-space directions y per latent (default: 4)")
    parser.add_argument("--batch-size", type=_integer(1), default=64, help="latents per forward pass (default: 64)")
    parser.add_argument("--bins", type=_integer(1), default=16, help="bins of the length histogram (default: 16)")
    parser.add_argument(
        "--frechet-num", type=_integer(2), default=2000, help="generated images for the classifier Frechet distance (default: 2000)"
    )
    parser.add_argument("--no-frechet", action="store_true", help="skip the classifier Frechet distance")


def run_measure(args: argparse.Namespace) -> int:
    """Run ``pathlength measure``: path-length statistics and the Frechet distance to the run's data."""
    from pathlength.data import DatasetError
    from pathlength.diagnostics import classifier_frechet_distance, path_length_statistics
    from pathlength.report import load_run_dataset, read_run_config

    generator, info = load_checkpoint_generator(args)
    statistics = path_length_statistics(
        generator, num_latents=args.num, noise_draws=args.noise_draws, batch_size=args.batch_size, seed=args.seed, bins=args.bins
    )

    frechet, data, notes = None, None, []
    if args.no_frechet:
        notes.append("The Frechet distance was skipped (--no-frechet).")
    else:
        config = read_run_config(info["checkpoint"])
        data = None if config is None else config.get("data")
        try:
            dataset = load_run_dataset(config, generator.img_resolution, generator.img_channels)
        except DatasetError as error:
            notes.append(f"The Frechet distance was skipped: the run's dataset is not available ({error}).")
        else:
            frechet = classifier_frechet_distance(generator, dataset, num=args.frechet_num, batch_size=args.batch_size, seed=args.seed)
            if data != "digits":
                notes.append(f"The Frechet distance uses a classifier trained on the bundled digits; for {data!r} it measures digit-like structure only.")

    if args.json:
        print_json(
            {
                **checkpoint_fields(info),
                "path_lengths": statistics.to_dict(),
                "frechet": None if frechet is None else dict(frechet.to_dict(), data=data),
                "notes": notes,
            }
        )
        return EXIT_SUCCESS

    print(f"Path lengths ||J_w^T y|| of {describe_checkpoint(info)}")
    print(f"  {args.num} latents x {args.noise_draws} noise draws = {statistics.lengths.numel()} lengths, seed {args.seed}")
    print()
    rows = (
        ("mean", statistics.mean),
        ("std", statistics.std),
        ("CV (std / mean)", statistics.cv),
        ("CV across w", statistics.cv_between),
        ("CV across y", statistics.cv_within),
        ("mean square", statistics.mean_square),
    )
    for name, value in rows:
        print(f"  {name:<16} {'n/a' if value is None else f'{value:.6g}'}")
    print("  quantiles        " + "  ".join(f"{percent:g}%: {value:.4g}" for percent, value in statistics.quantiles.items()))
    print()
    print("  histogram")
    for line in histogram_lines(statistics.histogram_counts, statistics.histogram_edges):
        print(f"    {line}")
    print()
    if frechet is not None:
        print(f"Frechet distance (digits classifier features): {frechet.value:.6g}")
        print(f"  {frechet.num_generated} generated vs {frechet.num_real} real images of {data!r}, seed {args.seed}")
    for note in notes:
        print(f"Note: {note}")
    return EXIT_SUCCESS


def histogram_lines(counts: list[int], edges: list[float], width: int = 40) -> list[str]:
    """Return one text line per histogram bin: its range, a bar scaled to ``width`` and the count.

    Example:
        >>> histogram_lines([1, 2], [0.0, 0.5, 1.0], width=4)
        ['[0, 0.5)  ##    1', '[0.5, 1]  ####  2']
    """
    largest = max(counts) if counts else 0
    labels = []
    for index in range(len(counts)):
        closing = "]" if index == len(counts) - 1 else ")"
        labels.append(f"[{edges[index]:.4g}, {edges[index + 1]:.4g}{closing}")
    label_width = max((len(label) for label in labels), default=0)
    lines = []
    for label, count in zip(labels, counts):
        bar = "#" * (round(width * count / largest) if largest else 0)
        lines.append(f"{label:<{label_width}}  {bar:<{width}}  {count}")
    return lines


register_command(
    Command(
        name="measure",
        help="measure the distribution of path lengths and the classifier Frechet distance of a trained generator",
        add_arguments=add_measure_arguments,
        run=run_measure,
    )
)


# ---------------------------------------------------------------------------------------------
# ppl


def add_ppl_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pathlength ppl``."""
    add_common_arguments(parser, "seed of the path endpoints and positions")
    parser.add_argument("--space", choices=("w", "z"), default="w", help="interpolate in W (lerp after the mapping network) or Z (slerp before it) (default: w)")
    parser.add_argument(
        "--sampling", choices=("end", "full"), default="end", help="measure at the path's start (end) or at uniform positions along it (full) (default: end)"
    )
    parser.add_argument("--num", type=_integer(1), default=1024, help="number of paths; the StyleGAN papers use 50000 (default: 1024)")
    parser.add_argument("--epsilon", type=_number(0), default=1e-4, help="step along the path, in units of the interpolation parameter t (default: 1e-4)")
    parser.add_argument("--distance", type=distance_option, default="feature", help=f"{DISTANCE_HELP} (default: feature)")
    parser.add_argument("--batch-size", type=_integer(1), default=64, help="paths per forward pass (default: 64)")


def run_ppl(args: argparse.Namespace) -> int:
    """Run ``pathlength ppl``: perceptual path length with the chosen space, sampling and distance."""
    from pathlength.diagnostics import perceptual_path_length

    if not 0 < args.epsilon < 1:
        raise UsageError(f"--epsilon must be a number in (0, 1) (the usual value is 1e-4), got {args.epsilon:g}")
    distance = build_distance(args.distance)
    generator, info = load_checkpoint_generator(args)
    result = perceptual_path_length(
        generator,
        num_samples=args.num,
        space=args.space,
        sampling=args.sampling,
        epsilon=args.epsilon,
        distance=distance,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    kept = result.distances.detach().cpu()[result.kept.cpu()].double()
    quantiles = {f"{percent:g}": float(torch.quantile(kept, percent / 100)) for percent in (5, 25, 50, 75, 95)}

    if args.json:
        # settings.distance is the distance's short name, while the option also names an LPIPS weights file.
        print_json({**checkpoint_fields(info), **result.to_dict(), "kept_quantiles": quantiles, "distance_option": args.distance})
        return EXIT_SUCCESS

    print(f"Perceptual path length of {describe_checkpoint(info)}")
    print(f"  PPL {float(result):.6g}")
    print(
        f"  {args.num} paths in {args.space.upper()}, {args.sampling} sampling, {args.distance} distance, epsilon {args.epsilon:g}, seed {args.seed}"
    )
    print(f"  {result.num_kept} paths kept between the 1st and 99th percentiles ({_bound(result.lower_bound)} to {_bound(result.upper_bound)})")
    print("  kept distances: " + "  ".join(f"{percent}%: {value:.4g}" for percent, value in quantiles.items()))
    print("  PPL values compare only with values of the same distance, space, sampling, epsilon and image size.")
    return EXIT_SUCCESS


def _bound(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


register_command(
    Command(
        name="ppl",
        help="measure the perceptual path length of a trained generator",
        add_arguments=add_ppl_arguments,
        run=run_ppl,
    )
)


# ---------------------------------------------------------------------------------------------
# project

PROJECTION_FILES = ("target.png", "projected.png", "side_by_side.png", "projection.json")


def add_project_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pathlength project``."""
    add_common_arguments(parser, "seed of the w statistics, the noise maps and the noise added to w")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target",
        metavar="IMAGE",
        help="image file to project; it is converted to the model's channels, center-cropped to a square and resized to its resolution",
    )
    target.add_argument("--target-index", type=_integer(0), metavar="I", help="project image I of the run's training dataset instead")
    parser.add_argument("--steps", type=_integer(1), default=1000, help="optimisation steps (default: 1000)")
    parser.add_argument("--out", metavar="DIR", help=f"folder for {', '.join(PROJECTION_FILES)} (created when missing; default: write nothing)")
    parser.add_argument("--noise", action="store_true", help="also optimise the synthesis network's noise inputs")
    parser.add_argument("--distance", type=distance_option, default="pixel", help=f"{DISTANCE_HELP} (default: pixel)")


def run_project(args: argparse.Namespace) -> int:
    """Run ``pathlength project``: fit w to one image and report PSNR and the distance."""
    from pathlength.diagnostics import project
    from pathlength.report.files import check_writable_folder

    distance = build_distance(args.distance)
    generator, info = load_checkpoint_generator(args)
    if args.target is not None:
        target, label, description = read_target_image(args.target, generator.img_resolution, generator.img_channels)
    else:
        target, label, description = read_dataset_target(info, args.target_index, generator)

    # The folder is checked before the projection runs, so a bad --out fails in seconds, not after it.
    if args.out is not None:
        try:
            check_writable_folder(args.out)
        except OSError as error:
            raise UsageError(f"cannot write --out {args.out!r}: {error.strerror or error}") from error
    logger.info("Projection target: %s", description["text"])

    result = project(generator, target, steps=args.steps, distance=distance, optimize_noise=args.noise, seed=args.seed, labels=label)
    psnr = float(result.psnr[0])
    distance_value = float(result.distance[0])
    summary = {
        **checkpoint_fields(info),
        "target": description,
        "psnr": psnr if math.isfinite(psnr) else None,
        "distance": {"name": args.distance, "value": distance_value},
        "final_loss": result.losses[-1],
        "settings": result.settings,
        "w": result.ws[0, 0].tolist() if result.ws.ndim == 3 else result.ws[0].tolist(),
    }

    files = write_projection(args.out, target, result.images[0], summary, result.losses) if args.out is not None else {}
    if args.json:
        print_json(dict(summary, files=files))
        return EXIT_SUCCESS

    print(f"Projected {description['source']} with {describe_checkpoint(info)}")
    print(f"  target: {description['text']}")
    print(f"  {args.steps} steps, {args.distance} distance{', noise inputs optimised' if args.noise else ''}, seed {args.seed}")
    print(f"  PSNR {psnr:.4g} dB (images in [-1, 1]); {args.distance} distance {distance_value:.6g}")
    if files:
        print(f"  wrote {', '.join(files.values())}")
    return EXIT_SUCCESS


def read_target_image(file: str, resolution: int, channels: int) -> tuple[torch.Tensor, None, dict[str, Any]]:
    """Load an image file as a float target [C, R, R] in [-1, 1] and describe the conversion.

    Raises:
        UsageError: when the file is missing or is not a readable image.
    """
    from PIL import Image

    from pathlength.data import load_image, uint8_to_float
    from pathlength.data.images import DECODE_ERRORS

    path = Path(file)
    if not path.is_file():
        raise UsageError(f"--target {file!r} not found; pass the path of an image file")
    try:
        with Image.open(path) as opened:
            width, height, mode = opened.width, opened.height, opened.mode
        pixels = load_image(path, resolution, channels)
    except DECODE_ERRORS as error:
        raise UsageError(f"--target {file!r} is not a readable image ({error}); pass a PNG, JPEG, WEBP or BMP file") from error

    side = min(width, height)
    steps = [f"converted from {mode} to {'grayscale' if channels == 1 else 'RGB'} ({channels} channel{'s' if channels > 1 else ''})"]
    if width != height:
        steps.append(f"center-cropped from {width}x{height} to {side}x{side}")
    if side != resolution:
        steps.append(f"resized from {side}x{side} to {resolution}x{resolution}")
    text = f"{file} ({width}x{height} pixels), " + ", ".join(steps)
    description = {
        "source": str(file),
        "original_size": [width, height],
        "original_mode": mode,
        "resolution": resolution,
        "channels": channels,
        "text": text,
    }
    return uint8_to_float(pixels), None, description


def read_dataset_target(info: dict[str, Any], index: int, generator: Any) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Return image ``index`` of the run's dataset as a target, with its one-hot label for a conditional generator.

    Raises:
        DatasetError: when the run's dataset cannot be loaded.
        UsageError: when ``index`` is out of range.
    """
    from pathlength.report import load_run_dataset, read_run_config

    config = read_run_config(info["checkpoint"])
    dataset = load_run_dataset(config, generator.img_resolution, generator.img_channels)
    if index >= len(dataset):
        raise UsageError(f"--target-index {index} is out of range: dataset {dataset.name!r} has {len(dataset)} images (0 to {len(dataset) - 1})")

    image, class_index = dataset[index]
    label = None
    c_dim = int(getattr(generator, "c_dim", 0) or 0)
    if c_dim > 0 and int(class_index) >= 0:
        label = torch.nn.functional.one_hot(class_index.clamp(max=c_dim - 1), c_dim).float()
    source = config.get("data") if config else dataset.name
    description = {
        "source": f"image {index} of {source!r}",
        "dataset": source,
        "index": index,
        "resolution": generator.img_resolution,
        "channels": generator.img_channels,
        "text": f"image {index} of the run's dataset {source!r}, as the run trained on it",
    }
    return image, label, description


def write_projection(out: str, target: torch.Tensor, projected: torch.Tensor, summary: dict[str, Any], losses: list[float]) -> dict[str, str]:
    """Write target.png, projected.png, side_by_side.png and projection.json into ``out`` atomically.

    Returns the written paths by file name.
    """
    from pathlength.data import float_to_uint8
    from pathlength.report.files import save_png_atomically, write_json_atomically
    from pathlength.training.samples import display_scale, make_grid

    folder = Path(out)
    pair = float_to_uint8(torch.stack([target.cpu(), projected.cpu()]))
    images = {
        "target.png": make_grid(pair[:1], columns=1),
        "projected.png": make_grid(pair[1:], columns=1),
        "side_by_side.png": make_grid(pair, columns=2, padding=2, scale=display_scale(pair.shape[-1], minimum_cell=128)),
    }
    try:
        written = {name: str(save_png_atomically(image, folder / name)) for name, image in images.items()}
        written["projection.json"] = str(write_json_atomically(folder / "projection.json", dict(summary, losses=losses)))
    except OSError as error:
        raise UsageError(f"cannot write --out {out!r}: {error.strerror or error}") from error
    return written


register_command(
    Command(
        name="project",
        help="find the latent w whose image matches a target image, and report PSNR",
        add_arguments=add_project_arguments,
        run=run_project,
    )
)


# ---------------------------------------------------------------------------------------------
# compare

COMPARE_DESCRIPTION = """\
Compare two groups of runs, for example with and without path length regularization over several
training seeds. Every run is measured on the same latents and the same projection targets.

  pathlength compare RUN_A RUN_B --out REPORT_DIR
  pathlength compare RUN_A1 RUN_A2 RUN_A3 --vs RUN_B1 RUN_B2 RUN_B3 --out REPORT_DIR

Without --vs, exactly two runs are given: the first is side A and the second side B. With --vs, the
runs before --vs are side A and the runs after it side B. REPORT_DIR receives report.md, report.json
and PNG plots.
"""


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pathlength compare``."""
    parser.description = COMPARE_DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("runs", nargs="+", metavar="RUN", help="side A's runs (run or checkpoint folders); without --vs, exactly two runs: A then B")
    parser.add_argument("--vs", nargs="+", metavar="RUN", help="side B's runs")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (created when missing; earlier report files are replaced)")
    parser.add_argument("--labels", nargs=2, metavar=("LABEL_A", "LABEL_B"), help="names of the sides (default: from the runs' pl_weight, else A and B)")
    parser.add_argument("--num", type=_integer(2), default=1024, help="latents for path lengths, PPL paths and generated images for the Frechet distance (default: 1024)")
    parser.add_argument("--noise-draws", type=_integer(1), default=4, help="random image-space directions y per latent (default: 4)")
    parser.add_argument("--projection-targets", type=_integer(0), default=16, help="dataset images every run projects; 0 skips projection (default: 16)")
    parser.add_argument("--projection-steps", type=_integer(1), default=1000, help="optimisation steps per projection (default: 1000)")
    parser.add_argument(
        "--projection-data",
        metavar="SOURCE",
        help="dataset (bundled name, folder or zip) of the projection targets, such as images kept out of training (default: the runs' training data)",
    )
    parser.add_argument("--no-frechet", action="store_true", help="skip the classifier Frechet distance")
    parser.add_argument(
        "--jacobian-latents",
        type=_integer(0),
        default=16,
        metavar="N",
        help="latents at which the exact Jacobian J_w gives its condition number; 0 skips it (default: 16)",
    )
    parser.add_argument("--seed", type=_integer(0), default=0, help="seed of every measurement and of the choice of projection targets (default: 0)")
    parser.add_argument("--batch-size", type=_integer(1), default=64, help="latents per forward pass (default: 64)")
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument("--json", action="store_true", help="print report.json's content as one JSON object on stdout and nothing else there")


def compare_sides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Return the runs of side A and side B from the positional runs and --vs.

    Raises:
        UsageError: when --vs is missing and the number of runs is not two.
    """
    if args.vs is not None:
        return list(args.runs), list(args.vs)
    if len(args.runs) != 2:
        raise UsageError(
            f"compare takes two runs (A B) or side A's runs, --vs and side B's runs; got {len(args.runs)} "
            f"run{'s' if len(args.runs) != 1 else ''} without --vs: {' '.join(args.runs)}"
        )
    return [args.runs[0]], [args.runs[1]]


def run_compare(args: argparse.Namespace) -> int:
    """Run ``pathlength compare``: measure both sides, then write report.md, report.json and the plots."""
    from pathlength.report import ComparisonError, MeasureSettings, compare_runs, write_report
    from pathlength.report.files import check_writable_folder
    from pathlength.training import resolve_checkpoint, resolve_device

    runs_a, runs_b = compare_sides(args)
    for path in runs_a + runs_b:
        resolve_checkpoint(path)
    device = resolve_device(args.device)
    try:
        check_writable_folder(args.out)
    except OSError as error:
        raise UsageError(f"cannot write --out {args.out!r}: {error.strerror or error}") from error

    settings = MeasureSettings(
        num=args.num,
        noise_draws=args.noise_draws,
        projection_targets=args.projection_targets,
        projection_steps=args.projection_steps,
        seed=args.seed,
        batch_size=args.batch_size,
        frechet=not args.no_frechet,
        jacobian_latents=args.jacobian_latents,
    )
    labels = tuple(args.labels) if args.labels is not None else None
    try:
        comparison = compare_runs(runs_a, runs_b, labels, settings, device=device, projection_data=args.projection_data)
    except ComparisonError as error:
        raise UsageError(str(error)) from error
    try:
        files = write_report(comparison, args.out)
    except OSError as error:
        raise UsageError(f"cannot write --out {args.out!r}: {error.strerror or error}") from error

    if args.json:
        print_json(dict(comparison.to_dict(), files={name: str(path) for name, path in files.items()}))
        return EXIT_SUCCESS

    from pathlength.report.markdown import summary_table

    print(f"Runs per side: {comparison.labels[0]}: {len(runs_a)}, {comparison.labels[1]}: {len(runs_b)}")
    print("\n".join(summary_table(comparison)))
    print()
    for metric in comparison.metrics:
        print(f"- {metric.statement}")
    if comparison.notes:
        print()
        print("Notes:")
        for note in comparison.notes:
            print(f"- {note}")
    print()
    print(f"Wrote {files['report.md']}, {files['report.json']} and {len(files) - 2} plots to {args.out}")
    return EXIT_SUCCESS


register_command(
    Command(
        name="compare",
        help="compare two groups of runs (for example with and without PLR) in a Markdown, JSON and PNG report",
        add_arguments=add_compare_arguments,
        run=run_compare,
    )
)

