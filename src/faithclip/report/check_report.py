"""The verdict card of ``faithclip check``: terminal text and a self-contained HTML page, both from the JSON record."""

from __future__ import annotations

import re
from typing import Any, Sequence

from faithclip.report.page import esc, html_page, table


def _words(text: Any) -> str:
    """Python's names for nested functions in people's words: ``pkg.mod.f.<locals>.hook`` -> ``hook (defined
    inside pkg.mod.f)``."""
    return re.sub(r"([\w.]+)\.<locals>\.([\w<>]+)", r"\2 (defined inside \1)", str(text))


def settings_table(settings: dict[str, Any]) -> str:
    """The check's settings, one row each (lists and mappings written out)."""

    def value(item: Any) -> str:
        if isinstance(item, dict):
            return "; ".join(f"{k}: {value(v)}" for k, v in item.items()) or "none"
        if (
            isinstance(item, (list, tuple))
            and item
            and all(isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) for v in item)
        ):
            return "; ".join(f"{k}: {value(v)}" for k, v in item)  # pairs (a frozen mapping)
        if isinstance(item, (list, tuple)):
            return ", ".join(value(v) for v in item) or "none"
        return "none" if item is None else str(item)

    return table(
        ["setting", "value"],
        [[key.replace("_", " "), value(item)] for key, item in settings.items()],
        text_columns=(0, 1),
    )


def _interval(interval: Sequence[float] | None) -> str:
    return "" if not interval else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def format_cards(cards: Sequence[dict[str, Any]]) -> str:
    """One block per method: a line per check with its verdict, interval and evidence."""
    lines = []
    for card in cards:
        declared = [flag for flag, on in card["declared"].items() if on]
        lines.append(
            f"{card['method']} ({card['origin']}; declares {', '.join(declared) or 'nothing'}) on "
            f"{card['model']}: {'a check failed (exit 1)' if card['failed'] else 'no check failed'} in {card['seconds']:.1f} s"
        )
        for check in card["checks"]:
            verdict = check["verdict"]
            lines.append(f"  {check['check']:<17} {verdict:<18} {_interval(check['interval']):<15} {check['evidence']}")
    return "\n".join(lines)


def verdict_table(cards: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Method x check: the verdicts (and the time each method took)."""
    names: list[str] = []
    for card in cards:
        for check in card["checks"]:
            if check["check"] not in names:
                names.append(check["check"])
    rows = []
    for card in cards:
        verdicts = {c["check"]: c["verdict"] for c in card["checks"]}
        rows.append([card["method"], *(verdicts.get(n, "-") for n in names), f"{card['seconds']:.1f}"])
    return ["method", *names, "seconds"], rows


def check_page(record: dict[str, Any]) -> str:
    cards = record["cards"]
    header, rows = verdict_table(cards)
    bad = [(r, c) for r, row in enumerate(rows) for c, value in enumerate(row) if str(value).startswith("fail")]
    failed = any(card["failed"] for card in cards)
    body = [
        f"<p>Model <code>{esc(record['model'])}</code>. Each check's verdict is pass, fail or inconclusive "
        "(too little evidence either way); P1 of a method that departs from the model exactly as it declares "
        '(it changes the model or its input, and says so) reads "declared departure": it does not explain '
        "the original model, and is not a fail. The command exits 1 when any check fails"
        f"{' (it did)' if failed else ' (none did: exit 0)'}. What each check does: docs/plugins.md and "
        "<code>faithclip.audit.check</code>.</p>",
        table(header, rows, bad_cells=bad),
        "<h2>Settings</h2>",
        settings_table(record["settings"]),
    ]
    for card in cards:
        declared = [flag for flag, on in card["declared"].items() if on]
        body.append(
            f"<h2>{esc(card['method'])}</h2><p class='meta'>{esc(card['origin'])}; declares "
            f"{esc(', '.join(declared) or 'nothing')}; {esc(card['paper'])}; {card['seconds']:.1f} s</p>"
        )
        check_rows = [
            [c["check"], c["verdict"], _interval(c["interval"]), _words(c["evidence"])] for c in card["checks"]
        ]
        body.append(
            table(
                ["check", "verdict", "interval", "evidence"],
                check_rows,
                text_columns=(0, 1, 3),
                bad_rows=[i for i, c in enumerate(card["checks"]) if c["verdict"] == "fail"],
            )
        )
        findings = [
            f
            for c in card["checks"]
            for f in (c.get("details") or {}).get("findings", [])
            if c["check"].startswith("P1")
        ]
        if findings:
            body.append(
                table(
                    ["severity", "category", "finding", "where", "detail"],
                    [
                        [f["severity"], f["category"], f["kind"], _words(f["where"]), _words(f["detail"])]
                        for f in findings
                    ],
                    text_columns=(0, 1, 2, 3, 4),
                    bad_rows=[i for i, f in enumerate(findings) if f["severity"] == "departure"],
                )
            )
    return html_page("faithclip check", "".join(body), subtitle="The two principles, checked on each method")


__all__ = ["check_page", "format_cards", "settings_table", "verdict_table"]
