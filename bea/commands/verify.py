"""``bea verify``: check the drift orders of the modified flows on real models.

Usage::

    bea verify                         # every setting (tanh MLP; gd-* also on the CNN)
    bea verify --setting continual     # only settings whose names start with this
    bea verify --model cnn --seed 1
    bea verify --h-grid 3:7            # h = 2^-3 … 2^-7 for every check
    bea verify --h-grid 0.1,0.05,0.025
    bea verify --json                  # one JSON object on stdout, nothing else
    bea verify --out plots/            # also a log-log plot of drift vs h per setting

Exit code 0 when every check passes, 1 otherwise (2 on bad options).
"""

from __future__ import annotations

import json
import math
import sys
import time

DTYPES = ("float64", "float32")
MODELS = ("mlp", "cnn", "all")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check the drift orders of the modified flows (design.md section 1)",
        description=(
            "Measure the discretization drift |flow(h) - step(h)| over h = 2^-k for one GD "
            "step, a multitask step, consecutive steps on different tasks, the order effect, "
            "random reshuffling and quadratics; fit log-log slopes and compare them with "
            "the theory."
        ),
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="PREFIX",
        help="run only checks whose name starts with PREFIX (repeatable), e.g. gd, "
        "multitask, continual, continual-bracket, order-effect, reshuffling, quadratic, gd-relu",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="run every setting on this network; default: every setting on the tanh MLP "
        "and the one-step (gd-*) settings on the small CNN",
    )
    parser.add_argument("--seed", type=int, default=0, help="data and initialization seed")
    parser.add_argument(
        "--h-grid",
        default=None,
        metavar="GRID",
        help="one grid for all checks: 'K1:K2' for h = 2^-K1 … 2^-K2, or a comma list of h",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float64")
    parser.add_argument("--tol", type=float, default=0.15, help="allowed |slope - expected|")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--out", default=None, metavar="DIR", help="write drift plots here")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    parser.set_defaults(func=run)


def parse_grid(text: str | None) -> list[float] | None:
    """``'3:7'`` -> ``[2^-3, …, 2^-7]``; ``'0.1,0.05,0.02'`` -> those values."""
    if text is None:
        return None
    text = text.strip()
    if ":" in text:
        try:
            first, last = (int(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"--h-grid: expected 'K1:K2' with integers, got {text!r}") from None
        if last < first + 2:
            raise ValueError(f"--h-grid: need K2 >= K1 + 2 (three points), got {text!r}")
        return [2.0**-k for k in range(first, last + 1)]
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--h-grid: expected numbers separated by commas, got {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"--h-grid: every h must be > 0, got {bad[0]}")
    if len(values) < 3:
        raise ValueError(f"--h-grid: need at least 3 values of h, got {len(values)}")
    return values


def _settings(args, hs):
    import torch

    from bea.experiments import verify_problems as problems

    dtype = getattr(torch, args.dtype)
    settings = []
    if args.model is None:
        settings += problems.default_suite("mlp", args.seed, hs, dtype, tol=args.tol)
        cnn = problems.default_suite("cnn", args.seed, hs, dtype, tol=args.tol)
        settings += [s for s in cnn if s.name.startswith("gd/")]
    else:
        for model in ("mlp", "cnn") if args.model == "all" else (args.model,):
            settings += problems.default_suite(model, args.seed, hs, dtype, tol=args.tol)
    settings += problems.quadratic_suite(args.seed, hs, dtype, tol=args.tol)
    settings += problems.relu_suite(args.seed, hs, dtype, tol=args.tol)
    return settings


def _selected(settings, prefixes):
    if not prefixes:
        return settings
    chosen = []
    for setting in settings:
        family = setting.name.split("/")[0]
        if any(family.startswith(p) or p.startswith(family) for p in prefixes):
            chosen.append(setting)
    if not chosen:
        names = sorted({s.name.split("/")[0] for s in settings})
        raise ValueError(f"--setting: no setting matches {prefixes}; known settings: {names}")
    return chosen


def _format_table(checks) -> str:
    rows = [("check", "flow", "expected", "fitted", "pass")]
    for check in checks:
        expected = "-" if check.expected_slope is None else f"{check.expected_slope:g}"
        fitted = "-" if math.isnan(check.fitted_slope) else f"{check.fitted_slope:.3f}"
        rows.append((check.name, check.flow, expected, fitted, "yes" if check.passed else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    import torch

    hs = parse_grid(args.h_grid)
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise ValueError(f"--tol must be > 0, got {args.tol}")
    settings = _settings(args, hs)
    if args.list:
        for setting in settings:
            print(setting.name)
        return 0
    chosen = _selected(settings, args.setting)
    # Small problems: one thread avoids oversubscription and is not slower here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        checks = []
        for setting in chosen:
            for check in setting.run():
                if args.setting and not _matches(check.name, args.setting, setting.name):
                    continue
                checks.append(check)
    finally:
        torch.set_num_threads(threads)
    if not checks:
        raise ValueError(f"--setting: no check name starts with {args.setting}")
    elapsed = time.perf_counter() - start
    plots = []
    if args.out is not None:
        from bea.report.verify_plots import plot_drift

        plots = [str(p) for p in plot_drift(checks, args.out)]
    failed = [c for c in checks if not c.passed]
    if args.json:
        payload = {
            "checks": [c.as_record() for c in checks],
            "passed": not failed,
            "seconds": round(elapsed, 2),
            "plots": plots,
        }
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        print(_format_table(checks))
        for check in checks:
            for note in check.notes:
                if "rounding only" not in note:
                    print(f"  {check.name}: {note}")
        print(
            f"\n{len(checks) - len(failed)}/{len(checks)} checks passed in {elapsed:.1f} s"
            + (f"; plots in {args.out}" if plots else "")
        )
    return 1 if failed else 0


def _matches(name: str, prefixes, setting_name: str) -> bool:
    family = setting_name.split("/")[0]
    return any(name.startswith(p) or (family.startswith(p)) for p in prefixes)
