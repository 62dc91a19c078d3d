"""Smoke run of the benchmark harness at toy sizes: JSON structure and agreement, no timing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_scaling  # noqa: E402
import harness  # noqa: E402
import run  # noqa: E402

# curvlinops' Hessian products on LayerNorm weights disagree with bea's, which match
# central finite differences (see docs/performance.md); that is the peer's result.
KNOWN_PEER_DISAGREEMENTS = {("bracket", "transformer", "curvlinops")}


@pytest.fixture(scope="module")
def report():
    threads = torch.get_num_threads()
    argv = ["--toy", "--quick", "--json", "--quiet", "--repeats", "1", "--warmup", "0"]
    argv += ["--only", "bracket,hvp,gram,multitask,monitors,scaling"]
    try:
        from contextlib import redirect_stdout
        from io import StringIO

        buffer = StringIO()
        with redirect_stdout(buffer):
            code = run.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return json.loads(buffer.getvalue())


def _timed_cases(report):
    for name, bench in report["benchmarks"].items():
        for case in bench.get("cases", []):
            if "median_s" in case:
                yield name, case


def test_report_has_machine_config_and_every_benchmark(report):
    machine = report["machine"]
    for key in ("cpu_model", "cpu_cores", "torch", "torch_threads", "device"):
        assert key in machine, f"machine description lacks {key}: {machine}"
    assert machine["torch_threads"] == report["config"]["threads"] == 1
    assert set(report["benchmarks"]) == {
        "bracket",
        "hvp",
        "gram",
        "multitask",
        "monitors",
        "scaling",
    }
    assert all({"name", "value", "limit", "met"} <= set(t) for t in report["targets"])


def test_each_case_has_medians_and_ratios_to_its_baseline(report):
    for name, case in _timed_cases(report):
        baseline = case["baseline"]
        assert baseline in case["median_s"], (name, case["median_s"])
        assert set(case["ratio"]) == set(case["median_s"]) - {baseline}, (name, case["ratio"])
        for contender, median in case["median_s"].items():
            assert median > 0, f"{name}: {contender} has median {median}"
            assert len(case["times_s"][contender]) == case["repeats"]


def test_bracket_cases_have_the_contenders_the_issue_asks_for(report):
    cases = {c["model"]: c for c in report["benchmarks"]["bracket"]["cases"]}
    assert set(cases) == {"mlp_small", "mlp_1m", "cnn", "transformer"}
    for model, case in cases.items():
        assert {"two_grads", "bea_fused", "pyhessian_style"} <= set(case["median_s"]), model
    assert "dense_hessian" in cases["mlp_small"]["median_s"]
    assert "dense_hessian" in cases["cnn"]["skipped"]


def test_contenders_agree_numerically(report):
    checked = 0
    for name, case in _timed_cases(report):
        for contender, result in case.get("agreement", {}).items():
            if (name, case.get("model"), contender) in KNOWN_PEER_DISAGREEMENTS:
                continue
            assert result["agree"], f"{name} {case.get('model')} {contender}: {result}"
            checked += 1
    assert checked >= 20


def test_scaling_rows_and_slopes(report):
    scaling = report["benchmarks"]["scaling"]
    assert len(scaling["rows"]) >= 2
    for row in scaling["rows"]:
        for op in ("two_grads", "bea_fused"):
            assert row[op]["peak_extra_bytes"] >= 0 and row[op]["median_s"] > 0
    for key, fit in scaling["slopes"].items():
        # toy peaks can be below one page (0 bytes): then there is no memory slope
        assert (fit is None and key.startswith("memory")) or math.isfinite(fit), (key, fit)


def test_monitor_cases_report_overhead_or_why_not(report):
    for case in report["benchmarks"]["monitors"]["cases"]:
        assert ("overhead" in case) != ("failed" in case), case


def test_summarize_pairs_rounds():
    times = {"base": [1.0, 2.0, 4.0], "x": [2.0, 3.0, 12.0]}
    summary = harness.summarize(times, "base")
    assert summary["ratio"]["x"] == pytest.approx(2.0)  # per-round 2, 1.5, 3
    assert summary["ratio_of_medians"]["x"] == pytest.approx(1.5)
    assert harness.paired_speedup(times, "x", "base") == pytest.approx(2.0)


def test_slope_recovers_a_power_law_and_skips_zero_peaks():
    sizes = [1e4, 1e5, 1e6]
    assert bench_scaling.slope(sizes, [3e-7 * p**1.5 for p in sizes]) == pytest.approx(1.5)
    assert bench_scaling.slope(sizes, [0.0, 2.0, 20.0]) == pytest.approx(1.0)
    assert bench_scaling.slope(sizes, [0.0, 0.0, 20.0]) is None


def test_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "bracket,nonsense"])
    assert "nonsense" in capsys.readouterr().err
