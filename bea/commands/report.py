"""``bea report RUN_DIR``: (re)build a run's self-contained ``report.html``.

The run's kind (from its ``config.toml``) selects the experiment module whose
``build_report(run_dir)`` makes the page (see :mod:`bea.experiments.runner`). Works on
unfinished runs too, from whatever metrics and checkpoints they have.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def _main(args: argparse.Namespace) -> int:
    from bea.experiments.rundir import open_run_dir
    from bea.experiments.runner import write_report

    run_dir = open_run_dir(args.run_dir)
    path = write_report(run_dir)
    if args.out:
        shutil.copyfile(path, args.out)
        path = Path(args.out)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="build the HTML report of a run directory", description=__doc__
    )
    parser.add_argument("run_dir", help="a run directory made by `bea run`")
    parser.add_argument("--out", help="also copy the page to this file")
    parser.set_defaults(func=_main)
