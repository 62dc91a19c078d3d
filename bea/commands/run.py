"""``bea run``: run an experiment into a run directory, or resume one.

Usage::

    bea run multitask --preset quick [--out DIR] [--seed N] [--set KEY=VALUE ...] [--force]
    bea run continual --config my.toml
    bea run --resume DIR
    bea run multitask --list-presets

The default run directory is ``runs/<kind>-<name>-s<seed>``. An existing directory is
never overwritten unless ``--force`` (alias ``--overwrite``) is given; an unfinished one
is continued with ``--resume``. ``--set train.lr=0.05`` overrides one config field
(the value is read as TOML, falling back to a string).

The experiment protocol is in :mod:`bea.experiments.runner`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bea.experiments.runner import EXPERIMENTS, load_config, load_experiment, resume_run, start_run


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bea.experiments.config import parse_override

    overrides = dict(parse_override(text) for text in args.set or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def _main(args: argparse.Namespace) -> int:
    progress = False if args.quiet else None
    if args.resume is not None:
        if args.kind or args.preset or args.config:
            raise ValueError("run: --resume DIR takes no kind, --preset or --config")
        run_dir = resume_run(args.resume, stop_after=args.stop_after, progress=progress)
        _print_outcome(run_dir)
        return 0
    if args.kind is None:
        raise ValueError(
            "run: give an experiment kind (" + ", ".join(EXPERIMENTS) + ") or --resume DIR"
        )
    if args.list_presets:
        from bea.experiments.config import list_presets

        load_experiment(args.kind)
        print("\n".join(list_presets(args.kind)))
        return 0
    config = load_config(
        args.kind, preset=args.preset, config_file=args.config, overrides=_overrides(args)
    )
    run_dir = start_run(
        config, args.out, overwrite=args.force, stop_after=args.stop_after, progress=progress
    )
    _print_outcome(run_dir)
    return 0


def _print_outcome(run_dir: Any) -> None:
    status = run_dir.read_status()
    line = {"run_dir": str(run_dir.path), "state": status.get("state"), "step": status.get("step")}
    if status.get("state") == "finished":
        line["metrics"] = run_dir.read_summary().get("metrics", {})
    print(json.dumps(line))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run an experiment into a run directory, or resume one",
        description=__doc__.split("Experiment protocol")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", nargs="?", choices=sorted(EXPERIMENTS), help="experiment kind")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a shipped preset name (see --list-presets)")
    source.add_argument("--config", help="a TOML config file")
    parser.add_argument("--out", help="run directory (default runs/<kind>-<name>-s<seed>)")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set train.lr=0.05",
    )
    parser.add_argument(
        "--force", "--overwrite", action="store_true", help="overwrite an existing run directory"
    )
    parser.add_argument("--resume", metavar="DIR", help="continue an unfinished run")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--list-presets", action="store_true", help="list presets of KIND")
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=_main)
