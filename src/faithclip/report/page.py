"""One page template and one output convention for every command's report.

``html_page(title, body_html)`` returns a complete, self-contained HTML document: charset, viewport,
inline CSS, no script, no external resource (images are data URIs). Its CSS keeps every page readable at
1,400 px and below: wide tables scroll inside their own box (``<div class="scroll">``, added around each
table by ``table``) instead of widening the page; long words and captions wrap; ``.bad`` marks a failed
check or flag; ``.note`` a warning.

The output convention (``--out DIR`` on every command): ``write_report(out, "verify", record, body)``
writes ``DIR/verify.json`` (the canonical record) and ``DIR/report.html`` (rendered from it), each
atomically, and returns both paths.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from faithclip._version import __version__

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:1.2em 1.5em;
 max-width:1360px;color:#1d1d1f;line-height:1.45;overflow-wrap:break-word}
h1{font-size:1.6em;margin:.2em 0 .4em}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1.2em 0 .3em}p,li{max-width:75em}
.scroll{max-width:100%;overflow-x:auto;margin:.6em 0 1em}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #c8c8c8;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f1f1f3;text-align:center}
td:first-child,th:first-child{text-align:left}
td.text,th.text{text-align:left}
.bad,tr.bad td{color:#a40000;font-weight:600}
tr.bad td{background:#fff0f0}
.note{color:#8a4b00}
.meta{color:#555;font-size:.92em}
img{max-width:100%;height:auto}
figure{margin:.5em 0 1em;display:inline-block;vertical-align:top;max-width:100%}
figcaption{font-size:.85em;color:#444;max-width:40em}
.cards{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.card{flex:0 0 auto;width:var(--card,120px);font-size:11px;text-align:center;overflow-wrap:anywhere}
.card img{width:100%;image-rendering:pixelated;display:block}
code{background:#f4f4f6;padding:0 .2em;border-radius:3px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode()


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    bad_rows: Iterable[int] = (),
    bad_cells: Iterable[tuple[int, int]] = (),
    text_columns: Iterable[int] = (0,),
    raw: bool = False,
) -> str:
    """A table inside a horizontally scrolling box. ``bad_rows`` (row indices) and ``bad_cells``
    ((row, column)) get the ``bad`` class; ``text_columns`` are left-aligned; ``raw=True``: cells are
    already HTML."""
    bad_rows, bad_cells, text_columns = set(bad_rows), set(bad_cells), set(text_columns)
    cell = (lambda value: str(value)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            classes = [name for name, on in (("text", c in text_columns), ("bad", (r, c) in bad_cells)) if on]
            attribute = f" class='{' '.join(classes)}'" if classes else ""
            cells.append(f"<td{attribute}>{cell(value)}</td>")
        body.append(f"<tr{' class=bad' if r in bad_rows else ''}>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def html_page(title: str, body_html: str, *, subtitle: str | None = None, css: str = "") -> str:
    """A complete self-contained HTML document around ``body_html`` (already escaped HTML)."""
    sub = f"<p class='meta'>{subtitle}</p>" if subtitle else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<meta name='generator' content='faithclip {esc(__version__)}'>"
        f"<title>{esc(title)}</title><style>{CSS}{css}</style></head>"
        f"<body><h1>{esc(title)}</h1>{sub}{body_html}"
        f"<p class='meta'>Written by faithclip {esc(__version__)}; self-contained page (no network).</p>"
        "</body></html>"
    )


def write_report(out: str | Path, name: str, record: Any, page: str) -> tuple[Path, Path]:
    """The ``--out DIR`` convention: ``DIR/<name>.json`` (canonical) and ``DIR/report.html``, atomically."""
    from faithclip.files import json_bytes, write_atomic

    directory = Path(out)
    json_path = write_atomic(directory / f"{name}.json", json_bytes(record))
    html_path = write_atomic(directory / "report.html", page.encode())
    return json_path, html_path


__all__ = ["CSS", "data_uri", "esc", "html_page", "table", "write_report"]
