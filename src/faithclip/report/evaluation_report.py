"""Rendering an evaluation's ``results.json`` as Markdown tables and a self-contained HTML page.

Both are views of the JSON (the canonical record): every column names its metric's protocol
(``deletion AUC [rise]``) and its direction (up/down arrow), every cell is ``mean [95 % CI]`` with the
number of images. The HTML page embeds matplotlib curves and example overlays as PNG data URIs.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import torch

ARROW = {True: "↑", False: "↓"}


def _cell(summary: dict[str, Any] | None, digits: int = 3) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    text = f"{summary['mean']:.{digits}f}"
    if summary.get("ci95"):
        low, high = summary["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    text += f" (n={summary['n']}"
    text += f", {summary['missing']} undefined)" if summary.get("missing") else ")"
    return text


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` per metric category, methods as rows, protocol-labelled columns."""
    out = []
    metrics = results["metrics"]
    model_level = [m for m in metrics if not m["per_method"]]
    if model_level:
        header = ["model"] + [f"{label} {ARROW[m['higher_is_better']]}" for m in model_level
                              for label in m["columns"].values()]
        row = [results["model"]["id"]]
        for m in model_level:
            for output in m["columns"]:
                row.append(_cell(results["aggregate"].get("-", {}).get(m["name"], {}).get(output)))
        out.append(("model", header, [row]))
    categories: dict[str, list[dict[str, Any]]] = {}
    for m in metrics:
        if m["per_method"] and m["name"] not in not_computed(results):
            categories.setdefault(m["category"], []).append(m)
    for category, members in categories.items():
        header = ["method"] + [f"{label} {ARROW[m['higher_is_better']]}" for m in members
                               for label in m["columns"].values()]
        rows = []
        for method in results["methods"]:
            row = [method["name"]]
            for m in members:
                for output in m["columns"]:
                    row.append(_cell(results["aggregate"].get(method["name"], {}).get(m["name"], {}).get(output)))
            rows.append(row)
        out.append((category, header, rows))
    return out


def not_computed(results: dict[str, Any]) -> list[str]:
    """Metrics without a single value (e.g. the pointing games on data without masks)."""
    empty = []
    for m in results["metrics"]:
        per_method = [results["aggregate"].get(method, {}).get(m["name"], {}) for method in
                      (["-"] if not m["per_method"] else [x["name"] for x in results["methods"]])]
        if all(not summary or all(v.get("n", 0) == 0 for v in summary.values()) for summary in per_method):
            empty.append(m["name"])
    return empty


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of {results['model']['id']} on {results['data']['name']}",
        "",
        f"faithclip {results['faithclip_version']}, torch {results['torch_version']}, "
        f"transformers {results['transformers_version']}; seed {results['seed']}; "
        f"{results['data']['num_cases']} images; {results['confidence_interval']}.",
        "",
    ]
    if not results.get("complete", True):
        lines += ["**Incomplete run**: some (image, method) records are missing; resume it with the same command.", ""]
    for title, header, rows in tables(results):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    skipped = not_computed(results)
    if skipped:
        lines += [f"Not computed (no values, e.g. no object masks in the data): {', '.join(skipped)}.", ""]
    lines += ["## Protocols", ""]
    for m in results["metrics"]:
        options = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        lines.append(f"- `{m['name']}` [{m['protocol']}] ({m['paper']}): {m['summary']}"
                     + (f"; options: {options}" if options else ""))
    lines.append("")
    return "\n".join(lines)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def curve_figures(results: dict[str, Any]) -> list[tuple[str, bytes]]:
    """One PNG per (metric, curve): mean curve of every method."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    specs = {m["name"]: m for m in results["metrics"]}
    keyed: dict[tuple[str, str], dict[str, Any]] = {}
    for method, per_metric in results.get("curves", {}).items():
        for metric, named in per_metric.items():
            for name, curve in named.items():
                keyed.setdefault((metric, name), {})[method] = curve
    figures = []
    for (metric, name), by_method in sorted(keyed.items()):
        figure = Figure(figsize=(4.5, 3.2), dpi=100)
        axes = figure.add_subplot()
        colours = matplotlib.colormaps["tab10" if len(by_method) <= 10 else "tab20"]
        for index, (method, curve) in enumerate(by_method.items()):
            y = [float("nan") if v is None else v for v in curve["y"]]  # undefined points leave gaps
            axes.plot(curve["x"], y, marker="." if len(curve["x"]) <= 20 else None, label=method,
                      color=colours(index % colours.N), linestyle="-" if index % 2 == 0 else "--")
        protocol = specs[metric]["protocol"] if metric in specs else ""
        axes.set_title(f"{metric}: {name} [{protocol}]", fontsize=9)
        axes.set_xlabel("fraction of pixels moved" if "sanity" not in metric else "randomisation step")
        axes.set_ylabel(name)
        axes.legend(fontsize=7)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        figures.append((f"{metric} {name} [{protocol}]", buffer.getvalue()))
    return figures


def overlay_cells(results: dict[str, Any], out_dir: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per example case: ``(case, [(method, png data URI)])`` of min-max normalised maps over the crop."""
    from PIL import Image

    from faithclip.explanation import minmax
    from faithclip.report.overlay import overlay_png

    rows = []
    for example in results.get("examples", []):
        path = Path(out_dir) / example["image"]
        if not path.is_file():
            continue
        with Image.open(path) as image:
            crop = image.convert("RGB")
        cells = [("image", _png_uri(path.read_bytes()))]
        for method, values in example["maps"].items():
            patch_map = torch.tensor(values, dtype=torch.float64)
            cells.append((method, _png_uri(overlay_png(crop, minmax(patch_map)))))
        rows.append((example["case"], cells))
    return rows


def render_html(results: dict[str, Any], out_dir: str | Path) -> str:
    escape = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>faithclip evaluation: {escape(results['model']['id'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}th{background:#eee}"
        "img{margin:2px}.fig{display:inline-block}</style></head><body>",
    ]
    markdown_intro = render_markdown(results).split("\n## ")[0].splitlines()
    parts.append(f"<h1>{escape(markdown_intro[0].lstrip('# '))}</h1><p>{escape(' '.join(markdown_intro[1:]))}</p>")
    for title, header, rows in tables(results):
        parts.append(f"<h2>{escape(title)}</h2><table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    figures = curve_figures(results)
    if figures:
        parts.append("<h2>Curves (mean over images)</h2>")
        for title, png in figures:
            parts.append(f"<div class='fig'><img alt='{escape(title)}' src='{_png_uri(png)}'></div>")
    examples = overlay_cells(results, Path(out_dir))
    if examples:
        parts.append("<h2>Examples</h2><p>Raw maps, min-max normalised for display, over the scored crop.</p><table>")
        for case, cells in examples:
            parts.append(f"<tr><th>{escape(case)}</th>" + "".join(
                f"<td>{escape(name)}<br><img width='160' src='{uri}'></td>" for name, uri in cells) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Protocols</h2><ul>")
    for m in results["metrics"]:
        parts.append(f"<li><b>{escape(m['name'])}</b> [{escape(m['protocol'])}] ({escape(m['paper'])}): "
                     f"{escape(m['summary'])}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


__all__ = ["render_markdown", "render_html", "tables", "curve_figures"]
