"""The verdict card of ``faithclip check``: terminal text and a self-contained HTML page, both from the JSON record."""

from __future__ import annotations

from typing import Any, Sequence

from faithclip.report.page import esc, html_page, table


def _interval(interval: Sequence[float] | None) -> str:
    return "" if not interval else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def format_cards(cards: Sequence[dict[str, Any]]) -> str:
    """One block per method: a line per check with its verdict, interval and evidence."""
    lines = []
    for card in cards:
        declared = [flag for flag, on in card["declared"].items() if on]
        lines.append(f"{card['method']} ({card['origin']}; declares {', '.join(declared) or 'nothing'}) on "
                     f"{card['model']}: {'FAIL' if card['failed'] else 'no check failed'} in {card['seconds']:.1f} s")
        for check in card["checks"]:
            verdict = check["verdict"].upper() if check["verdict"] == "fail" else check["verdict"]
            lines.append(f"  {check['check']:<17} {verdict:<13} {_interval(check['interval']):<15} {check['evidence']}")
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
    bad = [(r, c) for r, row in enumerate(rows) for c, value in enumerate(row) if value == "fail"]
    body = [f"<p>Model <code>{esc(record['model'])}</code>; settings: <code>{esc(record['settings'])}</code>. "
            "pass / fail / inconclusive per check; what each check does: docs/plugins.md and "
            "<code>faithclip.audit.check</code>.</p>", table(header, rows, bad_cells=bad)]
    for card in cards:
        declared = [flag for flag, on in card["declared"].items() if on]
        body.append(f"<h2>{esc(card['method'])}</h2><p class='meta'>{esc(card['origin'])}; declares "
                    f"{esc(', '.join(declared) or 'nothing')}; {esc(card['paper'])}; {card['seconds']:.1f} s</p>")
        check_rows = [[c["check"], c["verdict"], _interval(c["interval"]), c["evidence"]] for c in card["checks"]]
        body.append(table(["check", "verdict", "interval", "evidence"], check_rows, text_columns=(0, 1, 3),
                          bad_rows=[i for i, c in enumerate(card["checks"]) if c["verdict"] == "fail"]))
        findings = [f for c in card["checks"] for f in (c.get("details") or {}).get("findings", [])
                    if c["check"].startswith("P1")]
        if findings:
            body.append(table(["severity", "category", "finding", "where", "detail"],
                              [[f["severity"], f["category"], f["kind"], f["where"], f["detail"]] for f in findings],
                              text_columns=(0, 1, 2, 3, 4),
                              bad_rows=[i for i, f in enumerate(findings) if f["severity"] == "departure"]))
    return html_page("faithclip check", "".join(body), subtitle="The two principles, checked on each method")


__all__ = ["format_cards", "verdict_table", "check_page"]
