"""``faithclip audit``: how far the official Grad-ECLIP pipeline departs from the model, and P2.

    faithclip audit                                        # the shipped shapes model, scenes rendered at 2x
    faithclip audit --ladder --correctness --out audit-run          # audit.json + report.html
    faithclip audit --model ../shared/reference/openai-clip-vit-base-patch32 --random-weights \\
        --images ../shared/reference/voc2011-samples/JPEGImages/*.jpg \\
        --class-names ../shared/reference/voc2011-samples/class_names.txt

Every default is ``faithclip.audit.run.AuditSettings()``'s: docs/audit.md names the command behind each
of its tables, and ``python tools/audit_docs.py --check`` reruns them.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import shlex
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from faithclip.audit.run import AuditSettings
from faithclip.cli.common import (
    CommaList,
    DeprecatedAlias,
    add_image_arguments,
    add_method_options_argument,
    add_model_argument,
    add_out_argument,
    add_random_weights_argument,
    add_run_arguments,
    check_writable,
    deprecated_group,
    load_model,
    parse_dotted,
    place_model,
)
from faithclip.errors import FaithclipError, MethodError, ModelError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit's arguments: its inputs, then one option per ``AuditSettings`` field (``add_settings_arguments``)."""
    add_model_argument(parser)
    add_random_weights_argument(parser, "the shipped ViT-B/32 config")
    parser.add_argument("--images", nargs="+", default=None, help="image files (default: shapes scenes)")
    parser.add_argument(
        "--class-names", default=None, help="file of class names, one a line (names starting '_' skipped)"
    )
    parser.add_argument(
        "--template",
        default="a photo of a {}.",
        help="prompt template for --class-names: {} is replaced by each class name (default: "
        "'a photo of a {}.', CLIP's own)",
    )
    add_settings_arguments(parser)
    add_run_arguments(
        parser,
        threads=1,
        threads_default="1: docs/audit.md's figures were computed on one thread "
        "(float32 sums in one order), and its check reruns them so",
    )
    add_image_arguments(parser)
    add_out_argument(parser, "audit", optional=True)
    old = deprecated_group(parser)
    old.add_argument(
        "--random-init", action=DeprecatedAlias, dest="random_weights", nargs=0, const=True, use="--random-weights"
    )
    old.add_argument(
        "--json",
        dest="json_path",
        action=DeprecatedAlias,
        default=None,
        metavar="FILE",
        use="--out DIR (it writes audit.json there)",
    )
    old.add_argument(
        "--html",
        dest="html_path",
        action=DeprecatedAlias,
        default=None,
        metavar="FILE",
        use="--out DIR (it writes report.html there)",
    )


def _setting_kind(name: str) -> tuple[type, bool]:
    """``(element type, is a list)`` of an ``AuditSettings`` field, read from its annotation."""
    hint = get_type_hints(AuditSettings)[name]
    parts = [arg for arg in get_args(hint) if arg is not type(None)] if get_origin(hint) is not tuple else [hint]
    kind = parts[0] if parts else hint
    if get_origin(kind) is tuple:
        return get_args(kind)[0], True
    return kind, False


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``AuditSettings`` field, its help the field's metadata and its default the field's:
    a flag for a bool, a comma list for a tuple, a number otherwise."""
    for setting in fields(AuditSettings):
        flag, kind_help = "--" + setting.name.replace("_", "-"), setting.metadata["help"]
        kind, listed = _setting_kind(setting.name)
        if setting.name == "method_options":
            add_method_options_argument(parser, kind_help)
        elif kind is bool:
            parser.add_argument(flag, action="store_true", help=kind_help)
        elif listed:  # the old space-separated spelling parses too, with a notice
            default = None if setting.default is None else list(setting.default)
            parser.add_argument(
                flag,
                action=CommaList,
                item=kind,
                nargs="+",
                default=default,
                metavar=f"{'M' if kind is str else 'X'}[,...]",
                help=kind_help,
            )
        else:
            parser.add_argument(flag, type=kind, default=setting.default, help=kind_help)


def settings_from_args(args: argparse.Namespace) -> AuditSettings:
    """The ``AuditSettings`` a parsed command line asks for (lists become tuples)."""
    values = {}
    for setting in fields(AuditSettings):
        if setting.name == "method_options":
            given = parse_dotted(args.method_option, "--method-option", MethodError)
            values[setting.name] = tuple((name, tuple(options.items())) for name, options in given.items())
            continue
        value = getattr(args, setting.name)
        values[setting.name] = tuple(value) if isinstance(value, list) else value
    if values["methods"] == ():
        values["methods"] = None
    return AuditSettings(**values)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="measure how far the official Grad-ECLIP pipeline departs from the model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def load_inputs(args: argparse.Namespace):
    """The model handle and, with ``--images``, the image files as audit data."""
    from faithclip.audit.data import folder_data, read_class_names
    from faithclip.models.random_init import random_weights_clip

    if args.random_weights and args.model is not None and not (Path(args.model) / "config.json").is_file():
        raise ModelError(
            f"--random-weights builds --model's architecture from its config.json; {args.model} has "
            "none (give a directory with config.json, or leave --model out for the shipped ViT-B/32)."
        )
    handle = (
        place_model(random_weights_clip(args.model, args.seed), args)
        if args.random_weights
        else load_model(args.model, args)
    )
    data = None
    if args.images:
        if not args.class_names:
            raise FaithclipError("--images needs --class-names (the prompt set the images are classified against).")
        try:
            names = read_class_names(args.class_names)
        except OSError as error:
            raise FaithclipError(f"--class-names {args.class_names}: {error.strerror}.") from error
        data = folder_data(args.images, [args.template.format(n) for n in names])
    return handle, data


def parse_command(command: str) -> argparse.Namespace:
    """This command's parser applied to a ``faithclip audit ...`` line, as docs/audit.md and the docs checks
    write it (globs expanded)."""
    words = shlex.split(command)
    if words[:2] != ["faithclip", "audit"]:
        raise ValueError(f"not a faithclip audit command: {command}")
    expanded = []
    for word in words[2:]:
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        expanded += matches or [word]  # as a shell does: a pattern matching nothing stays literal
    parser = argparse.ArgumentParser(prog="faithclip audit")
    add_arguments(parser)
    return parser.parse_args(expanded)


def run_command(command: str) -> dict:
    """Run one documented ``faithclip audit ...`` line in this process exactly as the command would, and return
    its results (the checks of docs/audit.md: ``python -m faithclip.cli.docs``, ``tools/audit_docs.py``)."""
    from faithclip.audit.run import run_audit

    args = parse_command(command)
    handle, data = load_inputs(args)
    return run_audit(handle, settings_from_args(args), data)


@contextlib.contextmanager
def quiet_progress(quiet: bool) -> Iterator[None]:
    """``--no-progress``: the audit's progress lines (INFO logs of ``faithclip.audit``) hidden for the block."""
    audit_logger = logging.getLogger("faithclip.audit")
    before = audit_logger.level
    if quiet:
        audit_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        audit_logger.setLevel(before)


def run(args: argparse.Namespace) -> int:
    from faithclip.audit.run import run_audit
    from faithclip.explanation import json_bytes, write_atomic
    from faithclip.report.audit_report import audit_page, format_audit
    from faithclip.report.page import write_report

    settings = settings_from_args(args)
    settings.validate()
    json_path = check_writable(args.json_path, "file", "--json") if args.json_path else None
    html_path = check_writable(args.html_path, "file", "--html") if args.html_path else None
    out = check_writable(args.out, "dir", "--out") if args.out else None
    handle, data = load_inputs(args)
    with quiet_progress(args.no_progress):
        results = run_audit(handle, settings, data)
    print(format_audit(results))
    record = json.loads(json.dumps(results, default=str))
    if json_path:
        write_atomic(json_path, json_bytes(record))
        logger.info("wrote %s", json_path)
    if html_path:
        write_atomic(html_path, audit_page(record).encode())
        logger.info("wrote %s", html_path)
    if out:
        paths = write_report(out, "audit", record, audit_page(record))
        logger.info("wrote %s and %s", *paths)
    return 0
