"""Tests that the path length benchmark still runs and writes a complete report (its --quick mode)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_plr.py"
METHODS = {"textbook", "pathlength", "compiled", "forward_backward"}
RATIOS = {
    "pathlength/textbook",
    "compiled/textbook",
    "textbook/forward_backward",
    "pathlength/forward_backward",
    "compiled/forward_backward",
}
METHOD_FIELDS = {"median_ms", "p25_ms", "p75_ms", "min_ms", "repeats", "peak_memory_mib", "gflop", "gflop_per_s"}


def is_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text()), completed.stdout


def test_quick_report_has_sections(quick_report):
    report, _ = quick_report
    assert set(report) == {"meta", "cases", "scaling", "training"}
    assert report["meta"]["torch"]
    assert report["meta"]["wall_s"] > 0


def test_every_case_has_all_methods(quick_report):
    report, _ = quick_report
    assert len(report["cases"]) >= 3
    for case in report["cases"]:
        assert set(case["methods"]) == METHODS, (case["resolution"], case["batch"])
        for method, values in case["methods"].items():
            assert METHOD_FIELDS <= set(values), (method, set(values))


def test_measurements_are_positive(quick_report):
    report, _ = quick_report
    for case in report["cases"]:
        for method, values in case["methods"].items():
            for name in ("median_ms", "min_ms", "peak_memory_mib", "gflop", "gflop_per_s"):
                assert is_positive(values[name]), (case["resolution"], case["batch"], method, name, values[name])


def test_ratios_are_finite_and_positive(quick_report):
    report, _ = quick_report
    for case in report["cases"]:
        assert set(case["ratios"]) == RATIOS
        for name, value in case["ratios"].items():
            assert is_positive(value), (case["resolution"], case["batch"], name, value)


def test_scaling_exponents_are_finite(quick_report):
    report, _ = quick_report
    for key in ("pixels", "batch"):
        exponents = report["scaling"][key]["exponents"]
        assert set(exponents) == METHODS
        for method, value in exponents.items():
            assert math.isfinite(value), (key, method, value)


def test_training_overhead_is_reported(quick_report):
    report, _ = quick_report
    training = report["training"]
    assert training["pl_interval"] == 4
    assert training["pl_batch_shrink"] == 2
    for name in ("none", "eager", "compiled"):
        assert is_positive(training["ms_per_step"][name]), name
    for name in ("eager", "compiled"):
        assert math.isfinite(training["overhead"][name]), name
        assert is_positive(training["phase_overhead"][name]), name
        assert is_positive(training["phase_ms_per_step"][name]["G/pl"]), name
    assert training["compiled_fell_back"] is False


def test_quick_run_prints_doc_tables(quick_report):
    _, stdout = quick_report
    assert "| res | batch | step | median ms | p25-p75 ms | peak MiB | GFLOP | GFLOP/s |" in stdout
    assert "| res | batch | b/a | c/a | a/d | b/d | c/d |" in stdout
    assert "| 8 | 4 | (a) textbook |" in stdout
    assert "| eager PLR |" in stdout
    assert "trainer --compile backend aot_eager" in stdout


def test_quick_mode_keeps_the_full_report(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_plr", BENCHMARK)
    bench_plr = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up in sys.modules while the module runs.
    monkeypatch.setitem(sys.modules, "bench_plr", bench_plr)
    spec.loader.exec_module(bench_plr)

    assert bench_plr.report_path(None, quick=True) == bench_plr.DEFAULT_QUICK_OUT
    assert bench_plr.report_path(None, quick=False) == bench_plr.DEFAULT_OUT
    assert bench_plr.DEFAULT_QUICK_OUT != bench_plr.DEFAULT_OUT
    assert bench_plr.report_path(Path("chosen.json"), quick=True) == Path("chosen.json")
