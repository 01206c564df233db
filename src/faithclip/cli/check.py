"""``faithclip check METHOD...``: P1 detected and P2 measured on any explanation method; a verdict card each."""

from __future__ import annotations

import argparse

from faithclip.cli.common import (
    CommaList,
    DeprecatedPositional,
    add_method_options_argument,
    add_model_argument,
    add_out_argument,
    add_run_arguments,
    check_writable,
    load_model,
    method_options,
    progress_printer,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from faithclip.audit.check import CHECKS

    parser = subparsers.add_parser(
        "check",
        help="check any explanation method against the two principles (P1 detected, P2 measured)",
        description="--methods names registered or plugin methods (`faithclip methods`), `all`, or callables "
        "module:function taking (model, pixels, texts) and returning maps (docs/plugins.md). "
        "Exit 1 when a check fails.",
    )
    parser.add_argument(
        "--methods",
        action=CommaList,
        default=None,
        metavar="M[,M...]",
        help="comma-separated methods to check (required)",
    )
    parser.add_argument(
        "positional_methods",
        nargs="*",
        metavar="METHOD",
        action=DeprecatedPositional,
        use="--methods M[,M...]",
        help="deprecated: the methods as positional arguments (use --methods; this spelling goes in the next release)",
    )
    add_method_options_argument(parser)
    add_model_argument(parser)
    add_run_arguments(parser)
    add_out_argument(parser, "check", optional=True)
    parser.add_argument(
        "--checks",
        default=list(CHECKS),
        action=CommaList,
        metavar="C[,C...]",
        help=f"comma-separated subset of the checks (default: {','.join(CHECKS)})",
    )
    parser.add_argument(
        "--audit-sizes",
        action="store_true",
        help="the audit's documented P2 sizes and each method's own defaults (slow), instead of the "
        "check's small sizes",
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import faithclip.methods  # noqa: F401
    from faithclip._version import __version__
    from faithclip.audit.check import (
        CHECKS,
        CheckSettings,
        holm_across_cards,
        resolve_method,
        run_check,
    )
    from faithclip.errors import FaithclipError
    from faithclip.registry import METHODS
    from faithclip.report.check_report import check_page, format_cards
    from faithclip.report.page import write_report

    if args.out is not None:
        check_writable(args.out)
    checks = tuple(args.checks)
    settings = (
        CheckSettings.audit_sizes(checks=checks, seed=args.seed)
        if args.audit_sizes
        else CheckSettings(checks=checks, seed=args.seed)
    )
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown or not checks:
        raise FaithclipError(f"--checks: unknown {unknown or 'empty'}; choose from {', '.join(CHECKS)}.")
    if args.methods is not None and args.positional_methods:
        raise FaithclipError(
            "methods given both with --methods and as positional arguments; give them once, as --methods M[,M...]."
        )
    given = args.methods if args.methods is not None else args.positional_methods
    if not given:
        raise FaithclipError(
            "no method to check: give --methods M[,M...] (a registered name, `all`, or module:function)."
        )
    for name in given:
        if ":" in name:
            check_callable(name)
    handle = load_model(args.model, args)
    family = handle.family.name
    names = [
        n for name in given for n in ([s.name for s in METHODS if s.supports(family)] if name == "all" else [name])
    ]
    resolved = [resolve_method(name) for name in names]  # every name checked before any work
    for spec, origin in resolved:
        if origin != "callable":
            spec.check_family(family)
    registered = [spec.name for spec, origin in resolved if origin != "callable"]
    chosen = method_options(args, registered, handle)  # --method-option over the check's own small sizes
    if chosen:
        merged = {
            name: {**settings.options(name), **chosen.get(name, {})}
            for name in dict.fromkeys([*dict(settings.method_options), *chosen])
        }
        settings = replace(
            settings, method_options=tuple((name, tuple(options.items())) for name, options in merged.items())
        )
    cards = []
    progress = progress_printer(args, "stderr")
    for spec, origin in resolved:
        card = run_check(handle, spec, settings, origin, progress=progress)
        print(format_cards([card]), flush=True)
        cards.append(card)
    changed = holm_across_cards(cards)  # P2's multiplicity control runs over the methods of this run
    if changed:
        print(
            f"P2 ladder after Holm over the {len(cards)} methods of this run: "
            + ", ".join(
                f"{card['method']} {check['verdict']}"
                for card in cards
                for check in card["checks"]
                if check["check"] == "P2 ladder" and card["method"] in changed
            )
        )
    if args.out is not None:
        record = {"faithclip": __version__, "model": handle.name, "settings": settings.in_use(), "cards": cards}
        json_path, html_path = write_report(args.out, "check", record, check_page(record))
        print(f"wrote {json_path} and {html_path}")
    return 1 if any(card["failed"] for card in cards) else 0


def check_callable(reference: str) -> None:
    """A ``module:function`` METHOD must take ``(model, pixels, texts)``, as the check calls it: refused in
    one line before any work when its signature says otherwise (``os:getcwd`` takes nothing)."""
    import inspect

    from faithclip.errors import MethodError
    from faithclip.methods.external import import_callable

    function = import_callable(reference)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): the call itself will tell
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise MethodError(
            f"{reference} takes {signature}, but faithclip calls a METHOD given as module:function "
            "as function(model, pixels, texts) -> maps (docs/plugins.md)."
        ) from None
