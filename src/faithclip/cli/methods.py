"""``faithclip methods``: every registered method with its sides, families, defaults, paper and P1 status;
``--table``: the families x methods table (Markdown) that the README shows."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list the explanation methods and the model families they support")
    parser.add_argument(
        "--table", action="store_true", help="print a Markdown table of model families x methods (sides each supports)"
    )
    parser.set_defaults(func=run)


def family_table() -> str:
    """Rows: methods; columns: families; a cell names the sides the method explains on that family's models."""
    import faithclip.methods  # noqa: F401
    from faithclip.models.families import FAMILIES, _load_families
    from faithclip.registry import METHODS

    _load_families()
    families = sorted(FAMILIES.values(), key=lambda f: f.name != "clip")  # CLIP first, then as registered
    lines = ["| method | " + " | ".join(f.name for f in families) + " |", "|---|" + "---|" * len(families)]
    for spec in METHODS:
        cells = []
        for family in families:
            sides = spec.sides_on(family)
            cells.append(" + ".join(sides) if sides else "-")
        lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import faithclip.methods  # noqa: F401
    from faithclip.registry import METHODS

    if args.table:
        print(family_table())
        return 0
    for spec in METHODS:
        flags = []
        if spec.modifies_model:
            flags.append("MODIFIES THE MODEL")
        if spec.modifies_input:
            flags.append("modifies the input")
        status = ", ".join(flags) or "explains the model's own forward"
        print(f"{spec.name}  [{'+'.join(spec.sides)}]  {status}")
        print(f"    families: {', '.join(spec.family_names())}")
        print(f"    {spec.summary}")
        print(f"    paper: {spec.paper}")
        if spec.defaults:
            print("    defaults: " + ", ".join(f"{k}={v}" for k, v in spec.defaults.items()))
    return 0
