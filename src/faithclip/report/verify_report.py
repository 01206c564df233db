"""HTML views of the equivalence and P1 records (``faithclip verify``'s JSON; the demo's tables)."""

from __future__ import annotations

from typing import Any

from faithclip.mapmath import EQUIVALENCE_TOLERANCE as TOLERANCE
from faithclip.report.page import esc, html_page, table
from faithclip.verdicts import p1_verdict


def equivalence_table(rows: list[dict[str, Any]]) -> str:
    bad = [i for i, r in enumerate(rows) if r["max_rel_diff"] > TOLERANCE.get(r["dtype"], 1e-5)]
    return table(
        ["side", "layers", "dtype", "pairs", "max |diff|", "max rel diff", "max |map|"],
        [
            [
                r["side"],
                r["layers"],
                r["dtype"],
                r["pairs"],
                f"{r['max_abs_diff']:.2e}",
                f"{r['max_rel_diff']:.2e}",
                f"{r['max_map_value']:.2e}",
            ]
            for r in rows
        ],
        bad_rows=bad,
    )


def declaration(row: dict[str, Any]) -> str:
    """What a method says it changes (both flags when both hold)."""
    flags = [
        text
        for key, text in (("modifies_model", "modifies the model"), ("modifies_input", "modifies the input"))
        if row.get(key)
    ]
    return " and ".join(flags) if flags else "explains the model's own forward"


def p1_table(rows: list[dict[str, Any]]) -> str:
    """P1 rows; a failure that the method does not declare is highlighted, a declared one marked."""
    body, bad = [], []
    for index, r in enumerate(rows):
        declared = r.get("modifies_model") or r.get("modifies_input")
        verdict = p1_verdict(r["passed"], declared)  # one wording with verify's table and check
        if not r["passed"] and not declared:
            bad.append(index)
        body.append(
            [
                r["method"],
                r["side"],
                "n/a" if r["max_gap"] is None else f"{r['max_gap']:.2e}",
                verdict,
                declaration(r),
                r["reason"],
            ]
        )
    return table(
        ["method", "side", "max relative gap", "P1", "declares", "reason"],
        body,
        bad_rows=bad,
        text_columns=(0, 1, 3, 4, 5),
    )


def render_verify(record: dict[str, Any]) -> str:
    parts = [
        "<h2>Grad-ECLIP == Attention-ECLIP</h2>",
        "<p>Largest differences between the two methods' maps on both towers; a row over the tolerance "
        "(" + ", ".join(f"{v:g} {k}" for k, v in TOLERANCE.items()) + ") is marked.</p>",
        equivalence_table(record["equivalence"]),
    ]
    if "p1" in record:
        parts += [
            "<h2>Principle P1: is the explained score the model's own?</h2>",
            "<p>A declared departure (the method says it modifies the model or its input) is not a "
            "failure of the check; an undeclared one is.</p>",
            p1_table(record["p1"]),
        ]
    failures = record.get("failures", [])
    declared = sorted(
        {
            r["method"]
            for r in record.get("p1", [])
            if not r["passed"] and (r.get("modifies_model") or r.get("modifies_input"))
        }
    )
    departures = f" Declared departures (not failures): {esc(', '.join(declared))}." if declared else ""
    verdict = (
        ("<p class='bad'>FAILED: " + "; ".join(esc(f) for f in failures) + "</p>")
        if failures
        else f"<p>All checks passed (exit 0).{departures}</p>"
    )
    return html_page(f"faithclip verify: {record['model']}", verdict + "".join(parts))


__all__ = ["declaration", "equivalence_table", "p1_table", "render_verify"]
