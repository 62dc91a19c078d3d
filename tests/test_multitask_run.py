"""End-to-end multitask runs: resume, checkpoint re-measurement, reports, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from bea.cli import main
from bea.commands.compare import compare_rows
from bea.experiments import multitask
from bea.experiments.config import config_from_dict
from bea.experiments.multitask import MultitaskConfig
from bea.experiments.rundir import TrainingDiverged, open_run_dir
from bea.experiments.runner import resume_run, start_run


def tiny(**sections):
    data = {
        "name": "tiny",
        "seed": 1,
        "data": {
            "dataset": "conflict_regression",
            "num_train": 64,
            "num_test": 32,
            "in_features": 6,
            "conflict": 0.8,
        },
        "model": {"hidden": [8]},
        "train": {"lr": 0.05, "steps": 20, "batch_size": 16},
        "monitor": {"every": 5, "probe_size": 32, "eval_every": 10, "per_layer": True},
        "run": {"checkpoint_every": 5, "keep_checkpoints": 0, "log_every": 5, "progress": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return config_from_dict(MultitaskConfig, data)


@pytest.mark.parametrize("method", [{"name": "sgd"}, {"name": "gradvac"}])
def test_killed_run_resumes_to_identical_metrics(tmp_path, method):
    config = tiny(method=method)
    whole = start_run(config, tmp_path / "whole", report=False)
    part = start_run(config, tmp_path / "part", stop_after=13, report=False)
    assert part.read_status()["state"] == "interrupted"
    assert not part.summary_path.exists()
    resume_run(part.path, report=False)
    assert part.read_status()["state"] == "finished"
    assert part.read_summary()["metrics"] == whole.read_summary()["metrics"]
    assert part.read_metrics() == whole.read_metrics()


def test_logged_conflict_equals_recomputation_from_checkpoint(tmp_path):
    config = tiny(train={"weights": [1.0, 2.0], "reduction": "mean"})
    run_dir = start_run(config, tmp_path / "run", report=False)
    step = 15
    checkpoint = run_dir.load_checkpoint(run_dir.checkpoint_path(step))
    logged = [r for r in run_dir.read_metrics() if r["step"] == step and "mt/conflict_total" in r]
    assert len(logged) == 1
    data = multitask.build_data(config)
    model = multitask.build_model(config, data)
    model.load_state_dict(checkpoint["state"]["model"])
    x, y = multitask.probe_batch(config, data)
    model.double()
    outputs = model(x.double())
    trunk = [p for n, p in model.named_parameters() if n.startswith("trunk.")]
    grads = []
    for k in range(2):
        loss = ((outputs[k].squeeze(-1) - y[:, k].double()) ** 2).mean()
        grads.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, trunk, retain_graph=True)])
        )
    alpha = (0.5, 1.0)  # weights (1, 2) with the mean reduction over 2 tasks
    expected = (config.train.lr / 2) * alpha[0] * alpha[1] * float(grads[0] @ grads[1])
    assert logged[0]["mt/conflict_total"] == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_report_and_compare(tmp_path, capsys):
    a = start_run(tiny(run={"csv": True}), tmp_path / "a")
    header, first = a.path.joinpath("metrics.csv").read_text().splitlines()[:2]
    assert header == "step,key,value" and first.startswith("0,mt/lr,0.05")
    b = start_run(tiny(method={"name": "cancel"}, run={"csv": True}), tmp_path / "b", report=False)
    html = a.report_path.read_text()
    assert html.count('<img src="data:image/png;base64,') >= 6
    assert "conflict term" in html and "Per-layer conflict" in html
    rows, differing = compare_rows([a, b])
    assert differing == ["method.name"]
    assert rows[1]["method.name"] == "cancel" and "test/mean_metric" in rows[1]
    out = tmp_path / "cmp.html"
    assert main(["compare", str(a.path), str(b.path), "--out", str(out)]) == 0
    assert "| run |" in capsys.readouterr().out
    assert out.read_text().count("<img") >= 1
    a.report_path.unlink()
    assert main(["report", str(a.path)]) == 0
    assert a.report_path.stat().st_size > 10_000


def test_cli_run_refuses_to_overwrite_and_resume_finished(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    from bea.experiments.config import config_to_toml

    cfg.write_text(config_to_toml(tiny()))
    out = tmp_path / "run"
    args = ["run", "multitask", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["state"] == "finished"
    assert main(args) == 2
    assert "already exists (state finished); pass --force" in capsys.readouterr().err
    assert main(["run", "--resume", str(out)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main([*args, "--force", "--seed", "4"]) == 0
    assert open_run_dir(out).read_config_dict()["seed"] == 4


def test_cli_unknown_preset(capsys):
    assert main(["run", "multitask", "--preset", "nope"]) == 2
    assert "unknown multitask preset 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"shared": ["encoder"]}, r"model\.shared=\['encoder'\] selects no parameter"),
        ({"shared": ["heads.task0"]}, r"includes parameters of task 'task0'"),
    ],
)
def test_bad_shared_selection(tmp_path, model, message):
    with pytest.raises(ValueError, match=message):
        start_run(tiny(model=model), tmp_path / "run", report=False)
    assert open_run_dir(tmp_path / "run").read_status()["state"] == "failed"


def test_a_task_that_does_not_use_the_shared_block_is_rejected():
    config = tiny()
    data = multitask.build_data(config)
    model = multitask.build_model(config, data)
    x, y = multitask.probe_batch(config, data)
    criteria = multitask.criteria_for(data)
    with pytest.raises(ValueError, match=r"task 'task1' has no shared parameters"):
        multitask.check_tasks_share(model, ["heads.task0.0.weight"], x, y, criteria)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = multitask.task_losses

    def poisoned(*args):
        calls["n"] += 1
        losses = real(*args)
        return losses * float("nan") if calls["n"] == 12 else losses

    monkeypatch.setattr(multitask, "task_losses", poisoned)
    with pytest.raises(
        TrainingDiverged,
        match=r"task 'task0' is nan at step 12; .*"
        r"last good checkpoint: checkpoints/step-00000010\.pt",
    ):
        start_run(tiny(), tmp_path / "run", report=False)
    run_dir = open_run_dir(tmp_path / "run")
    status = run_dir.read_status()
    assert status["state"] == "failed" and "nan at step 12" in status["message"]
    assert [s for s, _ in run_dir.checkpoints()] == [5, 10]
    assert run_dir.load_checkpoint()["step"] == 10


def tiny_study(study):
    from bea.experiments.studies import MultitaskStudyConfig

    base = {
        "kind": "multitask",
        "data": {
            "dataset": "conflict_regression",
            "num_train": 64,
            "num_test": 32,
            "in_features": 6,
        },
        "model": {"hidden": [6]},
        "train": {"lr": 0.1, "steps": 10, "batch_size": 16},
        "monitor": {"every": 5, "probe_size": 32, "eval_every": 10, "per_layer": False},
        "run": {"checkpoint_every": 5, "progress": False},
    }
    return config_from_dict(
        MultitaskStudyConfig,
        {"name": "s", "study": study, "base": base, "run": {"progress": False}},
    )


def test_lr_sweep_study_tables_and_resume(tmp_path):
    config = tiny_study(
        {
            "type": "lr_sweep",
            "seeds": [0, 1],
            "lrs": [0.1, 0.2],
            "flow_time": 2.0,
            "times": [1.0, 2.0],
        }
    )
    run_dir = start_run(config, tmp_path / "study", stop_after=1, report=False)
    assert run_dir.read_status()["state"] == "interrupted"
    resume_run(run_dir.path)
    tables = run_dir.read_summary()["tables"]
    rows = tables["equal flow time"]
    assert [(r["flow time t"], r["h"], r["steps"]) for r in rows] == [
        (1.0, 0.1, 10),
        (1.0, 0.2, 5),
        (2.0, 0.1, 20),
        (2.0, 0.2, 10),
    ]
    assert "seeds with Δcosine < 0" in rows[1]
    by_loss = tables["equal probe loss"]
    assert [r["h"] for r in by_loss] == [0.1, 0.2, 0.1, 0.2]
    assert all(r["runs reaching it"] == "2/2" for r in by_loss[2:])  # the highest final loss
    assert "<table>" in run_dir.report_path.read_text()


def test_strength_study_response(tmp_path):
    config = tiny_study({"type": "strength", "seeds": [0, 1], "strengths": [-1.0, 0.0]})
    run_dir = start_run(config, tmp_path / "study", report=False)
    response = run_dir.read_summary()["tables"]["response to k"]
    assert {r["quantity"] for r in response} >= {"test mean metric", "cosine over training"}
    assert all("±" in r["slope d/dk (mean ± s.e. over seeds)"] for r in response)


def test_study_base_errors_name_the_base_field():
    with pytest.raises(ValueError, match=r"config: base\.train\.lr must be > 0"):
        from bea.experiments.studies import MultitaskStudyConfig

        config_from_dict(MultitaskStudyConfig, {"base": {"train": {"lr": -1.0}}})
