"""The page of ``faithclip bench``: the cost table, rendered from the JSON record (``bench.json``)."""

from __future__ import annotations

from typing import Any

from faithclip.report.page import esc, html_page, table


def render_bench(record: dict[str, Any], ratio_note: str) -> str:
    """The machine, what the ratios are relative to (``ratio_note``: ``faithclip.bench.RATIO_NOTE``, passed in
    so that ``report/`` does not import the timing code) and one row per timed item; the peak-memory column
    only when some row measured it."""
    rows = record["rows"]
    memory = any(r["peak_ratio"] is not None for r in rows)
    body = (
        f"<p>{record['machine']}. Ratios to a plain no-grad image forward of the same architecture (random "
        f"weights). {esc(ratio_note)}</p>"
        + table(
            ["arch", "item", "seconds", "forward s", "x forward"] + (["peak RSS (x forward)"] if memory else []),
            [
                [
                    r["architecture"],
                    r["item"],
                    f"{r['seconds']:.3f}",
                    "" if r["forward_seconds"] is None else f"{r['forward_seconds']:.3f}",
                    f"{r['time_ratio']:.2f}",
                ]
                + (["" if r["peak_ratio"] is None else f"{r['peak_ratio']:.2f}"] if memory else [])
                for r in rows
            ],
            text_columns=(0, 1),
        )
    )
    return html_page("faithclip bench", body)


__all__ = ["render_bench"]
