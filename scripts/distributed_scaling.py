"""Measure the training throughput of `pathlength train` with one process and with two processes
under torchrun on this machine, in images per second, for docs/distributed.md.

Every variant trains the default model on the bundled digits for the same number of steps and
reads ``images_per_second`` from its metrics.jsonl, leaving out the first metric window (start-up,
first path length step). The thread count per process is set with OMP_NUM_THREADS, which torch
reads at start-up as its intra-op thread count (torchrun sets 1 by default).

    python scripts/distributed_scaling.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (label, processes, threads per process, precision)
VARIANTS = (
    ("1 process, 2 threads", 1, 2, "fp32"),
    ("1 process, 1 thread", 1, 1, "fp32"),
    ("2 processes, 1 thread each", 2, 1, "fp32"),
    ("1 process, 2 threads, bf16", 1, 2, "bf16"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(processes: int, arguments: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "pathlength", *arguments]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "pathlength",
        *arguments,
    ]


def measure(label: str, processes: int, threads: int, precision: str, steps: int, batch_size: int, folder: Path) -> dict:
    """Train one variant and return its throughput and the load average around it."""
    out = folder / label.replace(" ", "_").replace(",", "")
    log_interval = max(1, steps // 4)
    arguments = [
        "train",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--precision",
        precision,
        "--device",
        "cpu",
        "--log-interval",
        str(log_interval),
        "--sample-interval",
        str(steps),
        "--checkpoint-interval",
        str(steps),
        "--no-progress",
    ]
    environment = {name: value for name, value in os.environ.items() if name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = str(threads)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    completed = subprocess.run(train_command(processes, arguments), env=environment, capture_output=True, text=True)
    wall_seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    if completed.returncode != 0:
        raise RuntimeError(f"{label} failed with exit code {completed.returncode}: {completed.stderr[-2000:]}")

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = [record for record in records if record["step"] > log_interval]
    # Every window has the same number of steps and images, so the overall rate is the harmonic mean.
    total = len(measured) / sum(1 / record["images_per_second"] for record in measured)
    return {
        "variant": label,
        "processes": processes,
        "threads_per_process": threads,
        "precision": precision,
        "images_per_second_total": total,
        "images_per_second_per_process": total / processes,
        "measured_steps": f"{log_interval + 1}-{steps}",
        "window_images_per_second": [round(record["images_per_second"], 1) for record in records],
        "wall_seconds": wall_seconds,
        "load_before": load_before,
        "load_after": load_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per variant (default: 200)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size (default: 32)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON list")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        results = [
            measure(label, processes, threads, precision, args.steps, args.batch_size, Path(folder))
            for label, processes, threads, precision in VARIANTS
        ]

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'variant':32} {'total img/s':>12} {'per process':>12} {'load before/after':>18}")
    for result in results:
        print(
            f"{result['variant']:32} {result['images_per_second_total']:12.1f} "
            f"{result['images_per_second_per_process']:12.1f} "
            f"{result['load_before']:8.2f}/{result['load_after']:<8.2f}"
        )


if __name__ == "__main__":
    main()
