"""The paper's continual-learning claims, measured.

Run as ``python -m bea.experiments.continual_studies --out DIR [--size small|medium]``;
it trains many small continual runs in memory (no run directories) and writes
``DIR/results.json``, ``DIR/tables.md`` and PNG figures. What it measures:

1. **Remark 4.3, cross- against within-task brackets.** At every task switch of a naive
   run, at the same parameters ``θ``, the relative bracket
   ``‖[g_a, g_b]‖ / (‖g_a‖‖g_b‖)`` of ``pairs`` pairs (old-task batch, new-task batch)
   against ``pairs`` pairs of two new-task batches, and the same within a task half-way
   through it (:func:`switch_bracket_probe`). The ratio of the means, per switch and seed.
2. **The dip** in each old task's accuracy right after each switch
   (:func:`~bea.diagnostics.continual_metrics.stability_gap_dips`, window ``dip_window``).
3. **Correlations** across seeds, learning rates and strategies, one point per
   (run, switch), between bracket measures at the switch (relative bracket of the
   consecutive pair across the switch, the old-task push ``⟨g_old, [g_old, g_new]⟩`` and
   the measured one-step change of the old loss, averaged over the steps the monitor
   measured right after the switch) and the dip and the final forgetting of the
   previous task. Pearson and Spearman coefficients with p-values (scipy).
4. **Strategy comparison**: mean ± std over seeds of the continual metrics.
5. **Smooth against ReLU**: the same protocol with ``gelu``; for both, the fraction
   of loss-change predictions flagged (ReLU units switched, large remainder) and the
   median ``|rest| / |measured|``.

Sizes: ``small`` (Rotated MNIST-5k pooled to 14x14, 2x100 MLP, 150 iterations per task,
3 seeds) fits in a few minutes on 2 CPU cores; ``medium`` uses the 28x28 images, 2x400
MLP and 500 iterations per task of the stability-gap setting.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bea._tree import tree_dot, tree_norm
from bea.derivatives import lie_bracket
from bea.diagnostics import continual_metrics as cm
from bea.experiments.config import config_from_dict
from bea.experiments.continual import (
    ContinualConfig,
    TaskStream,
    _Phase,
    build_model,
    make_loss_fn,
)
from bea.experiments.rundir import TrainingDiverged, seed_everything

__all__ = [
    "relative_bracket",
    "switch_bracket_probe",
    "correlations",
    "mean_std",
    "train_in_memory",
    "run_studies",
]

SIZES = {
    "tiny": {  # for tests only: seconds, numbers meaningless
        "data": {
            "name": "rotated_mnist_5k",
            "angles": [0.0, 90.0],
            "downscale": 4,
            "eval_per_task": 30,
            "train_per_task": 200,
        },
        "model": {"hidden": [16], "activation": "relu"},
        "train": {"lr": 0.1, "batch_size": 16, "steps_per_task": 12, "memory_per_task": 20},
        "monitor": {"every": 4, "around": 2, "old_batch_size": 16, "probe_per_task": 8},
        "seeds": [0, 1],
        "lrs": [0.1, 0.2],
        "pairs": 2,
        "dip_window": 5,
    },
    "small": {
        "data": {
            "name": "rotated_mnist_5k",
            "angles": [0.0, 80.0, 160.0],
            "downscale": 2,
            "eval_per_task": 100,
            "train_per_task": 2000,
        },
        "model": {"hidden": [100, 100], "activation": "relu"},
        "train": {"lr": 0.1, "batch_size": 64, "steps_per_task": 150, "memory_per_task": 100},
        "monitor": {"every": 15, "around": 5, "old_batch_size": 64, "probe_per_task": 32},
        "seeds": [0, 1, 2],
        "lrs": [0.05, 0.1, 0.2],
        "pairs": 4,
        "dip_window": 30,
    },
    "medium": {
        "data": {
            "name": "rotated_mnist_5k",
            "angles": [0.0, 80.0, 160.0],
            "downscale": 1,
            "eval_per_task": 200,
        },
        "model": {"hidden": [400, 400], "activation": "relu"},
        "train": {"lr": 0.1, "batch_size": 128, "steps_per_task": 500, "memory_per_task": 100},
        "monitor": {"every": 25, "around": 5, "old_batch_size": 128, "probe_per_task": 32},
        "seeds": [0, 1, 2],
        "lrs": [0.05, 0.1, 0.2],
        "pairs": 4,
        "dip_window": 50,
    },
}
STRATEGY_NAMES = [
    "naive",
    "replay",
    "ewc",
    "agem",
    "joint",
    "sequential_replay",
    "symmetric_replay",
    "bracket_penalty",
]


# --------------------------------------------------------------------------- pure pieces


def relative_bracket(loss_a: Callable, loss_b: Callable, params) -> tuple[float, float, float]:
    """``(‖[g_a, g_b]‖, ‖[g_a, g_b]‖ / (‖g_a‖‖g_b‖), ⟨g_a, [g_a, g_b]⟩)`` at ``params``."""
    result = lie_bracket(loss_a, loss_b, params, return_grads=True)
    norm = float(tree_norm(result.bracket))
    scale = float(tree_norm(result.grad_a)) * float(tree_norm(result.grad_b))
    push = float(tree_dot(result.grad_a, result.bracket))
    return norm, (norm / scale if scale > 0 else math.nan), push


def switch_bracket_probe(
    loss_fn: Callable, params, old_batches: Sequence, new_batches: Sequence
) -> dict[str, list[float]]:
    """Relative brackets at one point: (old_i, new_i) pairs against (new_i, new_{i+1}) pairs.

    Both lists use the same new-task batches, so the comparison isolates what the old
    task's gradient adds (Remark 4.3).

    Raises:
        ValueError: fewer than two new batches or fewer old batches than pairs.
    """
    if len(new_batches) < 2:
        raise ValueError(f"switch_bracket_probe: needs >= 2 new batches, got {len(new_batches)}")
    pairs = len(new_batches) - 1
    if len(old_batches) < pairs:
        raise ValueError(
            f"switch_bracket_probe: needs >= {pairs} old batches, got {len(old_batches)}"
        )

    def bound(batch):
        return lambda p: loss_fn(p, *batch)

    cross = [
        relative_bracket(bound(old_batches[i]), bound(new_batches[i]), params)[1]
        for i in range(pairs)
    ]
    within = [
        relative_bracket(bound(new_batches[i]), bound(new_batches[i + 1]), params)[1]
        for i in range(pairs)
    ]
    return {"cross": cross, "within": within}


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman coefficients of finite pairs, with p-values and ``n``."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {
            "n": int(x.size),
            "pearson": math.nan,
            "pearson_p": math.nan,
            "spearman": math.nan,
            "spearman_p": math.nan,
        }
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    return {
        "n": int(x.size),
        "pearson": float(pearson[0]),
        "pearson_p": float(pearson[1]),
        "spearman": float(spearman[0]),
        "spearman_p": float(spearman[1]),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


# --------------------------------------------------------------------------- training


class _MemoryContext:
    """Just enough of :class:`~bea.experiments.rundir.RunContext` for :class:`_Phase`."""

    def diverged(self, step, what, value):
        return TrainingDiverged(f"continual study: {what} is {value} at step {step}")


class _NullLogger:
    def log(self, step, values) -> None:
        pass

    def close(self) -> None:
        pass


def _config(size: dict, seed: int, lr: float, strategy: str, activation: str) -> ContinualConfig:
    data = {
        "name": "study",
        "seed": seed,
        "data": dict(size["data"]),
        "model": {**size["model"], "activation": activation},
        "train": {**size["train"], "lr": lr, "strategies": [strategy]},
        "monitor": dict(size["monitor"]),
        "run": {"threads": 1, "progress": False},
    }
    return config_from_dict(ContinualConfig, data)


def train_in_memory(config: ContinualConfig, probe_pairs: int = 0) -> dict[str, Any]:
    """Train the single strategy of ``config``; return curve, monitor records, summary.

    With ``probe_pairs > 0``, :func:`switch_bracket_probe` runs at every switch (just
    before the first step of the new task) and half-way through each task.
    """
    seed_everything(config.seed)
    sequence = TaskStream(config)
    model = build_model(config, sequence.data)
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss_fn = make_loss_fn(model)
    name = config.train.strategies[0]
    phase = _Phase(config, sequence, model, loss_fn, name, initial, _NullLogger(), 0)
    phase.record_eval(0, lambda step, values: None)
    ctx = _MemoryContext()
    probes = []
    spt = sequence.steps_per_task
    started = time.perf_counter()
    for step in range(1, sequence.total + 1):
        task = sequence.task_of(step)
        at_switch = task > 0 and step == task * spt + 1
        halfway = step == task * spt + spt // 2
        if probe_pairs and (at_switch or (halfway and task > 0)):
            new = [sequence.batch(task * spt + 1 + i, False) for i in range(probe_pairs + 1)]
            old = [sequence.batch((task - 1) * spt + 1 + i, False) for i in range(probe_pairs)]
            probe = switch_bracket_probe(loss_fn, phase.params, old, new)
            probes.append(
                {"step": step, "task": task, "where": "switch" if at_switch else "halfway", **probe}
            )
        phase.train_step(step, ctx)
        phase.record_eval(step, lambda step, values: None)
    seconds = time.perf_counter() - started
    return {
        "config": config,
        "names": sequence.names,
        "task_ends": sequence.task_ends,
        "curve": np.asarray(phase.curve),
        "records": list(phase.monitor.records) if phase.monitor is not None else [],
        "summary": {k.split("/", 1)[1]: v for k, v in phase.summary().items()},
        "probes": probes,
        "seconds": seconds,
    }


def _switch_rows(result: dict[str, Any], dip_window: int) -> list[dict[str, Any]]:
    """One row per switch: bracket measures right after it, dip and forgetting."""
    curve, ends = result["curve"], result["task_ends"]
    dips = cm.stability_gap_dips(curve, ends, window=dip_window)
    final = curve[-1]
    rows = []
    around = result["config"].monitor.around
    for k in range(1, len(ends)):
        switch = ends[k - 1]
        after = [r for r in result["records"] if switch < r["step"] <= switch + around]
        cross = [r for r in after if r.get("cross_task")]
        peak = float(np.max(curve[ends[k - 1] : ends[-1] + 1, k - 1]))

        def mean(key, rows=after):
            values = [r[key] for r in rows if key in r and r[key] is not None]
            return float(np.mean(values)) if values else math.nan

        rows.append(
            {
                "switch": k,
                "dip": float(dips[k, k - 1]),
                "forgetting": float(curve[ends[k - 1], k - 1] - final[k - 1]),
                "max_forgetting": peak - float(final[k - 1]),
                "cross_relative_bracket": mean("bracket_relative", cross),
                "cross_bracket_norm": mean("bracket_norm", cross),
                "old_push": mean("old_bracket_push"),
                "old_relative_bracket": mean("old_bracket_relative"),
                "old_loss_change": mean("delta_measured"),
                "old_loss_curvature": mean("delta_curvature"),
                "old_loss_first_order": mean("delta_first_order"),
            }
        )
    return rows


def _validity(result: dict[str, Any]) -> dict[str, float]:
    records = [r for r in result["records"] if "delta_measured" in r]
    if not records:
        return {"measurements": 0}
    switched = np.array(["units_switched" in r["flags"] for r in records])
    remainder = np.array(["remainder" in r["flags"] for r in records])
    ratio = np.array(
        [
            abs(r["delta_rest"]) / abs(r["delta_measured"])
            for r in records
            if r["delta_measured"] != 0
        ]
    )
    return {
        "measurements": len(records),
        "fraction_units_switched": float(switched.mean()),
        "fraction_large_remainder": float(remainder.mean()),
        "median_rest_over_measured": float(np.median(ratio)) if ratio.size else math.nan,
        "median_units_switched": float(np.median([r.get("units_switched", 0) for r in records])),
    }


# --------------------------------------------------------------------------- driver


def run_studies(
    size_name: str,
    out: Path,
    strategies: Sequence[str] = STRATEGY_NAMES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every study at ``size_name``; write results, tables and figures into ``out``."""
    if size_name not in SIZES:
        raise ValueError(f"run_studies: unknown size {size_name!r} (known: {', '.join(SIZES)})")
    size = SIZES[size_name]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    runs: dict[tuple, dict[str, Any]] = {}
    base_lr = size["train"]["lr"]
    plan = [(s, base_lr, name, "relu") for name in strategies for s in size["seeds"]]
    plan += [
        (s, lr, name, "relu")
        for name in ("naive", "replay")
        for lr in size["lrs"]
        if lr != base_lr
        for s in size["seeds"]
    ]
    plan += [(s, base_lr, name, "gelu") for name in ("naive", "replay") for s in size["seeds"]]
    started = time.perf_counter()
    for index, (seed, lr, name, activation) in enumerate(plan):
        config = _config(size, seed, lr, name, activation)
        probe = size["pairs"] if name == "naive" and lr == base_lr else 0
        try:
            runs[(seed, lr, name, activation)] = train_in_memory(config, probe_pairs=probe)
        except TrainingDiverged as error:
            log(f"[{index + 1}/{len(plan)}] {name} lr={lr} seed={seed} {activation}: {error}")
            continue
        log(
            f"[{index + 1}/{len(plan)}] {name} lr={lr} seed={seed} {activation}: "
            f"{runs[(seed, lr, name, activation)]['seconds']:.1f}s "
            f"(total {time.perf_counter() - started:.0f}s)"
        )

    results: dict[str, Any] = {"size": size_name, "settings": size, "plan_length": len(plan)}
    # 1. Remark 4.3
    remark = []
    for activation in ("relu", "gelu"):
        for seed in size["seeds"]:
            key = (seed, base_lr, "naive", activation)
            if key not in runs:
                continue
            for probe in runs[key]["probes"]:
                cross, within = np.mean(probe["cross"]), np.mean(probe["within"])
                remark.append(
                    {
                        "activation": activation,
                        "seed": seed,
                        "where": probe["where"],
                        "task": probe["task"],
                        "cross": float(cross),
                        "within": float(within),
                        "ratio": float(cross / within),
                    }
                )
    results["remark_4_3"] = remark
    # 2-3. dips and correlations
    rows = []
    for (seed, lr, name, activation), result in runs.items():
        for row in _switch_rows(result, size["dip_window"]):
            rows.append({"seed": seed, "lr": lr, "strategy": name, "activation": activation, **row})
    results["switch_rows"] = rows
    measures = [
        "cross_relative_bracket",
        "cross_bracket_norm",
        "old_relative_bracket",
        "old_push",
        "old_loss_change",
        "old_loss_curvature",
        "old_loss_first_order",
    ]
    corr = []
    for activation in ("relu", "gelu"):
        subset = [r for r in rows if r["activation"] == activation]
        for measure in measures:
            for target in ("dip", "forgetting"):
                c = correlations([r[measure] for r in subset], [r[target] for r in subset])
                corr.append({"activation": activation, "measure": measure, "target": target, **c})
    results["correlations"] = corr
    # 4. strategies
    table = []
    keys = [
        "average_accuracy",
        "forgetting",
        "backward_transfer",
        "min_accuracy",
        "worst_case_accuracy",
        "windowed_forgetting_10",
        "mean_dip",
    ]
    for name in strategies:
        summaries = [
            runs[(s, base_lr, name, "relu")]["summary"]
            for s in size["seeds"]
            if (s, base_lr, name, "relu") in runs
        ]
        if not summaries:
            continue
        row: dict[str, Any] = {"strategy": name, "seeds": len(summaries)}
        for key in keys:
            m, s = mean_std([x[key] for x in summaries])
            row[key] = f"{m:.3f} ± {s:.3f}"
        seconds = [
            runs[(s, base_lr, name, "relu")]["seconds"]
            for s in size["seeds"]
            if (s, base_lr, name, "relu") in runs
        ]
        row["seconds"] = f"{np.mean(seconds):.1f}"
        table.append(row)
    results["strategy_table"] = table
    # 5. validity, ReLU against smooth
    validity = []
    for activation in ("relu", "gelu"):
        for name in ("naive", "replay"):
            for seed in size["seeds"]:
                key = (seed, base_lr, name, activation)
                if key in runs:
                    validity.append(
                        {
                            "activation": activation,
                            "strategy": name,
                            "seed": seed,
                            **_validity(runs[key]),
                        }
                    )
    results["validity"] = validity
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    _write_tables(results, out)
    _write_figures(runs, results, size, out)
    return results


def _write_tables(results: dict[str, Any], out: Path) -> None:
    from bea.report.html import markdown_table

    parts = ["## Strategies (mean ± std over seeds)\n", markdown_table(results["strategy_table"])]
    remark = results["remark_4_3"]
    summary = []
    for activation in ("relu", "gelu"):
        for where in ("switch", "halfway"):
            ratios = [
                r["ratio"] for r in remark if r["activation"] == activation and r["where"] == where
            ]
            if ratios:
                m, s = mean_std(ratios)
                summary.append(
                    {
                        "activation": activation,
                        "where": where,
                        "n": len(ratios),
                        "ratio mean": m,
                        "ratio std": s,
                        "fraction > 1": float(np.mean(np.asarray(ratios) > 1)),
                    }
                )
    parts += [
        "\n\n## Remark 4.3: cross-task / within-task relative bracket\n",
        markdown_table(summary),
    ]
    corr = [{k: v for k, v in c.items()} for c in results["correlations"]]
    parts += [
        "\n\n## Correlations across seeds, learning rates and strategies (one point per switch)\n",
        markdown_table(corr),
    ]
    parts += [
        "\n\n## Validity of the one-step loss-change expansion\n",
        markdown_table(results["validity"]),
    ]
    (out / "tables.md").write_text("".join(parts) + "\n")


def _write_figures(runs, results, size, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    base_lr = size["train"]["lr"]
    # per-iteration accuracy of the first task around the first switch, by strategy
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name in ("naive", "replay", "symmetric_replay", "agem", "ewc"):
        key = (0, base_lr, name, "relu")
        if key not in runs:
            continue
        curve, ends = runs[key]["curve"], runs[key]["task_ends"]
        axes[0].plot(np.arange(curve.shape[0]), curve[:, 0], linewidth=0.9, label=name)
        lo, hi = ends[0] - 10, min(ends[0] + 60, curve.shape[0] - 1)
        axes[1].plot(np.arange(lo, hi + 1), curve[lo : hi + 1, 0], linewidth=1.0, label=name)
    for ax in axes:
        for end in runs[(0, base_lr, "naive", "relu")]["task_ends"][:-1]:
            ax.axvline(end, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("accuracy on task 0")
        ax.legend(fontsize=7)
    lo0 = runs[(0, base_lr, "naive", "relu")]["task_ends"][0]
    axes[1].set_xlim(lo0 - 10, lo0 + 60)
    axes[0].set_title("task 0 accuracy after every iteration (seed 0)", fontsize=9)
    axes[1].set_title("zoom on the first switch: the stability gap", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "stability-gap.png", dpi=100)
    plt.close(fig)

    # Remark 4.3
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    remark = results["remark_4_3"]
    for activation, marker in (("relu", "o"), ("gelu", "s")):
        for where, color in (("switch", "red"), ("halfway", "blue")):
            pts = [r for r in remark if r["activation"] == activation and r["where"] == where]
            ax.plot(
                [r["within"] for r in pts],
                [r["cross"] for r in pts],
                marker,
                color=color,
                alpha=0.7,
                label=f"{activation}, {where}",
            )
    lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lim, lim, color="grey", linewidth=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("within-task relative bracket (new, new)")
    ax.set_ylabel("cross-task relative bracket (old, new)")
    ax.legend(fontsize=7)
    ax.set_title("Remark 4.3 at the same parameters", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "remark-4-3.png", dpi=100)
    plt.close(fig)

    # correlations: dip against two bracket measures
    rows = [r for r in results["switch_rows"] if r["activation"] == "relu"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    strategies = sorted({r["strategy"] for r in rows})
    for measure, ax in zip(
        ("cross_relative_bracket", "old_push", "old_loss_change"), axes, strict=True
    ):
        for name in strategies:
            pts = [r for r in rows if r["strategy"] == name]
            ax.plot(
                [r[measure] for r in pts], [r["dip"] for r in pts], "o", markersize=4, label=name
            )
        ax.set_xlabel(measure)
        ax.set_ylabel("dip of the previous task")
        if measure != "old_loss_change":
            ax.set_xscale("symlog")
    axes[0].legend(fontsize=6)
    fig.suptitle("one point per (seed, learning rate, strategy, switch), ReLU", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "correlations.png", dpi=100)
    plt.close(fig)


def export_run_figures(run_path: str | Path, out: Path) -> list[Path]:
    """Save the report's per-strategy figures of a finished run directory as PNG files."""
    from bea.experiments.continual import _phase_figure
    from bea.experiments.rundir import open_run_dir

    run_dir = open_run_dir(run_path)
    config = run_dir.read_config_dict()
    summary = run_dir.read_summary()
    records = run_dir.read_metrics()
    task_names = summary["task_names"]
    steps_per_task = int(config["train"]["steps_per_task"])
    total = steps_per_task * len(task_names)
    switches = [(k * steps_per_task, "") for k in range(1, len(task_names))]
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    paths = []
    for index, name in enumerate(config["train"]["strategies"]):
        fig, _ = _phase_figure(records, name, index * total, task_names, switches)
        path = out / f"{Path(run_path).name}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    # zoom on each switch: the previous task's accuracy, every strategy
    from bea.experiments.rundir import series

    fig, axes = plt.subplots(1, len(switches), figsize=(5.5 * len(switches), 3.4), squeeze=False)
    for ax, (at, _) in zip(axes[0], switches, strict=True):
        old = task_names[at // steps_per_task - 1]
        for index, name in enumerate(config["train"]["strategies"]):
            steps, values = series(records, f"{name}/acc/{old}")
            steps = steps - index * total
            keep = (steps >= at - 20) & (steps <= at + 100)
            ax.plot(steps[keep], values[keep], linewidth=1.0, label=name)
        ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"accuracy on {old} around the switch at iteration {at}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    path = out / f"{Path(run_path).name}-switches.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bea.experiments.continual_studies", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--strategies", nargs="*", default=STRATEGY_NAMES)
    parser.add_argument(
        "--export-run",
        metavar="RUN_DIR",
        help="only save the per-strategy figures of a finished run into --out",
    )
    args = parser.parse_args(argv)
    if args.export_run:
        for path in export_run_figures(args.export_run, Path(args.out)):
            print(path)
        return 0
    results = run_studies(args.size, Path(args.out), args.strategies)
    print(f"done in {results['seconds']:.0f}s; see {args.out}/tables.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
