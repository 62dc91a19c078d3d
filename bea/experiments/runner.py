"""Run experiments into run directories: the protocol every experiment kind follows.

Experiment protocol
-------------------
``EXPERIMENTS`` maps a kind to the module implementing it. The module exposes:

``KIND: str``
    The kind, equal to the key in ``EXPERIMENTS`` and to ``CONFIG_CLASS.KIND``.

``CONFIG_CLASS``
    A dataclass extending :class:`bea.experiments.config.ExperimentConfig`. Presets are
    ``bea/experiments/presets/<KIND>-<name>.toml``.

``run(config, ctx) -> dict``
    Train and evaluate. ``ctx`` is a :class:`bea.experiments.rundir.RunContext`.
    Before the call the command has seeded torch, numpy and ``random`` with
    ``config.seed`` and set ``torch.set_num_threads(config.run.threads)`` (if > 0).
    The runner must:

    1. build data and model deterministically from the config;
    2. if ``ctx.resume_state`` is not None, load its own state from it (model,
       optimizer, data-order generators and positions, running statistics) and
       continue from step ``ctx.start_step + 1``; call ``ctx.restore_rng()`` right
       before the loop (a no-op on a fresh start);
    3. call ``ctx.start_progress(total_steps)`` once, ``ctx.log(step, values)`` for
       metrics (``ctx.logger`` is the logger to hand to monitors),
       ``ctx.save_checkpoint(step, state)`` when ``ctx.should_checkpoint(step, total)``
       (always at the last step), and ``ctx.step_done(step, **shown)`` at the end of
       every step (progress, and the stop hook used by tests: it raises ``RunStopped``);
    4. on a NaN/inf loss, ``raise ctx.diverged(step, "loss of task 'x'", value)``
       *before* saving a checkpoint, so the last good checkpoint is kept;
    5. return ``{"metrics": {name: number}, "timing": {name: number}, ...}``:
       ``metrics`` are deterministic given seed and config (resume is checked on them),
       ``timing`` holds wall-clock figures; other JSON-able entries are kept as they are.
       The command writes it to ``summary.json`` and marks the run finished.

``build_report(run_dir) -> str``
    The HTML text of the report for a run directory (:class:`bea.experiments.rundir.RunDir`),
    built from its files only (``config.toml``, ``metrics.jsonl``, ``summary.json``,
    checkpoints); ``bea run`` and ``bea report`` write it to ``report.html``. Use
    :class:`bea.report.html.Page`.

Optional: ``COMPARE_KEYS: list[str]``, metric keys that ``bea compare`` overlays.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

EXPERIMENTS: dict[str, str] = {
    "multitask": "bea.experiments.multitask",
    "continual": "bea.experiments.continual",
    "multitask_study": "bea.experiments.studies",
}

PROTOCOL = ("KIND", "CONFIG_CLASS", "run", "build_report")


def load_experiment(kind: str) -> ModuleType:
    """The module implementing ``kind``, checked against the protocol."""
    if kind not in EXPERIMENTS:
        raise ValueError(f"run: unknown experiment kind {kind!r} (known: {', '.join(EXPERIMENTS)})")
    try:
        module = importlib.import_module(EXPERIMENTS[kind])
    except ModuleNotFoundError as error:
        if error.name == EXPERIMENTS[kind]:
            raise ValueError(f"run: experiment kind {kind!r} is not available yet") from None
        raise
    missing = [name for name in PROTOCOL if not hasattr(module, name)]
    if missing:
        raise TypeError(f"run: module {module.__name__} lacks {', '.join(missing)}")
    return module


def default_out(config: Any) -> Path:
    return Path("runs") / f"{config.kind}-{config.name}-s{config.seed}"


def load_config(
    kind: str,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The validated config of ``kind`` from a preset name or a TOML file."""
    from bea.experiments.config import load_config_file, load_preset

    module = load_experiment(kind)
    if (preset is None) == (config_file is None):
        raise ValueError("run: give exactly one of --preset NAME or --config FILE")
    if preset is not None:
        return load_preset(module.CONFIG_CLASS, preset, overrides)
    return load_config_file(module.CONFIG_CLASS, config_file, overrides)


def write_report(run_dir: Any, module: ModuleType | None = None) -> Path:
    """Build the report of ``run_dir`` with its kind's ``build_report``; return its path."""
    from bea.experiments.rundir import atomic_write_text

    module = module or load_experiment(run_dir.kind())
    atomic_write_text(run_dir.report_path, module.build_report(run_dir))
    return run_dir.report_path


def _export_csv(run_dir: Any) -> None:
    from bea.loggers import CsvLogger

    logger = CsvLogger(run_dir.path / "metrics.csv")
    for record in run_dir.read_metrics():
        step = record.pop("step")
        logger.log(step, record)
    logger.close()


def _execute(
    module: ModuleType,
    config: Any,
    run_dir: Any,
    *,
    resume: bool,
    stop_after: int | None,
    progress: bool | None,
    report: bool,
) -> dict[str, Any] | None:
    import torch

    from bea.experiments.rundir import RunContext, RunStopped, seed_everything

    seed_everything(config.seed)
    threads = torch.get_num_threads()
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    ctx = RunContext(run_dir, config, resume=resume, progress=progress, stop_after=stop_after)
    run_dir.write_status(state="running", message="")
    try:
        summary = module.run(config, ctx)
    except RunStopped as stop:
        run_dir.write_status(state="interrupted", message=str(stop))
        return None
    except KeyboardInterrupt:
        run_dir.write_status(state="interrupted", message="interrupted by the user")
        raise
    except Exception as error:
        run_dir.write_status(state="failed", message=f"{type(error).__name__}: {error}")
        raise
    finally:
        ctx.close()
        torch.set_num_threads(threads)
    summary = dict(summary)
    summary.setdefault("metrics", {})
    summary.setdefault("timing", {})
    summary["kind"] = config.kind
    run_dir.write_summary(summary)
    if config.run.csv:
        _export_csv(run_dir)
    run_dir.write_status(state="finished", message="")
    if report:
        path = write_report(run_dir, module)
        if ctx.show_progress:
            print(f"report: {path}", file=sys.stderr)
    return summary


def start_run(
    config: Any,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
    report: bool = True,
) -> Any:
    """Run ``config`` (an ``ExperimentConfig``) in a new run directory; return the RunDir.

    ``stop_after`` stops the run after that step as if it had been killed there
    (status ``interrupted``; a test hook). ``progress`` overrides ``config.run.progress``.
    """
    from bea.experiments.config import config_to_toml
    from bea.experiments.rundir import create_run_dir

    module = load_experiment(config.kind)
    out = Path(out) if out is not None else default_out(config)
    run_dir = create_run_dir(out, config_to_toml(config), config.kind, overwrite=overwrite)
    _execute(
        module,
        config,
        run_dir,
        resume=False,
        stop_after=stop_after,
        progress=progress,
        report=report,
    )
    return run_dir


def resume_run(
    path: str | Path,
    *,
    stop_after: int | None = None,
    progress: bool | None = None,
    report: bool = True,
) -> Any:
    """Continue an unfinished run from its newest checkpoint; return the RunDir."""
    from bea.experiments.config import config_from_dict
    from bea.experiments.rundir import open_run_dir

    run_dir = open_run_dir(path)
    status = run_dir.read_status()
    if status.get("state") == "finished":
        raise ValueError(f"run: {str(path)!r} already finished; nothing to resume")
    data = run_dir.read_config_dict()
    module = load_experiment(str(data.get("kind", "")))
    config = config_from_dict(module.CONFIG_CLASS, data)
    _execute(
        module,
        config,
        run_dir,
        resume=True,
        stop_after=stop_after,
        progress=progress,
        report=report,
    )
    return run_dir
