"""Tests of pathlength.report: aggregation across seeds, the statements, run collection, atomic
files, and a full comparison of two tiny runs per side written as Markdown, JSON and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pathlength.models import Discriminator, Generator
from pathlength.report import (
    METRICS,
    ComparisonError,
    MeasureSettings,
    choose_target_indices,
    compare_metric,
    compare_runs,
    default_labels,
    measure_run,
    read_metrics_log,
    summarize_side,
    write_report,
)
from pathlength.report import collect
from pathlength.report.collect import measure_w_jacobian
from pathlength.report.files import json_ready, to_json, write_atomically
from pathlength.training import save_checkpoint
from diagnostics_toys import ConstantGenerator, IsometricGenerator, LinearWGenerator
from tiny_runs import diagnostics_environment, run_cli, train_tiny_run

METRIC_BY_KEY = {metric.key: metric for metric in METRICS}
CV = METRIC_BY_KEY["cv"]
PSNR = METRIC_BY_KEY["projection_psnr_median"]
NEW_METRIC_KEYS = ("cv_between", "cv_within", "jacobian_condition_median")
PLOT_FILES = ("length_histograms.png", "training_curves.png", "ppl_distributions.png", "projection_psnr.png")
# Small enough that measuring one tiny run takes well under a second.
FAST_SETTINGS = MeasureSettings(num=8, noise_draws=2, projection_targets=3, projection_steps=2, seed=1, jacobian_latents=4)


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    with diagnostics_environment(tmp_path_factory) as folder:
        yield folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, environment):
    root = tmp_path_factory.mktemp("runs")
    return {
        "plr": [train_tiny_run(root / f"plr_seed{seed}", seed=seed) for seed in (0, 1)],
        "no_plr": [train_tiny_run(root / f"no_plr_seed{seed}", seed=seed, pl_weight=0.0) for seed in (0, 1)],
    }


@pytest.fixture(scope="module")
def comparison(runs):
    return compare_runs(runs["plr"], runs["no_plr"], settings=FAST_SETTINGS)


@pytest.fixture(scope="module")
def report(comparison, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "plr_vs_no_plr"
    return out, write_report(comparison, out)


def save_tiny_checkpoint(folder, resolution: int):
    generator = Generator(z_dim=4, w_dim=4, img_resolution=resolution, channel_base=16, channel_max=4)
    discriminator = Discriminator(img_resolution=resolution, channel_base=16, channel_max=4)
    networks = {"G": generator, "G_ema": generator, "D": discriminator}
    return save_checkpoint(folder / "checkpoints", step=0, networks=networks, training_state={"step": 0}, info={})


# ---------------------------------------------------------------------------------------------
# aggregation


def test_summarize_side_mean_and_sample_std():
    summary = summarize_side([1.0, 2.0, 6.0])

    assert summary.mean == pytest.approx(3.0, abs=1e-12)
    assert summary.std == pytest.approx(math.sqrt(7.0), rel=1e-12), "sample standard deviation, ddof=1"
    assert summary.count == 3
    assert summary.num_runs == 3


def test_summarize_side_drops_missing_values():
    summary = summarize_side([2.0, None, float("inf"), float("nan")])

    assert summary.values == [2.0]
    assert summary.num_runs == 4
    assert summary.mean == 2.0
    assert summary.std is None


def test_compare_metric_gap_exceeds_spread():
    result = compare_metric(CV, [0.20, 0.22], [0.40, 0.44], "with PLR", "without PLR")

    assert result.lower == "a"
    assert result.gap == pytest.approx(0.21, abs=1e-12)
    assert result.spread == pytest.approx(math.sqrt(0.0002) + math.sqrt(0.0008), rel=1e-9)
    assert result.gap_exceeds_spread is True
    assert "with PLR is better, with the lower mean" in result.statement
    assert "exceeds the spread" in result.statement


def test_compare_metric_gap_within_spread():
    result = compare_metric(CV, [0.1, 0.5], [0.2, 0.6], "A", "B")

    assert result.lower == "a"
    assert result.gap_exceeds_spread is False
    assert "does not exceed the spread" in result.statement
    assert "seed-to-seed variation" in result.statement


def test_compare_metric_one_run_spread_unknown():
    result = compare_metric(PSNR, [20.0], [25.0], "A", "B")

    assert result.lower == "a"
    assert result.spread is None
    assert result.gap_exceeds_spread is None
    assert "B is better, with the higher mean (20 dB vs 25 dB)" in result.statement
    assert "spread over seeds is unknown" in result.statement


def test_compare_metric_equal_and_missing():
    equal = compare_metric(CV, [0.3], [0.3], "A", "B")
    missing = compare_metric(CV, [0.3], [None], "A", "B")

    assert equal.lower == "equal"
    assert "same mean" in equal.statement
    assert missing.lower is None
    assert "not measured for B" in missing.statement


def test_default_labels_from_pl_weight():
    assert default_labels([[{"pl_weight": 2.0}, {"pl_weight": 2.0}], [{"pl_weight": 0.0}]]) == ("PLR weight 2", "no PLR")
    assert default_labels([[{"pl_weight": 2.0}], [{"pl_weight": 2.0}]]) == ("A", "B")
    assert default_labels([[{"pl_weight": 2.0}, {"pl_weight": 1.0}], [{"pl_weight": 0.0}]]) == ("A", "B")
    assert default_labels([[None], [{"pl_weight": 0.0}]]) == ("A", "B")


# ---------------------------------------------------------------------------------------------
# collection and files


def test_choose_target_indices_seeded_and_distinct():
    first = choose_target_indices(100, 10, seed=3)

    assert len(set(first)) == 10
    assert all(0 <= index < 100 for index in first)
    assert choose_target_indices(100, 10, seed=3) == first
    assert choose_target_indices(100, 10, seed=4) != first
    with pytest.raises(ValueError, match="only 5 images"):
        choose_target_indices(5, 6, seed=0)


def test_read_metrics_log_skips_broken_lines(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000002"
    checkpoint.mkdir(parents=True)
    lines = ['{"step": 1, "pl_mean": 0.5}', "[1, 2]", '{"step": 2, "pl_mean": 0.6}', '{"step": 3, "pl_me']
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    records = read_metrics_log(checkpoint)

    assert [record["step"] for record in records] == [1, 2]
    assert read_metrics_log(tmp_path / "elsewhere" / "step-0000001") == []


def test_write_atomically_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")

    def fail(stream):
        stream.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(path, fail)

    assert path.read_text() == "old"
    assert [item.name for item in tmp_path.iterdir()] == ["report.md"]


def test_json_is_strict_without_nan():
    assert json_ready({"psnr": [float("inf"), 1.5], "gap": float("nan")}) == {"psnr": [None, 1.5], "gap": None}
    assert json.loads(to_json({"value": float("-inf")})) == {"value": None}


def test_measure_run_is_repeatable(runs):
    targets = torch.zeros(2, 1, 8, 8)

    first = measure_run(runs["plr"][0], FAST_SETTINGS, classifier=_classifier(), targets=targets)
    second = measure_run(runs["plr"][0], FAST_SETTINGS, classifier=_classifier(), targets=targets)

    assert first.metric_values() == second.metric_values()
    assert first.frechet is None, "no dataset was passed"
    assert len(first.projection_psnr) == 2
    assert first.step == 4
    assert [record["step"] for record in first.curves] == [1, 2, 3, 4]


def test_measure_run_records_jacobian(runs):
    measurement = measure_run(runs["plr"][0], FAST_SETTINGS, classifier=_classifier())
    saved = json.loads(json.dumps(measurement.to_dict(), allow_nan=False))
    jacobian = saved["jacobian"]

    assert measurement.jacobian is not None
    assert jacobian["num_latents"] == 4
    assert jacobian["latent_shape"] == [8], "one w of the tiny run's w_dim"
    assert len(jacobian["condition_number"]) == 4
    assert all(value >= 1 for value in jacobian["condition_number"])
    assert jacobian["condition_number_median"] == pytest.approx(float(np.median(jacobian["condition_number"])), rel=1e-12)
    assert len(jacobian["singular_values_median"]) == 8
    assert jacobian["singular_values_median"] == sorted(jacobian["singular_values_median"], reverse=True)
    assert saved["metrics"]["jacobian_condition_median"] == pytest.approx(jacobian["condition_number_median"], rel=1e-12)


def test_measure_run_skips_too_large_jacobian(runs, monkeypatch, caplog):
    monkeypatch.setattr(collect, "JACOBIAN_MAX_ELEMENTS", 10)

    with caplog.at_level(logging.WARNING, logger="pathlength.report.collect"):
        measurement = measure_run(runs["plr"][0], FAST_SETTINGS, classifier=_classifier())

    # The tiny run's J_w has 1*8*8 outputs times 8 inputs.
    assert measurement.jacobian is None
    assert measurement.metric_values()["jacobian_condition_median"] is None
    assert measurement.to_dict()["jacobian"] is None
    assert "would have 512 elements" in caplog.text
    assert "condition number is not measured" in caplog.text


def test_rank_deficient_jacobian_json_none(runs):
    measurement = measure_run(runs["plr"][0], dataclasses.replace(FAST_SETTINGS, jacobian_latents=0), classifier=_classifier())
    measurement.jacobian = measure_w_jacobian(ConstantGenerator(), num_latents=2)

    saved = measurement.to_dict()

    assert math.isinf(measurement.metric_values()["jacobian_condition_median"])
    assert saved["jacobian"]["condition_number"] == [None, None]
    assert saved["jacobian"]["condition_number_median"] is None
    assert saved["metrics"]["jacobian_condition_median"] is None


def _classifier():
    from pathlength.diagnostics import load_digits_classifier

    return load_digits_classifier()


# ---------------------------------------------------------------------------------------------
# Jacobian J_w


def test_w_jacobian_sums_layer_jacobians():
    singular = torch.tensor([4.0, 3.0, 2.0, 1.5, 1.2, 1.0], dtype=torch.float64)
    rng = torch.Generator().manual_seed(0)
    left, _ = torch.linalg.qr(torch.randn(32, 6, generator=rng, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(6, 6, generator=rng, dtype=torch.float64))
    block = left @ torch.diag(singular) @ right.T
    generator = LinearWGenerator(num_ws=3, matrix=torch.cat([block, block, block], dim=1))

    spectrum = measure_w_jacobian(generator, num_latents=3, seed=2)

    # One w on all 3 layers makes J_w the sum of the 3 equal blocks: singular values 3 * s.
    assert spectrum.latent_shape == (6,)
    for index in range(3):
        torch.testing.assert_close(spectrum.singular_values[index], 3 * singular, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(spectrum.condition_number, torch.full((3,), 4.0, dtype=torch.float64), rtol=1e-10, atol=0)


def test_w_jacobian_isometry_condition_one():
    generator = IsometricGenerator(scale=0.5, num_ws=None)

    spectrum = measure_w_jacobian(generator, num_latents=2)

    torch.testing.assert_close(spectrum.condition_number, torch.ones(2, dtype=torch.float64), rtol=1e-10, atol=0)
    torch.testing.assert_close(spectrum.singular_values, torch.full((2, 6), 0.5, dtype=torch.float64), rtol=1e-10, atol=0)


def test_w_jacobian_latents_seeded():
    generator = small_conditional_generator()

    first = measure_w_jacobian(generator, num_latents=2, seed=3)
    again = measure_w_jacobian(generator, num_latents=2, seed=3)
    other = measure_w_jacobian(generator, num_latents=2, seed=4)

    torch.testing.assert_close(first.singular_values, again.singular_values, rtol=0, atol=0)
    assert not torch.allclose(first.singular_values, other.singular_values)
    assert first.singular_values.shape == (2, 4)


def test_w_jacobian_chunks_match_whole():
    generator = small_conditional_generator()

    whole = measure_w_jacobian(generator, num_latents=2, seed=1)
    chunked = measure_w_jacobian(generator, num_latents=2, seed=1, chunk_size=5)

    # Chunks of rows run the same per-row backward passes, up to float32 rounding.
    torch.testing.assert_close(chunked.singular_values, whole.singular_values, rtol=1e-5, atol=1e-7)


def small_conditional_generator():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Generator(z_dim=4, c_dim=3, w_dim=4, img_resolution=4, channel_base=16, channel_max=4)


# ---------------------------------------------------------------------------------------------
# comparison


def test_comparison_counts_runs_per_side(comparison):
    assert comparison.labels == ("PLR weight 2", "no PLR")
    assert [len(side) for side in comparison.runs] == [2, 2]
    assert [metric.metric.key for metric in comparison.metrics] == [
        "cv",
        "cv_between",
        "cv_within",
        "jacobian_condition_median",
        "ppl",
        "frechet_distance",
        "projection_psnr_median",
    ]
    for metric in comparison.metrics:
        assert metric.side_a.count == 2, metric.metric.key
        assert metric.side_b.count == 2, metric.metric.key
        assert isinstance(metric.gap_exceeds_spread, bool), metric.metric.key


def test_comparison_projects_same_targets(comparison):
    indices = comparison.targets["indices"]

    assert len(indices) == 3
    assert indices == choose_target_indices(1797, 3, seed=FAST_SETTINGS.seed)
    assert comparison.targets["from_training_data"] is True
    for side in comparison.runs:
        for run in side:
            assert len(run.projection_psnr) == 3
            assert all(math.isfinite(value) for value in run.projection_psnr)


def test_comparison_collects_curves(comparison):
    plr_run, no_plr_run = comparison.runs[0][0], comparison.runs[1][0]

    assert [record["step"] for record in plr_run.curves] == [1, 2, 3, 4]
    assert any("Loss/G/pl_penalty" in record for record in plr_run.curves)
    assert not any("Loss/G/pl_penalty" in record for record in no_plr_run.curves)


def test_comparison_rejects_different_resolutions(runs, tmp_path):
    save_tiny_checkpoint(tmp_path / "other", resolution=4)

    with pytest.raises(ComparisonError, match="same resolution"):
        compare_runs(runs["plr"][:1], [tmp_path / "other"], settings=FAST_SETTINGS)


def test_comparison_rejects_empty_side(runs):
    with pytest.raises(ComparisonError, match="at least one run"):
        compare_runs(runs["plr"], [], settings=FAST_SETTINGS)


def test_report_writes_markdown_json_plots(report):
    out, files = report

    assert sorted(files) == sorted(["report.md", "report.json", *PLOT_FILES])
    assert sorted(path.name for path in out.iterdir()) == sorted(files)


def test_report_plots_are_png(report):
    out, _ = report

    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(out / name) as image:
            assert image.format == "PNG", name
            assert image.width > 100, name


def test_report_markdown_table_rows(report, comparison):
    markdown = (report[0] / "report.md").read_text()

    assert "| Metric | PLR weight 2 (n=2) | no PLR (n=2) | Better side | Gap exceeds spread |" in markdown
    for metric in METRICS:
        assert f"| {metric.title} ({metric.better} is better) |" in markdown, metric.key
    for metric in comparison.metrics:
        assert f"- {metric.statement}" in markdown, metric.metric.key
    assert "Runs per side: PLR weight 2: 2, no PLR: 2." in markdown
    assert f"indices {comparison.targets['indices']}" in markdown
    for name in PLOT_FILES:
        assert f"({name})" in markdown, name


def test_report_json_has_all_numbers(report, comparison):
    saved = json.loads((report[0] / "report.json").read_text())

    assert saved["num_runs"] == [2, 2]
    assert saved["labels"] == ["PLR weight 2", "no PLR"]
    assert saved["settings"]["num"] == FAST_SETTINGS.num
    assert saved["targets"]["indices"] == comparison.targets["indices"]
    first_run = saved["sides"][0]["runs"][0]
    assert first_run["pl_weight"] == 2.0
    assert first_run["metrics"]["cv"] == pytest.approx(comparison.runs[0][0].path_lengths.cv, rel=1e-12)
    assert len(first_run["projection"]["psnr"]) == 3
    assert len(first_run["curves"]) == 4
    cv = saved["metrics"][0]
    assert cv["side_a"]["mean"] == pytest.approx(comparison.metrics[0].side_a.mean, rel=1e-12)
    assert cv["statement"] == comparison.metrics[0].statement


def test_report_json_has_split_cv_and_condition(report, comparison):
    saved = json.loads((report[0] / "report.json").read_text())
    metrics = {metric["metric"]: metric for metric in saved["metrics"]}
    first_run = saved["sides"][0]["runs"][0]

    assert saved["settings"]["jacobian"]["latents"] == 4
    for key in NEW_METRIC_KEYS:
        assert math.isfinite(first_run["metrics"][key]), key
        assert math.isfinite(metrics[key]["side_a"]["mean"]), key
        assert math.isfinite(metrics[key]["side_b"]["mean"]), key
    assert first_run["metrics"]["cv_between"] == pytest.approx(comparison.runs[0][0].path_lengths.cv_between, rel=1e-12)
    assert len(first_run["jacobian"]["condition_number"]) == 4


def test_compare_without_jacobian_renders(runs, tmp_path):
    report = tmp_path / "report"
    arguments = ["--num", 8, "--noise-draws", 2, "--projection-targets", 2, "--projection-steps", 2, "--no-frechet"]

    code, out, err = run_cli(["compare", runs["plr"][0], runs["no_plr"][0], "--out", report, *arguments, "--jacobian-latents", 0])

    assert code == 0, err
    saved = json.loads((report / "report.json").read_text())
    condition = {metric["metric"]: metric for metric in saved["metrics"]}["jacobian_condition_median"]
    assert saved["settings"]["jacobian"]["latents"] == 0
    assert saved["sides"][0]["runs"][0]["jacobian"] is None
    assert saved["sides"][0]["runs"][0]["metrics"]["jacobian_condition_median"] is None
    assert condition["side_a"]["mean"] is None
    assert math.isfinite(saved["sides"][0]["runs"][0]["metrics"]["cv_between"])
    markdown = (report / "report.md").read_text()
    assert "| Median condition number of J_w (lower is better) | n/a | n/a |" in markdown
    assert "- Jacobian J_w: not measured." in markdown
