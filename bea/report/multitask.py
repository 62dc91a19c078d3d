"""The HTML report of a multitask run directory (used by ``bea report`` and ``bea run``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bea.experiments.rundir import series
from bea.report.html import Page, heatmap, line_plot, new_figure


def _keys(records: list[dict[str, Any]], prefix: str) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            if key.startswith(prefix):
                seen[key] = None
    return list(seen)


def _curves(records, keys, strip: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for key in keys:
        steps, values = series(records, key)
        if len(steps):
            out[key[len(strip) :] if strip and key.startswith(strip) else key] = (steps, values)
    return out


def multitask_report(run_dir: Any) -> str:
    """Build the page from ``config.toml``, ``status.json``, ``metrics.jsonl``, ``summary.json``."""
    from bea.report.html import flatten

    config = run_dir.read_config_dict()
    status = run_dir.read_status()
    summary = run_dir.read_summary()
    records = run_dir.read_metrics()
    lr = config.get("train", {}).get("lr")
    method = config.get("method", {}).get("name", "?")
    page = Page(f"multitask run: {config.get('name', '')} ({method}, h = {lr})")
    if config.get("description"):
        page.paragraph(config["description"])
    page.paragraph(
        f"state: {status.get('state')}, step {status.get('step')} of "
        f"{status.get('total_steps', config.get('train', {}).get('steps'))}"
        + (f" — {status['message']}" if status.get("message") else ""),
        note=True,
    )

    metrics = summary.get("metrics", {})
    if metrics:
        page.heading("Final metrics")
        page.table([{"metric": k, "value": v} for k, v in sorted(metrics.items())])
        timing = summary.get("timing", {})
        if timing:
            page.table([{"timing": k, "value": v} for k, v in timing.items()])

    page.heading("Losses and metrics")
    train = _curves(records, _keys(records, "train/loss/") + ["train/weighted_loss"], "train/")
    if train:
        page.figure(
            line_plot(train, title="training loss (batch)", ylabel="loss", logy=True),
            "training losses on the mini-batches",
        )
    test_loss = _curves(records, _keys(records, "test/loss/"), "test/loss/")
    if test_loss:
        page.figure(
            line_plot(test_loss, title="test loss", ylabel="loss", logy=True), "test loss per task"
        )
    test_metric = _curves(
        records, _keys(records, "test/acc/") + _keys(records, "test/mse/"), "test/"
    )
    if test_metric:
        page.figure(
            line_plot(test_metric, title="test metric", ylabel="accuracy / MSE"),
            "test metric per task",
        )

    page.heading("Conflict term and cosine")
    mark = f" (h = {lr})"
    conflict = _curves(records, _keys(records, "mt/conflict/") + ["mt/conflict_total"], "mt/")
    if conflict:
        page.figure(
            line_plot(
                conflict,
                title="conflict term (h/2) α_i α_j <∇θL_i, ∇θL_j>" + mark,
                ylabel="conflict",
                hline=0.0,
            ),
            "conflict term on the shared parameters, on the probe batch; SGD implicitly "
            "minimizes it (pushes it negative)",
        )
    cosine = _curves(records, _keys(records, "mt/cosine/"), "mt/cosine/")
    if cosine:
        page.figure(
            line_plot(
                cosine, title="cosine of shared task gradients" + mark, ylabel="cosine", hline=0.0
            ),
            "cosine between the tasks' gradients on the shared parameters",
        )
    igr = _curves(records, _keys(records, "mt/igr/") + ["mt/igr_total"], "mt/")
    if igr:
        page.figure(
            line_plot(igr, title="IGR (h α_k²/4)‖∇L_k‖²" + mark, ylabel="IGR", logy=True),
            "implicit gradient regularization per task",
        )
    ratio = _curves(records, ["mt/grad_norm_ratio"], "mt/")
    norms = _curves(records, _keys(records, "mt/grad_norm/"), "mt/grad_norm/")
    if norms:
        page.figure(
            line_plot(norms, title="shared gradient norm per task", ylabel="norm", logy=True),
            "‖∇θ L_k‖ on the shared parameters",
        )
    if ratio:
        page.figure(
            line_plot(ratio, title="gradient-norm ratio max/min", ylabel="ratio"),
            "ratio of the largest to the smallest shared gradient norm",
        )

    layer_keys = _keys(records, "mt/layer_conflict/")
    if layer_keys:
        page.heading("Per-layer conflict")
        rows = [r for r in records if layer_keys[0] in r]
        matrix = [[r.get(k, np.nan) for r in rows] for k in layer_keys]
        page.figure(
            heatmap(
                matrix,
                row_labels=[k.split("/", 2)[2] for k in layer_keys],
                col_labels=[str(r["step"]) for r in rows],
                title="conflict term by layer",
                xlabel="step",
                ylabel="shared layer",
            ),
            "conflict term restricted to each shared layer's parameters (rows sum to the total)",
        )
        cos_layers = _curves(records, _keys(records, "mt/layer_cosine/"), "mt/layer_cosine/")
        page.figure(
            line_plot(cos_layers, title="cosine by layer", ylabel="cosine", hline=0.0),
            "mean pairwise cosine per shared layer",
        )

    hist_keys = _keys(records, "mt/cosine_hist/")
    if hist_keys:
        page.heading("Running statistics")
        last = [r for r in records if hist_keys[0] in r][-1]
        fig, ax = new_figure()
        for key in hist_keys:
            counts = np.asarray(last[key], dtype=float)
            edges = np.linspace(-1, 1, len(counts) + 1)
            ax.stairs(counts, edges, label=key.split("/", 2)[2])
        ax.set_xlabel("cosine")
        ax.set_ylabel("observations")
        ax.set_title("histogram of observed cosines")
        ax.legend(fontsize=7)
        page.figure(fig, "all monitor observations of the run")
        frac = _curves(
            records, _keys(records, "mt/frac_negative_cosine/"), "mt/frac_negative_cosine/"
        )
        page.figure(
            line_plot(frac, title="fraction of observations with cosine < 0", ylabel="fraction"),
            "running fraction of negative cosines",
        )
        grams = [r for r in records if "mt/gram" in r]
        if grams:
            gram = grams[-1]["mt/gram"]
            tasks = summary.get("tasks") or [f"task{k}" for k in range(len(gram))]
            page.table(
                [
                    {"task": tasks[i], **{tasks[j]: gram[i][j] for j in range(len(gram))}}
                    for i in range(len(gram))
                ],
                caption=f"shared Gram matrix at step {grams[-1]['step']}",
            )

    page.heading("Configuration")
    page.table([{"field": k, "value": v} for k, v in flatten(config).items()])
    return page.render()
