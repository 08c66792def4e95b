"""Tests of the diagnostic verbs of the ``pathlength`` command: measure, ppl, project and compare,
their JSON output, the files they write and their exit codes for bad input."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from tiny_runs import run_cli, diagnostics_environment, train_tiny_run

# Counts that keep every verb to about a second on the tiny model.
FAST_MEASURE = ["--num", 8, "--noise-draws", 2, "--frechet-num", 8]
FAST_COMPARE = ["--num", 8, "--noise-draws", 2, "--projection-targets", 2, "--projection-steps", 2]


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    with diagnostics_environment(tmp_path_factory) as folder:
        yield folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, environment):
    root = tmp_path_factory.mktemp("runs")
    return {
        "plr": train_tiny_run(root / "plr"),
        "no_plr": train_tiny_run(root / "no_plr", pl_weight=0.0),
    }


@pytest.fixture(scope="module")
def target_image(tmp_path_factory):
    # A 30x20 RGB image: the tiny grayscale 8x8 model needs conversion, a crop and a resize.
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def parse_json_stdout(out: str) -> dict:
    """Parse stdout that must be exactly one JSON object on one line."""
    assert out.count("\n") == 1, out
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


@pytest.fixture(scope="module")
def measure_output(runs):
    return run_cli(["measure", runs["plr"], *FAST_MEASURE, "--json"])


def test_measure_json_has_statistics(measure_output):
    code, out, err = measure_output

    assert code == 0, err
    result = parse_json_stdout(out)
    lengths = result["path_lengths"]
    assert result["step"] == 4
    assert result["network"] == "G_ema"
    assert lengths["num_lengths"] == 16
    assert sum(lengths["histogram"]["counts"]) == 16
    assert lengths["mean"] > 0
    assert lengths["cv"] == pytest.approx(lengths["std"] / lengths["mean"], rel=1e-9)
    quantiles = [lengths["quantiles"][key] for key in ("1", "5", "25", "50", "75", "95", "99")]
    assert quantiles == sorted(quantiles)


def test_measure_json_has_frechet_distance(measure_output):
    code, out, err = measure_output

    assert code == 0, err
    frechet = parse_json_stdout(out)["frechet"]
    assert frechet["data"] == "digits"
    assert frechet["num_generated"] == 8
    assert frechet["num_real"] == 1797
    assert math.isfinite(frechet["frechet_distance"])
    assert frechet["frechet_distance"] >= 0


def test_measure_table_is_readable(runs):
    code, out, err = run_cli(["measure", runs["plr"], *FAST_MEASURE, "--bins", 4])

    assert code == 0, err
    assert "CV (std / mean)" in out
    assert "CV across w" in out
    assert "CV across y" in out
    assert "8 latents x 2 noise draws = 16 lengths" in out
    assert "Frechet distance (digits classifier features)" in out
    assert len([line for line in out.splitlines() if line.strip().startswith("[")]) == 4


def test_measure_no_frechet_skips_it(runs):
    code, out, err = run_cli(["measure", runs["plr"], *FAST_MEASURE, "--no-frechet", "--json"])

    assert code == 0, err
    result = parse_json_stdout(out)
    assert result["frechet"] is None
    assert any("--no-frechet" in note for note in result["notes"])


def test_measure_missing_dataset_notes_skip(runs, tmp_path):
    moved = shutil.copytree(runs["plr"], tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["data"] = str(tmp_path / "folder_that_moved")
    (moved / "config.json").write_text(json.dumps(config))

    code, out, err = run_cli(["measure", moved, *FAST_MEASURE, "--json"])

    assert code == 0, err
    result = parse_json_stdout(out)
    assert result["frechet"] is None
    assert any("folder_that_moved" in note for note in result["notes"])


def test_ppl_json_has_value(runs):
    code, out, err = run_cli(["ppl", runs["plr"], "--num", 8, "--distance", "pixel", "--json"])

    assert code == 0, err
    result = parse_json_stdout(out)
    assert result["num_samples"] == 8
    assert 1 <= result["num_kept"] <= 8
    assert math.isfinite(result["ppl"])
    assert result["ppl"] >= 0
    assert result["settings"]["space"] == "w"
    assert result["settings"]["sampling"] == "end"
    assert result["settings"]["distance"] == "pixel"
    assert result["kept_quantiles"]["5"] <= result["kept_quantiles"]["95"]


def test_ppl_passes_space_sampling_epsilon(runs):
    arguments = ["ppl", runs["plr"], "--num", 8, "--space", "z", "--sampling", "full", "--epsilon", "0.001", "--seed", 3, "--json"]

    code, out, err = run_cli(arguments)

    assert code == 0, err
    result = parse_json_stdout(out)
    settings = result["settings"]
    assert settings["space"] == "z"
    assert settings["sampling"] == "full"
    assert settings["epsilon"] == 0.001
    assert result["distance_option"] == "feature"
    assert settings["seed"] == 3
    assert settings["distance"] == "feature"


def test_ppl_table_names_settings(runs):
    code, out, err = run_cli(["ppl", runs["plr"], "--num", 8])

    assert code == 0, err
    assert "PPL " in out
    assert "8 paths in W, end sampling, feature distance, epsilon 0.0001" in out


def test_project_writes_four_files(runs, target_image, tmp_path):
    out_dir = tmp_path / "projection"

    code, out, err = run_cli(["project", runs["plr"], "--target", target_image, "--steps", 3, "--out", out_dir, "--json"])

    assert code == 0, err
    result = parse_json_stdout(out)
    assert sorted(path.name for path in out_dir.iterdir()) == ["projected.png", "projection.json", "side_by_side.png", "target.png"]
    assert sorted(result["files"]) == ["projected.png", "projection.json", "side_by_side.png", "target.png"]
    with Image.open(out_dir / "target.png") as target, Image.open(out_dir / "projected.png") as projected:
        assert (target.format, target.size, target.mode) == ("PNG", (8, 8), "L")
        assert (projected.format, projected.size, projected.mode) == ("PNG", (8, 8), "L")
    with Image.open(out_dir / "side_by_side.png") as pair:
        assert pair.width > 2 * pair.height - 10, "target and projection sit side by side"
    saved = json.loads((out_dir / "projection.json").read_text())
    assert saved["psnr"] == pytest.approx(result["psnr"], rel=1e-12)
    assert len(saved["losses"]) == 3


def test_project_describes_conversion(runs, target_image):
    code, out, err = run_cli(["project", runs["plr"], "--target", target_image, "--steps", 2, "--json"])

    assert code == 0, err
    target = parse_json_stdout(out)["target"]
    assert target["original_size"] == [30, 20]
    assert target["original_mode"] == "RGB"
    assert "center-cropped from 30x20 to 20x20" in target["text"]
    assert "resized from 20x20 to 8x8" in target["text"]
    assert "grayscale" in target["text"]


def test_project_reports_psnr_and_distance(runs, target_image):
    code, out, err = run_cli(["project", runs["plr"], "--target", target_image, "--steps", 2])

    assert code == 0, err
    assert "PSNR " in out
    assert "pixel distance" in out
    assert "(30x20 pixels)" in out


def test_project_target_index_uses_dataset(runs):
    code, out, err = run_cli(["project", runs["plr"], "--target-index", 3, "--steps", 2, "--noise", "--json"])

    assert code == 0, err
    result = parse_json_stdout(out)
    assert result["target"]["index"] == 3
    assert result["target"]["dataset"] == "digits"
    assert result["settings"]["optimize_noise"] is True
    assert math.isfinite(result["psnr"])
    assert result["files"] == {}
    assert len(result["w"]) == 8


def test_compare_two_runs_writes_report(runs, tmp_path):
    report = tmp_path / "report"

    code, out, err = run_cli(["compare", runs["plr"], runs["no_plr"], "--out", report, *FAST_COMPARE, "--json"])

    assert code == 0, err
    result = parse_json_stdout(out)
    assert result["labels"] == ["PLR weight 2", "no PLR"]
    assert result["num_runs"] == [1, 1]
    assert [metric["metric"] for metric in result["metrics"]] == [
        "cv",
        "cv_between",
        "cv_within",
        "jacobian_condition_median",
        "ppl",
        "frechet_distance",
        "projection_psnr_median",
    ]
    for name in ("report.md", "report.json", "length_histograms.png", "training_curves.png", "ppl_distributions.png", "projection_psnr.png"):
        assert (report / name).is_file(), name
    assert json.loads((report / "report.json").read_text())["num_runs"] == [1, 1]


def test_compare_vs_form_and_labels(runs, tmp_path):
    report = tmp_path / "report"
    arguments = ["compare", runs["plr"], runs["no_plr"], "--vs", runs["no_plr"], "--labels", "first side", "second side"]

    code, out, err = run_cli([*arguments, "--out", report, *FAST_COMPARE, "--no-frechet"])

    assert code == 0, err
    markdown = (report / "report.md").read_text()
    assert "| first side (n=2) | second side (n=1) |" in markdown
    assert "The runs of side 'first side' were trained with different pl_weight values (0, 2)." in markdown
    assert "Runs per side: first side: 2, second side: 1" in out
    assert "Wrote " in out
    saved = json.loads((report / "report.json").read_text())
    assert saved["num_runs"] == [2, 1]
    assert saved["sides"][0]["runs"][0]["frechet"] is None


def bad_input_cases(runs, target_image, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [
        (["measure", tmp_path / "no_such_run"], "no_such_run"),
        (["measure", empty], "empty_run"),
        (["ppl", runs["plr"], "--distance", "cosine"], "'cosine'"),
        (["ppl", runs["plr"], "--distance", f"lpips:{tmp_path / 'vgg.pt'}"], "vgg.pt"),
        (["ppl", runs["plr"], "--epsilon", "0"], "--epsilon"),
        (["ppl", runs["plr"], "--epsilon", "1"], "(0, 1)"),
        (["project", runs["plr"], "--target", not_image], "notes.txt"),
        (["project", runs["plr"], "--target", tmp_path / "missing.png"], "missing.png"),
        (["project", runs["plr"], "--target", target_image, "--out", a_file / "out"], "a_file"),
        (["project", runs["plr"], "--target-index", 5000], "5000"),
        (["project", runs["plr"]], "--target"),
        (["compare", runs["plr"], runs["no_plr"], runs["plr"], "--out", tmp_path / "r1"], "3 runs"),
        (["compare", runs["plr"], tmp_path / "no_such_run", "--out", tmp_path / "r2"], "no_such_run"),
        (["compare", runs["plr"], runs["no_plr"], "--out", a_file / "report"], "a_file"),
    ]


def test_bad_input_exits_2_with_one_line(runs, target_image, tmp_path):
    for arguments, named_value in bad_input_cases(runs, target_image, tmp_path):
        code, out, err = run_cli(arguments)

        assert code == 2, (arguments, err)
        assert out == "", (arguments, out)
        assert len(err.strip().splitlines()) == 1, (arguments, err)
        assert named_value in err, (named_value, err)


def test_bad_input_creates_no_report_folder(runs, tmp_path):
    report = tmp_path / "report"

    code, _, _ = run_cli(["compare", runs["plr"], tmp_path / "no_such_run", "--out", report])

    assert code == 2
    assert not report.exists()


def test_compare_projects_held_out_folder(runs, tmp_path):
    # Three images the runs never saw. Compare must project exactly those and record their source.
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 256, size=(8, 8), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(held_out / f"image-{index}.png")
    report = tmp_path / "report"
    arguments = ["compare", runs["plr"], runs["no_plr"], "--out", report, *FAST_COMPARE, "--projection-targets", 3]

    code, out, err = run_cli([*arguments, "--projection-data", held_out, "--no-frechet"])

    assert code == 0, err
    saved = json.loads((report / "report.json").read_text())
    assert saved["targets"]["source"] == str(held_out)
    assert saved["targets"]["from_training_data"] is False
    assert sorted(saved["targets"]["indices"]) == [0, 1, 2]
    for side in saved["sides"]:
        assert len(side["runs"][0]["projection"]["psnr"]) == 3


def test_compare_warns_about_different_steps(runs, tmp_path, caplog):
    shorter = train_tiny_run(tmp_path / "shorter", steps=2)
    report = tmp_path / "report"

    with caplog.at_level(logging.WARNING, logger="pathlength"):
        code, out, err = run_cli(["compare", runs["plr"], shorter, "--out", report, *FAST_COMPARE, "--no-frechet"])

    assert code == 0, err
    assert "- The measured checkpoints are at different training steps (2, 4)." in out
    assert any("different training steps (2, 4)" in record.getMessage() for record in caplog.records)
