"""Run directories: refusal to overwrite, atomic checkpoints, metrics truncation on resume."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch

from bea.experiments.config import config_to_toml
from bea.experiments.multitask import MultitaskConfig
from bea.experiments.progress import Progress
from bea.experiments.rundir import (
    RunContext,
    RunStopped,
    atomic_torch_save,
    atomic_write_text,
    capture_rng,
    create_run_dir,
    open_run_dir,
    read_jsonl,
    restore_rng,
)


def make(tmp_path, **run):
    config = MultitaskConfig(name="t")
    config.kind = "multitask"
    for key, value in run.items():
        setattr(config.run, key, value)
    run_dir = create_run_dir(tmp_path / "run", config_to_toml(config), "multitask")
    return config, run_dir


def test_create_refuses_existing_and_force_replaces_only_run_dirs(tmp_path):
    config, run_dir = make(tmp_path)
    run_dir.write_status(state="finished")
    with pytest.raises(FileExistsError, match=r"already exists \(state finished\); pass --force"):
        create_run_dir(run_dir.path, "kind = 'multitask'\n", "multitask")
    (run_dir.path / "extra").write_text("x")
    create_run_dir(run_dir.path, "kind = 'multitask'\n", "multitask", overwrite=True)
    assert not (run_dir.path / "extra").exists()
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a run directory"):
        create_run_dir(other, "", "multitask", overwrite=True)
    assert (other / "precious.txt").exists()
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        open_run_dir(other)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "b.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.pt"]
    assert torch.equal(torch.load(tmp_path / "b.pt")["x"], torch.arange(3))


def test_rng_capture_and_restore():
    state = capture_rng()
    first = (torch.rand(2), np.random.rand(), random.random())  # noqa: NPY002
    restore_rng(state)
    second = (torch.rand(2), np.random.rand(), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_checkpoints_are_pruned_and_resume_truncates_metrics(tmp_path):
    config, run_dir = make(tmp_path, keep_checkpoints=2, progress=False)
    ctx = RunContext(run_dir, config)
    for step in range(1, 8):
        ctx.log(step, {"x": float(step)})
        if step % 2 == 0:
            ctx.save_checkpoint(step, {"w": torch.full((2,), float(step))})
    ctx.close()
    assert [s for s, _ in run_dir.checkpoints()] == [4, 6]
    assert len(run_dir.read_metrics()) == 7
    resumed = RunContext(run_dir, config, resume=True)
    assert resumed.start_step == 6
    assert torch.equal(resumed.resume_state["w"], torch.full((2,), 6.0))
    resumed.close()
    assert [r["step"] for r in run_dir.read_metrics()] == [1, 2, 3, 4, 5, 6]


def test_resume_without_checkpoint_starts_over(tmp_path):
    config, run_dir = make(tmp_path, progress=False)
    ctx = RunContext(run_dir, config)
    ctx.log(1, {"x": 1.0})
    ctx.close()
    again = RunContext(run_dir, config, resume=True)
    assert again.resume_state is None and again.start_step == 0
    again.close()
    assert run_dir.read_metrics() == []


def test_stop_hook_and_divergence_message(tmp_path):
    config, run_dir = make(tmp_path, progress=False)
    ctx = RunContext(run_dir, config, stop_after=3)
    ctx.step_done(2)
    with pytest.raises(RunStopped, match="after step 3"):
        ctx.step_done(3)
    ctx.save_checkpoint(3, {})
    error = ctx.diverged(4, "the loss", float("nan"))
    assert "the loss is nan at step 4" in str(error)
    assert "last good checkpoint: checkpoints/step-00000003.pt" in str(error)
    ctx.close()


def test_read_jsonl_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "x"')
    assert read_jsonl(path) == [{"step": 1}]
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_jsonl(path)


def test_progress_lines():
    stream = io.StringIO()
    progress = Progress(4, "job", stream=stream, interval=0.0)
    progress.update(2, loss=0.5)
    progress.update(4)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("job: 2/4 (50%)") and lines[0].endswith("loss=0.5")
    assert lines[1].startswith("job: 4/4 (100%)")
    silent = io.StringIO()
    Progress(4, "job", stream=silent, enabled=False).update(4)
    assert silent.getvalue() == ""
