"""Multitask studies: many multitask runs and the tables that compare them.

Kind ``multitask_study`` (``bea run multitask_study --preset lr_sweep``). A study config
has a ``[study]`` section and a ``[base]`` table holding a complete multitask config; each
sub-run is ``base`` with a few fields replaced, run in ``RUN_DIR/runs/<label>`` (a normal
multitask run directory, with its own report). A killed study resumes with
``bea run --resume RUN_DIR``: finished sub-runs are kept, an unfinished one resumes from
its checkpoint.

Study types (``study.type``):

- ``lr_sweep``: for every ``h`` in ``study.lrs`` and seed in ``study.seeds``, train for
  ``round(study.flow_time / h)`` steps, so all runs cover the same flow time
  ``t = h × steps`` (ten monitor records per run, at the same flow times). The table
  compares the cosine and the conflict term at equal flow times (the monitor record
  nearest each ``t`` in ``study.times``), as mean ± std over seeds and as the difference to
  the smallest ``h`` *paired by seed* (mean ± std of the per-seed differences, and how many
  seeds have a negative difference). The conflict term grows with ``h`` by its definition
  ``(h/2) α_i α_j ⟨g_i, g_j⟩``; ``conflict/h`` removes that factor. A second table
  compares at equal *probe loss* (the first record whose weighted loss on the monitor's
  probe batch is at most each level of ``study.losses``; default: halfway, and the highest
  final loss of all runs), which removes differences in training progress.
- ``methods``: every ``method`` in ``study.methods`` for every seed: final test metrics
  (mean ± std over seeds), mean cosine and fraction of negative cosines over training,
  and the training time per step.
- ``strength``: the knob ``L + k (h/2) Σ α_i α_j ⟨∇_θ L_i, ∇_θ L_j⟩`` for ``k`` in
  ``study.strengths``: per ``k`` the mean cosine over training and the test metric; and the
  response: per seed the least-squares slope of each quantity against ``k``, reported as
  mean ± standard error over seeds, with the paired difference ``k = -1`` minus ``k = 0``.

``python -m bea.experiments.studies RUN_DIR`` prints the study's tables as Markdown.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from bea.experiments.config import ConfigError, ExperimentConfig, config_from_dict, fail
from bea.experiments.multitask import MultitaskConfig

KIND = "multitask_study"


@dataclass(kw_only=True)
class StudySettings:
    """``[study]``: which study, over which seeds and values (see the module docstring)."""

    type: Literal["lr_sweep", "methods", "strength"] = "lr_sweep"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lrs: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    flow_time: float = 10.0
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["sgd", "cancel", "pcgrad"])
    strengths: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0, 2.0])

    def validate(self, path: str = "study") -> None:
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise fail(f"{path}.seeds", "must be distinct and non-empty", self.seeds)
        if any(lr <= 0 for lr in self.lrs) or not self.lrs:
            raise fail(f"{path}.lrs", "must be non-empty and > 0", self.lrs)
        if self.flow_time <= 0:
            raise fail(f"{path}.flow_time", "must be > 0", self.flow_time)
        if any(t <= 0 or t > self.flow_time for t in self.times):
            raise fail(
                f"{path}.times", f"must lie in (0, flow_time = {self.flow_time}]", self.times
            )
        if self.type == "methods" and not self.methods:
            raise fail(f"{path}.methods", "must name at least one method", self.methods)
        if self.type == "strength" and len(self.strengths) < 2:
            raise fail(f"{path}.strengths", "needs at least two values of k", self.strengths)


@dataclass(kw_only=True)
class MultitaskStudyConfig(ExperimentConfig):
    """A study: ``[study]`` and ``[base]`` (a complete multitask config, validated as one)."""

    KIND: ClassVar[str] = KIND

    study: StudySettings = field(default_factory=StudySettings)
    base: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        try:
            config_from_dict(MultitaskConfig, self.base)
        except ConfigError as error:
            raise ConfigError(str(error).replace("config: ", "config: base.", 1)) from None
        if self.study.type == "lr_sweep":
            for lr in self.study.lrs:
                steps = round(self.study.flow_time / lr)
                if steps < 10:
                    raise fail(
                        "study.flow_time",
                        f"gives {steps} steps at h = {lr}, fewer "
                        "than the 10 monitor records a sweep run takes",
                        self.study.flow_time,
                    )
        if self.study.type == "methods":
            for name in self.study.methods:
                config_from_dict(MultitaskConfig, _with(self.base, {"method": {"name": name}}))


CONFIG_CLASS = MultitaskStudyConfig
COMPARE_KEYS: list[str] = []


def _with(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def sub_runs(config: MultitaskStudyConfig) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(label, factors, multitask config dict)`` of every sub-run, in run order."""
    study, base = config.study, config.base
    runs = []
    for seed in study.seeds:
        if study.type == "lr_sweep":
            for lr in study.lrs:
                steps = round(study.flow_time / lr)
                changes = {
                    "seed": seed,
                    "train": {"lr": lr, "steps": steps},
                    # ten monitor records at the same flow times t = k * flow_time / 10
                    "monitor": {"every": max(1, steps // 10), "eval_every": steps},
                }
                runs.append((f"lr{lr:g}-s{seed}", {"lr": lr, "seed": seed}, changes))
        elif study.type == "methods":
            for name in study.methods:
                changes = {"seed": seed, "method": {"name": name}}
                runs.append((f"{name}-s{seed}", {"method": name, "seed": seed}, changes))
        else:
            for k in study.strengths:
                changes = {"seed": seed, "method": {"name": "conflict", "strength": k}}
                runs.append((f"k{k:g}-s{seed}", {"k": k, "seed": seed}, changes))
    return [
        (label, factors, _with(base, {"name": label, **changes}))
        for label, factors, changes in runs
    ]


def run(config: MultitaskStudyConfig, ctx: Any) -> dict[str, Any]:
    """Run (or continue) every sub-run, then tabulate (runner protocol)."""
    from bea.experiments.rundir import RunDir
    from bea.experiments.runner import resume_run, start_run

    plan = sub_runs(config)
    ctx.start_progress(len(plan), f"{config.kind} {config.name}")
    timing = 0.0
    for index, (label, factors, data) in enumerate(plan, start=1):
        sub = config_from_dict(MultitaskConfig, data)
        sub.run.progress = False
        path = ctx.run_dir.path / "runs" / label
        state = RunDir(path).read_status().get("state") if path.exists() else None
        if state == "finished":
            pass
        elif state in ("running", "interrupted"):
            resume_run(path, progress=False, report=False)
        else:
            start_run(sub, path, overwrite=True, progress=False, report=False)
        summary = RunDir(path).read_summary()
        timing += summary.get("timing", {}).get("seconds_per_step", 0.0)
        ctx.log(
            index,
            {
                "label": label,
                **{f"factor/{k}": v for k, v in factors.items()},
                **summary.get("metrics", {}),
            },
        )
        ctx.step_done(index, run=label)
    tables = study_tables(config, ctx.run_dir.path)
    return {
        "metrics": {"runs": len(plan)},
        "timing": {"mean_seconds_per_step": timing / len(plan)},
        "tables": tables,
    }


# --------------------------------------------------------------------------- tables


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return f"{array.mean():.4g} ± {std:.2g}"


def _mean_se(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else float("nan")
    return f"{array.mean():.4g} ± {se:.2g}"


def _nearest(records: list[dict[str, Any]], key: str, flow_time: float, lr: float) -> float:
    rows = [r for r in records if key in r]
    if not rows:
        return float("nan")
    best = min(rows, key=lambda r: abs(lr * r["step"] - flow_time))
    return float(best[key])


def _pair_key(records: list[dict[str, Any]]) -> str:
    for record in records:
        for key in record:
            if key.startswith("mt/cosine/"):
                return key[len("mt/cosine/") :]
    return ""


def _load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from bea.experiments.rundir import RunDir

    run_dir = RunDir(path)
    return run_dir.read_summary(), run_dir.read_metrics()


def _over_training(records: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in records if key in r and r["step"] > 0]
    return float(np.mean(values)) if values else float("nan")


def study_tables(config: MultitaskStudyConfig, root: Path) -> dict[str, list[dict[str, Any]]]:
    """The study's tables (lists of rows), from the sub-run directories under ``root/runs``."""
    plan = sub_runs(config)
    results = {}
    for label, factors, _ in plan:
        summary, records = _load(root / "runs" / label)
        results[label] = (factors, summary, records)
    study = config.study
    if study.type == "lr_sweep":
        return _lr_tables(study, results)
    if study.type == "methods":
        return _method_tables(study, results)
    return _strength_tables(study, results)


def _lr_tables(study: StudySettings, results) -> dict[str, list[dict[str, Any]]]:
    times = study.times or [study.flow_time * f for f in (0.25, 0.5, 1.0)]
    reference = min(study.lrs)
    pair = _pair_key(next(iter(results.values()))[2])
    value: dict[tuple[float, int, float, str], float] = {}
    finals: dict[tuple[float, int], float] = {}
    for factors, summary, records in results.values():
        lr, seed = factors["lr"], factors["seed"]
        finals[(lr, seed)] = summary.get("metrics", {}).get("test/mean_metric", float("nan"))
        for t in times:
            cosine = _nearest(records, f"mt/cosine/{pair}", t, lr)
            conflict = _nearest(records, "mt/conflict_total", t, lr)
            value[(lr, seed, t, "cosine")] = cosine
            value[(lr, seed, t, "conflict")] = conflict
            value[(lr, seed, t, "conflict/h")] = conflict / lr
    rows = []
    for t in times:
        for lr in study.lrs:
            row: dict[str, Any] = {"flow time t": t, "h": lr, "steps": round(t / lr)}
            for name in ("cosine", "conflict", "conflict/h"):
                row[name] = _mean_std([value[(lr, s, t, name)] for s in study.seeds])
            if lr != reference:
                diffs = [
                    value[(lr, s, t, "cosine")] - value[(reference, s, t, "cosine")]
                    for s in study.seeds
                ]
                row[f"Δcosine vs h={reference:g} (paired)"] = _mean_std(diffs)
                row["seeds with Δcosine < 0"] = f"{sum(d < 0 for d in diffs)}/{len(diffs)}"
            rows.append(row)
    final_rows = [
        {
            "h": lr,
            "steps": round(study.flow_time / lr),
            "final test mean metric": _mean_std([finals[(lr, s)] for s in study.seeds]),
        }
        for lr in study.lrs
    ]
    return {
        "equal flow time": rows,
        "equal probe loss": _equal_loss_rows(study, results, pair),
        "final test metric": final_rows,
    }


def _equal_loss_rows(study: StudySettings, results, pair: str) -> list[dict[str, Any]]:
    """Cosine and conflict/h at the first record where the probe loss falls below a level.

    Equal flow time still mixes in training progress when runs with different ``h`` train
    at different speeds; equal training loss on the fixed probe batch removes that.
    """
    curves = {}
    for factors, _, records in results.values():
        rows = [r for r in records if "mt/weighted_loss" in r]
        curves[(factors["lr"], factors["seed"])] = rows
    finals = [rows[-1]["mt/weighted_loss"] for rows in curves.values() if rows]
    starts = [rows[0]["mt/weighted_loss"] for rows in curves.values() if rows]
    if not finals:
        return []
    top, bottom = min(starts), max(finals)
    levels = study.losses or [bottom + f * (top - bottom) for f in (0.5, 0.0)]
    out = []
    for level in levels:
        for lr in study.lrs:
            cosines, conflicts, times = [], [], []
            for seed in study.seeds:
                hit = next((r for r in curves[(lr, seed)] if r["mt/weighted_loss"] <= level), None)
                if hit is not None:
                    cosines.append(float(hit[f"mt/cosine/{pair}"]))
                    conflicts.append(float(hit["mt/conflict_total"]) / lr)
                    times.append(lr * hit["step"])
            out.append(
                {
                    "probe loss ≤": round(level, 4),
                    "h": lr,
                    "runs reaching it": f"{len(cosines)}/{len(study.seeds)}",
                    "flow time": _mean_std(times),
                    "cosine": _mean_std(cosines),
                    "conflict/h": _mean_std(conflicts),
                }
            )
    return out


def _method_tables(study: StudySettings, results) -> dict[str, list[dict[str, Any]]]:
    rows = []
    for name in study.methods:
        chosen = [(s, r) for f, s, r in results.values() if f["method"] == name]
        metrics = [s.get("metrics", {}) for s, _ in chosen]
        tasks = sorted(k for k in metrics[0] if k.startswith(("test/acc/", "test/mse/")))
        pair = _pair_key(chosen[0][1])
        row: dict[str, Any] = {"method": name}
        for key in tasks:
            row[key.replace("test/", "test ")] = _mean_std([m.get(key) for m in metrics])
        row["test mean metric"] = _mean_std([m.get("test/mean_metric") for m in metrics])
        row["mean cosine"] = _mean_std([m.get(f"mt/mean_cosine/{pair}") for m in metrics])
        row["frac cos<0"] = _mean_std([m.get(f"mt/frac_negative_cosine/{pair}") for m in metrics])
        row["ms / step"] = _mean_std(
            [1000 * s.get("timing", {}).get("seconds_per_step", float("nan")) for s, _ in chosen]
        )
        rows.append(row)
    return {"methods": rows}


def _strength_tables(study: StudySettings, results) -> dict[str, list[dict[str, Any]]]:
    per: dict[tuple[float, int], dict[str, float]] = {}
    pair = _pair_key(next(iter(results.values()))[2])
    for factors, summary, records in results.values():
        metrics = summary.get("metrics", {})
        per[(factors["k"], factors["seed"])] = {
            "cosine over training": _over_training(records, f"mt/cosine/{pair}"),
            "conflict/h over training": _over_training(records, "mt/conflict_total")
            / records[0].get("mt/lr", 1.0),
            "final cosine": _final(records, f"mt/cosine/{pair}"),
            "test mean metric": metrics.get("test/mean_metric", float("nan")),
        }
    quantities = list(next(iter(per.values())))
    rows = []
    for k in study.strengths:
        row: dict[str, Any] = {"k": k}
        for q in quantities:
            row[q] = _mean_std([per[(k, s)][q] for s in study.seeds])
        rows.append(row)
    response = []
    ks = np.asarray(study.strengths, dtype=float)
    for q in quantities:
        slopes = []
        for s in study.seeds:
            ys = np.asarray([per[(k, s)][q] for k in study.strengths], dtype=float)
            slopes.append(float(np.polyfit(ks, ys, 1)[0]))
        row = {"quantity": q, "slope d/dk (mean ± s.e. over seeds)": _mean_se(slopes)}
        if -1.0 in study.strengths and 0.0 in study.strengths:
            diffs = [per[(-1.0, s)][q] - per[(0.0, s)][q] for s in study.seeds]
            row["k=-1 minus k=0 (paired)"] = _mean_se(diffs)
        response.append(row)
    return {"by k": rows, "response to k": response}


def _final(records: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in records if key in r]
    return float(values[-1]) if values else float("nan")


# --------------------------------------------------------------------------- report


def build_report(run_dir: Any) -> str:
    """Tables of the study and, for an lr sweep, cosine against flow time per ``h``."""
    from bea.experiments.rundir import series
    from bea.report.html import Page, line_plot

    data = run_dir.read_config_dict()
    config = config_from_dict(MultitaskStudyConfig, data)
    summary = run_dir.read_summary()
    page = Page(f"multitask study: {config.name} ({config.study.type})")
    if config.description:
        page.paragraph(config.description)
    page.paragraph(
        f"state: {run_dir.read_status().get('state')}; seeds {config.study.seeds}", note=True
    )
    for name, rows in summary.get("tables", {}).items():
        page.table(rows, caption=name)
    if config.study.type == "lr_sweep" and summary:
        curves = {}
        for label, factors, _ in sub_runs(config):
            _, records = _load(run_dir.path / "runs" / label)
            pair = _pair_key(records)
            steps, values = series(records, f"mt/cosine/{pair}")
            if factors["seed"] == config.study.seeds[0]:
                curves[f"h={factors['lr']:g}"] = (steps * factors["lr"], values)
        page.figure(
            line_plot(
                curves,
                title=f"cosine vs flow time (seed {config.study.seeds[0]})",
                xlabel="flow time h × step",
                ylabel="cosine",
                hline=0.0,
            ),
            "cosine of the shared task gradients against flow time, one line per h",
        )
    page.paragraph("Each sub-run has its own report under runs/<label>/ (bea report).", note=True)
    return page.render()


def markdown_tables(run_dir: str | Path) -> str:
    """The study's tables as Markdown sections (for docs)."""
    from bea.experiments.rundir import open_run_dir
    from bea.report.html import markdown_table

    summary = open_run_dir(run_dir).read_summary()
    parts = []
    for name, rows in summary.get("tables", {}).items():
        parts.append(f"**{name}**\n\n{markdown_table(rows)}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(markdown_tables(argument))
