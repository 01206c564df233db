"""The page of ``faithclip explain``: its figures, scores and warnings, rendered from the JSON record."""

from __future__ import annotations

import json

from faithclip.report.page import data_uri, esc, html_page, table


def render_explain(record: dict, figures: list[dict]) -> str:
    """The figures of one ``explain`` run on one page, with their scores and warnings. Each figure's
    ``<img>`` carries its colour scales (``data-colour-scales``, JSON), so a reader or a test can see
    which panels share one."""
    rows = [
        [
            e["image"],
            e["text"],
            e["method"],
            f"{e['score']:+.4f}",
            "" if e["model_score"] is None else f"{e['model_score']:+.4f}",
            "; ".join(e["warnings"]),
        ]
        for e in record["explanations"]
    ]
    bad = [i for i, e in enumerate(record["explanations"]) if e["warnings"]]
    scale_words = {
        "shared": "each method's maps share one colour scale (a method's maps are in the same units; "
        "different methods' are not)",
        "all": "every map shares one colour scale",
        "per_map": "each map has its own colour scale",
    }
    parts = [
        f"<p>Model <b>{esc(record['model'])}</b>, method(s) <b>{esc(', '.join(record['methods']))}</b> "
        f"({esc(record['side'])} side), target <b>{esc(record['target'])}</b>.</p>"
    ]
    if record["side"] == "image":
        parts.append(
            "<p>Each figure shows the map on the image over the region it covers (the model's crop, "
            "outlined), the image untouched, and a colour bar in the map's raw values with zero marked: "
            "non-negative maps run from 0 (transparent) to their top, signed maps are centred on 0 "
            f"(blue below, red above). In these figures {scale_words[record['scale']]}, so within a "
            "scale a stronger colour is a larger value. The score in each panel's title is the "
            "explained score; a prompt the model rejects has a negative one.</p>"
        )
    else:
        parts.append(
            "<p>Each figure shows one bar per token: the token's raw weight in the explained score "
            "(red above zero, blue below).</p>"
        )
    parts.append(
        table(
            ["image", "text", "method", "score", "model score", "warnings"],
            rows,
            bad_cells=[(i, 5) for i in bad],
            text_columns=(0, 1, 2, 5),
        )
    )
    for figure in figures:
        parts.append(f"<h2>{esc(figure['title'])}</h2>")
        warnings = dict.fromkeys(w for i in figure["explanations"] for w in record["explanations"][i]["warnings"])
        parts += [f"<p class='bad'>warning: {esc(w)}</p>" for w in warnings]
        parts.append(
            f"<figure><img alt='{esc(figure['title'])}' data-colour-scales='{esc(json.dumps(figure['colour_scales']))}' "
            f"src='{data_uri(figure['preview'])}'><figcaption>{esc(figure['file'])}</figcaption></figure>"
        )
    return html_page("faithclip explain", "".join(parts))


__all__ = ["render_explain"]
