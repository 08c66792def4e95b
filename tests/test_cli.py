"""Tests of the ``pathlength`` command line: train and generate, exit codes and one-line errors,
resume, and the subcommand registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from pathlength import cli
from pathlength.training import TrainConfig

# A model small enough that a CLI training run of a few steps takes about a second.
TINY_MODEL = {
    "resolution": 8,
    "batch_size": 4,
    "z_dim": 8,
    "w_dim": 8,
    "channel_base": 32,
    "channel_max": 8,
    "num_samples": 4,
    "pl_interval": 2,
    "r1_interval": 2,
    "device": "cpu",
}


def run_cli(arguments, capsys) -> tuple[int, str, str]:
    """Run ``pathlength ARGUMENTS`` in-process and return (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(argument) for argument in arguments])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tiny_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_MODEL))
    return path


@pytest.fixture
def trained_run(tmp_path, tiny_config_file, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", tiny_config_file, "--out", out, "--steps", 2, "--no-progress"], capsys)
    assert code == 0, err
    return out


def bad_argument_cases(tmp_path):
    not_empty = tmp_path / "not_empty"
    not_empty.mkdir()
    (not_empty / "file.txt").write_text("x")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [
        (["train", "--out", tmp_path / "r1", "--steps", "-5"], "'-5'"),
        (["train", "--out", tmp_path / "r2", "--batch-size", "0"], "'0'"),
        (["train", "--out", tmp_path / "r3", "--steps", "ten"], "'ten'"),
        (["train", "--out", tmp_path / "r4", "--data", "no_such_dataset"], "'no_such_dataset'"),
        (["train", "--out", tmp_path / "r5", "--data", tmp_path / "missing_folder"], "missing_folder"),
        (["train", "--out", not_empty], "not_empty"),
        (["train", "--out", a_file / "run"], "a_file"),
        (["train", "--out", tmp_path / "r6", "--resolution", "12"], "12"),
        (["train", "--out", tmp_path / "r7", "--no-pl", "--pl-weight", "3"], "--pl-weight 3"),
        (["train", "--out", tmp_path / "r8", "--resume"], "r8"),
        (["train", "--out", tmp_path / "r9", "--pl-weight", "nan"], "'nan'"),
        (["generate", tmp_path / "no_run", "--out", tmp_path / "grid.png"], "no_run"),
        (["generate", tmp_path, "--out", tmp_path / "grid.jpg"], "grid.jpg"),
        (["generate", tmp_path, "--out", tmp_path / "grid.png", "--num", "0"], "'0'"),
    ]


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    for arguments, named_value in bad_argument_cases(tmp_path):
        code, out, err = run_cli(arguments, capsys)

        assert code == 2, (arguments, err)
        assert len(err.strip().splitlines()) == 1, err
        assert named_value in err, (named_value, err)
        assert "error" in err


def test_bad_arguments_create_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"

    code, _, _ = run_cli(["train", "--out", out, "--data", "no_such_dataset"], capsys)

    assert code == 2
    assert not out.exists()


def test_train_writes_run_folder(trained_run):
    config = TrainConfig.load(trained_run / "config.json")

    assert config.steps == 2
    assert config.resolution == 8
    assert (trained_run / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert (trained_run / "samples" / "latest.png").is_file()


def test_train_resume_continues_run(trained_run, capsys):
    code, out, err = run_cli(["train", "--out", trained_run, "--resume", "--steps", 3, "--no-progress"], capsys)

    assert code == 0, err
    assert "step 3" in out
    assert (trained_run / "checkpoints" / "latest").read_text().strip() == "step-0000003"


def test_train_resume_rejects_changed_setting(trained_run, capsys):
    code, _, err = run_cli(["train", "--out", trained_run, "--resume", "--pl-weight", 1], capsys)

    assert code == 2
    assert "pl_weight" in err
    assert len(err.strip().splitlines()) == 1


def test_train_no_pl_records_zero_pl_weight(tmp_path, tiny_config_file, capsys):
    out = tmp_path / "run"

    code, _, err = run_cli(["train", "--config", tiny_config_file, "--out", out, "--steps", 1, "--no-pl", "--no-progress"], capsys)

    assert code == 0, err
    assert TrainConfig.load(out / "config.json").pl_weight == 0


@pytest.mark.parametrize(("num", "scale", "expected_size"), [(10, 1, (4 * 8, 3 * 8)), (64, 2, (8 * 16, 8 * 16))])
def test_generate_writes_requested_grid(trained_run, tmp_path, capsys, num, scale, expected_size):
    grid_path = tmp_path / "grid.png"

    code, out, err = run_cli(["generate", trained_run, "--num", num, "--out", grid_path, "--scale", scale], capsys)

    with Image.open(grid_path) as grid:
        size, mode = grid.size, grid.mode
    assert code == 0, err
    assert size == expected_size
    assert mode == "L"
    assert str(grid_path) in out


def test_generate_same_seed_same_grid(trained_run, tmp_path, capsys):
    first, second, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"

    run_cli(["generate", trained_run / "checkpoints" / "step-0000002", "--out", first, "--seed", 3], capsys)
    run_cli(["generate", trained_run, "--out", second, "--seed", 3], capsys)
    run_cli(["generate", trained_run, "--out", other, "--seed", 4, "--truncation", 0.5], capsys)

    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_registered_command_runs(capsys):
    seen = []

    def add_arguments(parser):
        parser.add_argument("--value", type=int, required=True)

    def run(args):
        seen.append(args.value)
        return 0

    command = cli.Command(name="echo-test", help="test command", add_arguments=add_arguments, run=run)
    cli.register_command(command)
    try:
        code, _, _ = run_cli(["echo-test", "--value", 5], capsys)
    finally:
        del cli.COMMANDS["echo-test"]

    assert code == 0
    assert seen == [5]


def test_registering_taken_name_raises():
    duplicate = cli.Command(name="train", help="", add_arguments=lambda parser: None, run=lambda args: 0)

    with pytest.raises(ValueError, match="'train' is already registered"):
        cli.register_command(duplicate)


def test_unexpected_failure_exits_1_with_one_line(monkeypatch, tmp_path, capsys):
    def broken_train(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("pathlength.training.train", broken_train)

    code, _, err = run_cli(["train", "--out", tmp_path / "run"], capsys)

    assert code == 1
    assert err.strip() == (
        "pathlength train: error: RuntimeError: disk on fire second line (rerun with --debug for the traceback)"
    )


def test_python_m_pathlength_exit_codes(tmp_path):
    help_result = subprocess.run([sys.executable, "-m", "pathlength", "--help"], capture_output=True, text=True)
    bad_result = subprocess.run(
        [sys.executable, "-m", "pathlength", "train", "--out", str(tmp_path / "run"), "--steps", "-1"],
        capture_output=True,
        text=True,
    )

    assert help_result.returncode == 0
    assert "train" in help_result.stdout
    assert "generate" in help_result.stdout
    assert bad_result.returncode == 2
    assert bad_result.stderr.strip() == (
        "pathlength train: error: argument --steps: must be an integer >= 0, got '-1' (see pathlength train --help)"
    )
