"""``faithclip methods``: every registered method with its sides, defaults, paper and P1 status."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list the explanation methods")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import faithclip.methods  # noqa: F401
    from faithclip.registry import METHODS

    for spec in METHODS:
        flags = []
        if spec.modifies_model:
            flags.append("MODIFIES THE MODEL")
        if spec.modifies_input:
            flags.append("modifies the input")
        status = ", ".join(flags) or "explains the model's own forward"
        families = ", ".join(spec.family_names())
        print(f"{spec.name}  [{'+'.join(spec.sides)}]  {status}")
        print(f"    families: {families}")
        print(f"    {spec.summary}")
        print(f"    paper: {spec.paper}")
        if spec.defaults:
            print("    defaults: " + ", ".join(f"{k}={v}" for k, v in spec.defaults.items()))
    return 0
