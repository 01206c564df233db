"""The ``faithclip`` command: one subcommand per module in this package.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
callable ``(args) -> int``. This file assembles them and owns the command line's contract with the user:

    exit 0    the command did what was asked
    exit 1    a check the command runs failed (e.g. ``verify`` found an undeclared P1 departure)
    exit 2    bad usage or input: ONE line on stderr that says what to do, never a traceback
    exit 130  interrupted (Ctrl-C): one line, no traceback

Warnings are printed as one line each (``faithclip COMMAND: warning: ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
import warnings
from typing import NoReturn

from faithclip._version import __version__
from faithclip.errors import FaithclipError

# Subcommand modules, in the order `faithclip --help` lists them.
SUBCOMMANDS = (
    "explain",
    "verify",
    "methods",
    "demo",
    "train_shapes",
    "audit",
    "check",
    "evaluate",
    "bench",
)

# Commands that keep finished work and pick up where they stopped when run again.
RESUMABLE = frozenset({"evaluate"})

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Errors of writing (disk full, quota, I/O error, file too large, read-only file system)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS})


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (unless its text already says it), descriptions as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        from faithclip.cli.common import CommaList

        if isinstance(action, CommaList) and action.metavar:  # one comma list, whatever old spelling also parses
            return action.metavar
        return super()._format_args(action, default_metavar)


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` that reports a usage error in one line (the usage text is one ``--help`` away), and
    shows the defaults in every ``--help`` (subcommand parsers are of this class too)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["formatter_class"] = DefaultsFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="faithclip",
        description="Faithful explanations of CLIP models, and the Grad-ECLIP audit.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 bad usage or input, 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"faithclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")  # subparsers inherit OneLineParser
    for name in SUBCOMMANDS:  # every one ships: a module that fails to import is a bug, raised, never skipped
        importlib.import_module(f"faithclip.cli.{name}").register(subparsers)
    return parser


class _NotTheUsersConcern(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its PIL backend because torchvision
    is absent: faithclip never uses transformers' image processors for its results (its own preprocessing
    is ``faithclip.models.preprocess``), and the README says never to install torchvision. Also drops the
    complaint transformers 5.24 makes about its OWN default ``SiglipTextConfig()`` (CLIP's end ids 49406 /
    49407 in SigLIP's 32,000-token vocabulary), which it builds while loading any SigLIP, whatever the
    checkpoint's ids are. Every other message of that logger (real warnings) passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "requires torchvision" in message and "falling back to" in message:
            return False
        default_siglip = "between 0 and 31999), got 4940" in message and "token_id must be `None`" in message
        # faithclip truncates a text longer than the context itself and says so in one warning line
        too_long = message.startswith("Token indices sequence length is longer than")
        return not (default_siglip or too_long)


def quiet_transformers() -> None:
    """Silence what is not the user's concern, without hiding real warnings: the torchvision fallback
    notice (above) and the weight-loading progress bar (a CLIP loads in seconds)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    for name in (
        "transformers.utils.import_utils",
        "transformers.configuration_utils",
        "transformers",
        "transformers.tokenization_utils_base",
    ):
        logging.getLogger(name).addFilter(_NotTheUsersConcern())


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed in one line
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("faithclip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_transformers()
    if getattr(args, "max_pixels", None) is not None:  # --max-pixels: Pillow's own limit, for this process
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_pixels or None
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    prefix = f"faithclip {args.command}"
    for notice in getattr(args, "deprecations", None) or []:  # an old spelling: it works, and says what replaces it
        print(f"{prefix}: warning: {notice}", file=sys.stderr)
    from faithclip.cli.common import torch_threads
    from faithclip.files import all_or_nothing

    # A command that fails puts back every output file it had already replaced (a resumable command
    # keeps what it wrote: its records are the work to resume from).
    outputs = contextlib.nullcontext() if args.command in RESUMABLE else all_or_nothing()
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(prefix)
        try:
            with outputs, torch_threads(getattr(args, "threads", None)):  # --threads, restored after
                return int(args.func(args) or EXIT_OK)
        except FaithclipError as error:
            # Bad input: a one-line message that says what to do, no traceback (a message quoting a
            # library's several lines is joined into one).
            print(f"{prefix}: error: {' '.join(str(error).split())}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            again = "; run the same command again to resume" if args.command in RESUMABLE else ""
            print(f"{prefix}: interrupted{again}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (``faithclip methods | head``): stop quietly, as Unix tools do. Point
            # stdout at devnull so the interpreter's final flush does not raise a second time.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except OSError as error:
            if error.errno not in WRITE_ERRNOS:
                raise
            # A write no output routine caught (they raise OutputError): still one line, naming the file.
            from faithclip.files import write_failure

            again = "; once space is freed, run the same command again to resume" if args.command in RESUMABLE else ""
            print(
                f"{prefix}: error: {write_failure(error.filename or 'an output file', error)}{again}", file=sys.stderr
            )
            return EXIT_USAGE


def _one_line_warnings(prefix: str):
    """A ``warnings.showwarning`` that prints the message alone on one line (no file, line or source)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"{prefix}: warning: {text}", file=sys.stderr if file is None else file)

    return show


if __name__ == "__main__":
    sys.exit(main())
