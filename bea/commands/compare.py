"""``bea compare RUN_DIR...``: several runs side by side.

Prints a Markdown table (one row per run: the config fields that differ between the
runs, then the final ``metrics`` and ``timing`` of ``summary.json``) and writes a
self-contained HTML page with the same table and, for every metric key listed in the
kinds' ``COMPARE_KEYS`` that the runs logged, one plot overlaying the runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bea.report.html import flatten


def compare_rows(run_dirs: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for the runs and the names of the config fields that differ between them."""
    configs = [flatten(r.read_config_dict()) for r in run_dirs]
    keys = sorted({k for c in configs for k in c})
    differing = [
        k
        for k in keys
        if k not in ("description",) and len({json.dumps(c.get(k)) for c in configs}) > 1
    ]
    rows = []
    for run_dir, config in zip(run_dirs, configs, strict=True):
        summary = run_dir.read_summary()
        row: dict[str, Any] = {
            "run": run_dir.path.name,
            "state": run_dir.read_status().get("state"),
        }
        row.update({k: config.get(k, "") for k in differing})
        row.update(summary.get("metrics", {}))
        row.update({f"time.{k}": v for k, v in summary.get("timing", {}).items()})
        rows.append(row)
    return rows, differing


def build_compare_page(run_dirs: list[Any]) -> str:
    from bea.experiments.rundir import series
    from bea.experiments.runner import EXPERIMENTS, load_experiment
    from bea.report.html import Page, line_plot

    rows, differing = compare_rows(run_dirs)
    page = Page("bea compare: " + ", ".join(r.path.name for r in run_dirs))
    page.paragraph("Config fields that differ: " + (", ".join(differing) or "none"), note=True)
    page.table(rows, caption="final metrics (summary.json)")
    keys: list[str] = []
    for kind in dict.fromkeys(r.kind() for r in run_dirs):
        if kind in EXPERIMENTS:
            for key in getattr(load_experiment(kind), "COMPARE_KEYS", []):
                if key not in keys:
                    keys.append(key)
    records = {r.path.name: r.read_metrics() for r in run_dirs}
    for key in keys:
        curves = {}
        for name, recs in records.items():
            steps, values = series(recs, key)
            if len(steps):
                curves[name] = (steps, values)
        if curves:
            page.figure(line_plot(curves, title=key, ylabel=key), caption=key)
    return page.render()


def _main(args: argparse.Namespace) -> int:
    from bea.experiments.rundir import atomic_write_text, open_run_dir
    from bea.report.html import markdown_table

    run_dirs = [open_run_dir(path) for path in args.run_dirs]
    rows, _ = compare_rows(run_dirs)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(markdown_table(rows))
    if args.out != "-":
        atomic_write_text(Path(args.out), build_compare_page(run_dirs))
        print(f"page: {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="put several runs side by side", description=__doc__
    )
    parser.add_argument("run_dirs", nargs="+", help="run directories made by `bea run`")
    parser.add_argument(
        "--out",
        default="compare.html",
        help="HTML page to write ('-' for none; default compare.html)",
    )
    parser.add_argument("--json", action="store_true", help="print rows as JSON, not Markdown")
    parser.set_defaults(func=_main)
