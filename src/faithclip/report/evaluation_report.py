"""Rendering an evaluation's ``results.json`` as Markdown tables and a self-contained HTML page.

Both are views of the JSON (the canonical record): every column names its metric's protocol
(``deletion AUC [rise]``) and its direction (up/down arrow), every cell is ``mean [95 % CI]`` with the
number of images. The HTML page embeds matplotlib curves and example overlays as PNG data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import re
import textwrap
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


def data_label(name: str) -> str:
    """The data set's name without internal generator seeds (``shapes(size=64, seed=1000000000002)`` ->
    ``shapes(size=64)``): the seed is in results.json for reproduction, not a thing a reader needs."""
    return re.sub(r"\(\)", "", re.sub(r",?\s*seed=\d+", "", name).replace("(, ", "("))


def identical_to(results: dict[str, Any]) -> dict[str, str]:
    """``{method: earlier method}`` for methods whose every aggregate value equals an earlier method's
    (e.g. grad_eclip = attention_eclip, an identity): a reader must be told, not find one hidden under the
    other in a plot."""

    def signature(name: str) -> Any:
        values = results["aggregate"].get(name, {})
        return sorted(
            (metric, output, None if v.get("mean") is None else float(f"{v['mean']:.6g}"))
            for metric, outputs in values.items()
            for output, v in outputs.items()
        )

    seen: dict[Any, str] = {}
    same = {}
    for method in results["methods"]:
        key = repr(signature(method["name"]))
        if key in seen and signature(method["name"]):
            same[method["name"]] = seen[key]
        else:
            seen.setdefault(key, method["name"])
    return same


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` per metric category, methods as rows, protocol-labelled columns."""
    out = []
    metrics = results["metrics"]
    model_level = [m for m in metrics if not m["per_method"]]
    if model_level:
        header = ["model"] + [
            f"{label} {ARROW[m['higher_is_better']]}" for m in model_level for label in m["columns"].values()
        ]
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
        header = ["method"] + [
            f"{label} {ARROW[m['higher_is_better']]}" for m in members for label in m["columns"].values()
        ]
        rows = []
        same = identical_to(results)
        for method in results["methods"]:
            label = method["name"]
            row = [f"{label} (identical to {same[label]}, 6 digits)" if label in same else label]
            for m in members:
                for output in m["columns"]:
                    row.append(_cell(results["aggregate"].get(method["name"], {}).get(m["name"], {}).get(output)))
            rows.append(row)
        chance = [m for m in members if m.get("chance")]
        if chance:  # the level of a map that knows nothing of the model, per metric (aggregate['-'])
            labels = list(dict.fromkeys(m["chance"] for m in chance))  # in column order
            row = [f"chance ({'; '.join(labels)})"]
            for m in members:
                for output in m["columns"]:
                    row.append(
                        _cell(results["aggregate"].get("-", {}).get(m["name"], {}).get(output))
                        if m.get("chance")
                        else "-"
                    )
            rows.append(row)
        out.append((category, header, rows))
    return out


def not_computed(results: dict[str, Any]) -> list[str]:
    """Metrics without a single value (e.g. the pointing games on data without masks)."""
    empty = []
    for m in results["metrics"]:
        per_method = [
            results["aggregate"].get(method, {}).get(m["name"], {})
            for method in (["-"] if not m["per_method"] else [x["name"] for x in results["methods"]])
        ]
        if all(not summary or all(v.get("n", 0) == 0 for v in summary.values()) for summary in per_method):
            empty.append(m["name"])
    return empty


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of {results['model']['id']} on {data_label(results['data']['name'])}",
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
        lines.append(
            f"- `{m['name']}` [{m['protocol']}] ({m['paper']}): {m['summary']}"
            + (f"; options: {options}" if options else "")
        )
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
    same = identical_to(results)
    figures = []
    for (metric, name), by_method in sorted(keyed.items()):
        figure = Figure(figsize=(4.5, 3.2), dpi=100)
        axes = figure.add_subplot()
        colours = matplotlib.colormaps["tab10" if len(by_method) <= 10 else "tab20"]
        jumped = banded = False
        for index, (method, curve) in enumerate(by_method.items()):
            if method in same:
                continue  # drawn once, under the name of the method it equals
            label = " = ".join([method] + [m for m, twin in same.items() if twin == method and m in by_method])
            x = [float(v) for v in curve["x"]]
            y = [float("nan") if v is None else v for v in curve["y"]]  # undefined points leave gaps
            style = dict(color=colours(index % colours.N), linestyle="-" if index % 2 == 0 else "--")
            breaks = _unmeasured_gaps(x)
            if curve.get("low") is not None:  # the point-wise 95 % band over images, shaded
                low = [float("nan") if v is None else v for v in curve["low"]]
                high = [float("nan") if v is None else v for v in curve["high"]]
                axes.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)
                banded = True
            start = 0
            for stop in breaks + [len(x)]:  # measured stretches as lines ...
                axes.plot(
                    x[start:stop],
                    y[start:stop],
                    marker="." if len(x) <= 20 else None,
                    label=label if start == 0 else None,
                    **style,
                )
                start = stop
            for gap in breaks:  # ... and a jump to a point far away (e.g. the full image at 1.0) dotted
                axes.plot(x[gap - 1 : gap + 1], y[gap - 1 : gap + 1], linestyle=":", color=style["color"], linewidth=1)
                axes.plot(x[gap : gap + 1], y[gap : gap + 1], marker="o", fillstyle="none", color=style["color"])
                jumped = True
        protocol = specs[metric]["protocol"] if metric in specs else ""
        axes.set_title(curve_title(metric, protocol), fontsize=9)
        axes.set_xlabel(
            "fraction of pixels removed"
            if metric.startswith("deletion")
            else "fraction of pixels added"
            if metric.startswith("insertion")
            else "layers randomised (from the top)"
            if "sanity" in metric
            else "fraction of pixels moved",
            fontsize=8,
        )
        axes.set_ylabel(CURVE_UNITS.get(name, name), fontsize=8)
        axes.legend(fontsize=7)
        notes = (["shaded: point-wise 95% bootstrap band over images"] if banded else []) + (
            ["dotted: no step measured in between"] if jumped else []
        )
        if notes:
            axes.annotate(
                "; ".join(notes), (0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=6, color="#555"
            )
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        figures.append((f"{metric} {name} [{protocol}]", buffer.getvalue()))
    return figures


CURVE_UNITS = {
    "top1": "top-1 correct (share of images)",
    "prob": "label probability",
    "spearman": "Spearman with the original map",
    "score": "explained score",
}


def curve_title(metric: str, protocol: str) -> str:
    """A plain title: what is done to the image, and which way is better, with the protocol in brackets."""
    kind = metric.split("_")[0]
    what = {
        "deletion": "Deletion: the map's top pixels removed first (lower curve is better)",
        "insertion": "Insertion: the map's top pixels added first (higher curve is better)",
        "sanity": "Sanity: the model's layers randomised (the map should change: lower is better)",
    }.get(kind, metric)
    return "\n".join(textwrap.wrap(f"{what} [{protocol}]", 56))


def _unmeasured_gaps(x: list[float]) -> list[int]:
    """Indices ``i`` where the step ``x[i] - x[i-1]`` is more than twice the typical (median) step: the
    curve has no measurement in between (the Grad-ECLIP protocol stops at half the pixels and adds the
    full image at 1.0)."""
    steps = [b - a for a, b in zip(x, x[1:])]
    if len(steps) < 3:
        return []
    typical = sorted(steps)[len(steps) // 2]
    return [i + 1 for i, step in enumerate(steps) if typical > 0 and step > 2 * typical]


def overlay_cells(results: dict[str, Any], out_dir: Path) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """Per example case: ``(case, caption, [(name, png data URI, raw range)])``: the scored crop, then each
    method's raw map over it with its colour bar. ``caption`` names the explained prompt and the label."""
    from PIL import Image

    from faithclip.report.figures import map_card_png

    names = results.get("config", {}).get("data_class_names") or []
    labels = {r["case"]: r.get("label") for r in results.get("per_image", []) if r.get("label") is not None}
    predicted = {
        r["case"]: r.get("details", {}).get("zeroshot", {}).get("predicted")
        for r in results.get("per_image", [])
        if r.get("method") == "-"
    }
    rows = []
    for example in results.get("examples", []):
        path = Path(out_dir) / example["image"]
        if not path.is_file():
            continue
        with Image.open(path) as image:
            crop = image.convert("RGB")
        label = labels.get(example["case"])
        caption = example["case"]
        if label is not None:
            prompt = names[label] if 0 <= label < len(names) else f"class {label}"
            caption += f': explained prompt "{prompt}" (label {label})'
            guess = predicted.get(example["case"])
            if guess is not None and guess != label:
                caption += f'; the model\'s top-1 is "{names[guess] if 0 <= guess < len(names) else guess}"'
        cells = [("image (the model's crop)", _png_uri(path.read_bytes()), f"{crop.width}x{crop.height} px")]
        for method, values in example["maps"].items():
            png, span = map_card_png(torch.tensor(values, dtype=torch.float64), crop, 160)
            cells.append((method, _png_uri(png), span))
        rows.append((example["case"], caption, cells))
    return rows


ZEROSHOT_NOTE = (
    "Zero-shot accuracy here is over the data's own cases: on multi-object scenes (the shapes "
    "world's evaluation set has 2-4 objects) the label is ONE of the objects present, so the model's "
    "top-1 may name another object that is present too; that is why it is far below the "
    "single-object figure (99.7 % for shapes-clip in the README)."
)


def render_html(results: dict[str, Any], out_dir: str | Path) -> str:
    from faithclip.report.page import html_page, table

    escape = html.escape
    markdown_intro = render_markdown(results).split("\n## ")[0].splitlines()
    parts = [f"<p>{escape(' '.join(markdown_intro[1:]))}</p>"]
    same = identical_to(results)
    if same:
        parts.append(
            "<p class='note'>"
            + "; ".join(f"{escape(m)} gives values identical to {escape(t)}" for m, t in same.items())
            + " (shown once in the curves, under both names).</p>"
        )
    for title, header, rows in tables(results):
        parts.append(f"<h2>{escape(title)}</h2>" + table(header, rows))
        if title == "model" and any(m["name"] == "zeroshot" for m in results["metrics"]):
            parts.append(f"<p>{escape(ZEROSHOT_NOTE)}</p>")
    if any(m["name"].startswith("deletion") for m in results["metrics"]):
        parts.append(
            "<p>Deletion AUC: lower is better (the score falls faster as the map's top pixels go). "
            "A cosine can fall below zero once the evidence is removed, so an AUC can be negative; "
            "lower still means better.</p>"
        )
        parts.append(
            "<p class='meta'>Reading: ↑ marks a column where higher is better, ↓ where lower is. "
            "Deletion and insertion measure how well a map ranks pixels for the model that is scored; a "
            "method that explains another model (one that modifies the model, such as the published "
            "Grad-ECLIP pipeline's one-head rewrite) can still rank pixels well or better, so a better "
            "AUC is not evidence of a faithful explanation: check P1 (<code>faithclip check</code>). "
            "Intervals that overlap do not separate two methods.</p>"
        )
    figures = curve_figures(results)
    if figures:
        parts.append("<h2>Curves (mean over images)</h2><div class='cards' style='--card:450px'>")
        for title, png in figures:
            parts.append(f"<figure class='card'><img alt='{escape(title)}' src='{_png_uri(png)}'></figure>")
        parts.append("</div>")
    examples = overlay_cells(results, Path(out_dir))
    if examples:
        parts.append(
            "<h2>Examples</h2><p>Each method's RAW map over the scored crop on its own colour scale: "
            "non-negative maps from 0 (transparent) to their largest value, signed maps centred on 0 (blue "
            "below, red above); the strip on the right is the scale with a black mark at 0, its ends "
            "written under the card. Methods' units differ: compare patterns across methods, not "
            "colours.</p>"
        )
        for case, caption, cells in examples:
            parts.append(f"<h3>{escape(caption)}</h3><div class='cards' style='--card:172px'>")
            for name, uri, span in cells:
                parts.append(
                    f"<figure class='card'><img alt='{escape(name)}' src='{uri}'>"
                    f"<figcaption><b>{escape(name)}</b><br>{escape(span)}</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("<h2>Protocols</h2><ul>")
    for m in results["metrics"]:
        parts.append(
            f"<li><b>{escape(m['name'])}</b> [{escape(m['protocol'])}] ({escape(m['paper'])}): "
            f"{escape(m['summary'])}</li>"
        )
    parts.append("</ul>")
    return html_page(markdown_intro[0].lstrip("# "), "\n".join(parts))


__all__ = ["render_markdown", "render_html", "tables", "curve_figures"]
