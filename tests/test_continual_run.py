"""The continual runner end to end at a tiny size: metrics, report, resume, bad input."""

import json

import numpy as np
import pytest
import torch

from bea.experiments.config import ConfigError, config_from_dict, load_preset
from bea.experiments.continual import ContinualConfig, check_task_sequence
from bea.experiments.data import ContinualData, TaskData
from bea.experiments.runner import resume_run, start_run

TINY = {
    "name": "tiny",
    "data": {"name": "split_digits", "num_tasks": 5, "eval_per_task": 20, "train_per_task": 80},
    "model": {"hidden": [16], "activation": "relu"},
    "train": {
        "lr": 0.1,
        "batch_size": 16,
        "steps_per_task": 6,
        "strategies": ["naive", "replay", "ewc"],
        "memory_per_task": 10,
        "ewc_fisher_samples": 20,
    },
    "monitor": {"every": 4, "around": 2, "old_batch_size": 16, "probe_per_task": 8},
    "run": {"checkpoint_every": 7, "threads": 1, "progress": False},
}


def _config(**changes):
    data = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config_from_dict(ContinualConfig, data)


def _finite(values):
    return all(np.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    return start_run(_config(), out, progress=False)


def test_run_writes_metrics_curves_and_report(finished):
    summary = finished.read_summary()
    metrics = summary["metrics"]
    for strategy in TINY["train"]["strategies"]:
        for key in (
            "average_accuracy",
            "forgetting",
            "backward_transfer",
            "forward_transfer",
            "min_accuracy",
            "worst_case_accuracy",
            "windowed_forgetting_10",
            "windowed_plasticity_100",
            "mean_dip",
        ):
            assert f"{strategy}/{key}" in metrics, f"missing {strategy}/{key}"
        assert 0.0 <= metrics[f"{strategy}/average_accuracy"] <= 1.0
    assert _finite(metrics.values())
    records = finished.read_metrics()
    # evaluation after every iteration, from iteration 0, for every task
    steps = [r["step"] for r in records if "naive/acc/classes0-1" in r]
    assert steps == list(range(0, 31))
    assert any("naive/bracket/bracket_relative" in r for r in records)
    assert any(r.get("naive/bracket/cross_task") for r in records)
    html = finished.report_path.read_text()
    for text in ("Strategies", "stability gap", "Lie bracket", "change of the previous task"):
        assert text in html
    assert html.count("data:image/png;base64") == 3  # one figure per strategy


def test_killed_run_resumes_to_the_same_result(finished, tmp_path):
    out = tmp_path / "killed"
    # stop inside the second strategy's phase, between checkpoints (every 7 steps)
    start_run(_config(), out, stop_after=45, progress=False, report=False)
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"
    resumed = resume_run(out, progress=False, report=False)
    assert resumed.read_status()["state"] == "finished"
    assert resumed.read_summary()["metrics"] == finished.read_summary()["metrics"]
    full = [r for r in finished.read_metrics()]
    again = [r for r in resumed.read_metrics()]
    assert again == full


def test_every_other_strategy_trains(tmp_path):
    others = ["agem", "joint", "sequential_replay", "symmetric_replay", "bracket_penalty"]
    config = _config(**{"train.strategies": others, "monitor.enabled": False})
    metrics = start_run(config, tmp_path / "o", progress=False, report=False).read_summary()[
        "metrics"
    ]
    for name in others:
        assert 0.0 <= metrics[f"{name}/average_accuracy"] <= 1.0


def test_quick_preset_loads_and_is_small():
    config = load_preset(ContinualConfig, "quick")
    assert config.data.name == "split_digits" and config.run.threads == 1
    steps = config.data.num_tasks * config.train.steps_per_task * len(config.train.strategies)
    assert steps <= 1000


def test_rotated_preset_is_the_stability_gap_setting():
    for name, activation in (("rotated-mnist", "relu"), ("rotated-mnist-smooth", "gelu")):
        config = load_preset(ContinualConfig, name)
        assert config.data.angles == [0.0, 80.0, 160.0]
        assert config.model.hidden == [400, 400] and config.model.activation == activation
        assert (config.train.lr, config.train.batch_size, config.train.steps_per_task) == (
            0.1,
            128,
            500,
        )


def _task(name, classes, n=6):
    labels = torch.tensor([classes[i % len(classes)] for i in range(n)])
    return TaskData(name, torch.zeros(n, 2), labels, torch.zeros(n, 2), labels, tuple(classes))


BAD_CONFIGS = [
    (
        {"data.num_tasks": 1},
        r"config: data.num_tasks must give a sequence of at least 2 tasks, got 1",
    ),
    (
        {"data.name": "rotated_mnist_5k", "data.angles": [0.0]},
        r"data.angles must give a sequence of at least 2",
    ),
    (
        {"train.strategies": ["naive", "magic"]},
        r"train.strategies entries must be in .*got 'magic'",
    ),
    (
        {"train.memory_per_task": 0},
        r"memory_per_task must be >= 1: replay need a non-empty replay buffer, got 0",
    ),
    ({"train.lr": -0.1}, r"train.lr must be > 0, got -0.1"),
]


@pytest.mark.parametrize("changes, match", BAD_CONFIGS, ids=[m[:30] for _, m in BAD_CONFIGS])
def test_bad_config_is_named(changes, match):
    with pytest.raises(ConfigError, match=match):
        _config(**changes)


def test_evaluation_set_larger_than_the_data(tmp_path):
    # split_digits tasks have about 72 test digits each
    with pytest.raises(
        ValueError, match=r"data.eval_per_task = 500 is larger than the test set of task"
    ):
        start_run(_config(**{"data.eval_per_task": 500}), tmp_path / "r", progress=False)


def test_sequence_checks():
    two = ContinualData((_task("a", (0, 1)), _task("b", (0, 2))), "custom")
    with pytest.raises(ValueError, match=r"mismatched class sets: task 'b' has classes \[0, 2\]"):
        check_task_sequence(two, 3, same_classes=True, eval_per_task=2)
    with pytest.raises(
        ValueError, match=r"task 'b' has classes \[0, 2\] but the model has 2 outputs"
    ):
        check_task_sequence(two, 2, same_classes=False, eval_per_task=2)
    one = type("OneTask", (), {"tasks": (_task("a", (0, 1)),)})()
    with pytest.raises(
        ValueError, match=r"continual: a continual sequence needs at least 2 tasks, got 1"
    ):
        check_task_sequence(one, 2, same_classes=False, eval_per_task=2)
    check_task_sequence(two, 3, same_classes=False, eval_per_task=6)  # fine


def test_divergence_stops_with_a_clear_message(tmp_path):
    config = _config(**{"train.strategies": ["ewc"], "train.ewc_strength": 1e6})
    with pytest.raises(
        ValueError, match=r"continual: .*ewc.* at step \d+; training stopped, last good checkpoint"
    ):
        start_run(config, tmp_path / "d", progress=False)


def test_study_helpers_by_hand():
    from bea.experiments.continual_studies import correlations, mean_std, switch_bracket_probe

    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    c = correlations([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert c["n"] == 4 and c["spearman"] == pytest.approx(1.0)
    assert c["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 4, 6, 9])[0, 1])
    assert np.isnan(correlations([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson"])
    with pytest.raises(ValueError, match=r"switch_bracket_probe: needs >= 2 new batches, got 1"):
        switch_bracket_probe(lambda p, x, y: p["w"].sum(), {"w": torch.ones(2)}, [], [(0, 0)])


def test_study_runs_end_to_end_at_tiny_size(tmp_path):
    from bea.experiments.continual_studies import run_studies

    results = run_studies("tiny", tmp_path, strategies=["naive", "replay"], log=lambda _: None)
    assert {r["strategy"] for r in results["strategy_table"]} == {"naive", "replay"}
    assert all(r["ratio"] > 0 for r in results["remark_4_3"])
    assert {c["measure"] for c in results["correlations"]} >= {"cross_relative_bracket", "old_push"}
    for name in (
        "results.json",
        "tables.md",
        "stability-gap.png",
        "remark-4-3.png",
        "correlations.png",
    ):
        assert (tmp_path / name).exists(), name
