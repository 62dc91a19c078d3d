"""The ``bea`` command: one sub-command per module in :mod:`bea.commands`.

Each module in ``bea/commands/`` exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable ``(args) -> int``. Modules are imported only
when the command line is parsed, so ``import bea`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "verify", "run", "report", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bea",
        description="Backward error analysis of SGD: modified losses, conflict terms, Lie brackets.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bea.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"bea.commands.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"bea {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
