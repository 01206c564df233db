"""The ``faithclip`` command: one subcommand per module in this package.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
callable ``(args) -> int``. This file only assembles them; it holds no logic of its own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from faithclip.errors import FaithclipError

# Subcommand modules, in the order `faithclip --help` lists them.
SUBCOMMANDS = (
    "explain",
    "verify",
    "methods",
    "demo",
    "train_shapes",
    "audit",
    "evaluate",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faithclip",
        description="Faithful explanations of CLIP models, and the Grad-ECLIP audit.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"faithclip.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"faithclip.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FaithclipError as error:
        # Bad input: a one-line message that says what to do, no traceback.
        print(f"faithclip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
