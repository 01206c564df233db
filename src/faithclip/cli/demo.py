"""``faithclip demo [--out DIR]``: the whole of faithclip on the shipped model, offline (see faithclip.demo)."""

from __future__ import annotations

import argparse

from faithclip.cli.common import (
    add_model_argument,
    add_run_arguments,
    check_writable,
    load_model,
    positive_int,
    progress_printer,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="explain shapes scenes with every method and write report.html")
    parser.add_argument("--out", default="faithclip-demo", help="output directory (default: ./faithclip-demo)")
    parser.add_argument("--scenes", type=positive_int, default=8, help="number of scenes (default 8)")
    parser.add_argument("--no-audit", action="store_true", help="skip the P1/P2 checks and the Grad-ECLIP audit")
    add_model_argument(parser)
    add_run_arguments(
        parser,
        threads_default="1 for a model under 20 M parameters, which runs several times "
        "faster on one thread than on two contended ones; else torch's choice",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faithclip.demo import run_demo

    out = check_writable(args.out, "dir")  # before any work; created when the report is written
    model = load_model(args.model, args)
    results = run_demo(
        out, model, scenes=args.scenes, audit=not args.no_audit, progress=progress_printer(args), threads=args.threads
    )
    print(
        f"\nLocalisation (pointing game within {results['tolerance_px']} px of the named object, {args.scenes} scenes):"
    )
    for name, entry in sorted(results["methods"].items(), key=lambda kv: -kv[1]["pointing"]):
        print(f"  {name:<22} {entry['pointing']:.2f}   energy {entry['energy_share']:.2f}")
    worst = max(r["max_rel_diff"] for r in results["equivalence"] if r["dtype"] == "float32")
    print(f"Grad-ECLIP vs Attention-ECLIP: max relative difference {worst:.1e} (float32)")
    print(f"\nReport: {(out / 'report.html').resolve()}  ({results['seconds']:.0f} s)")
    return 0
