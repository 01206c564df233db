"""The report of ``faithclip audit``: terminal tables and HTML, both rendered from the JSON record (canonical).

``format_audit(results)`` is the text the command prints (and docs/audit.md documents);
``audit_html(results)`` returns a self-contained ``<section>`` the demo report can include as is;
``audit_page(results)`` the complete page ``faithclip audit --out DIR`` writes. The text and the HTML live
in one module, as ``check_report``'s do, because they are one rendering: the same rows, labels, figures and
intervals (``_arm_rows``, ``_map_rows``, ``p2_rows``, ``_estimate``), written twice would drift apart.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

ARM_LABELS = {
    "original": "original (model heads, standard crop)",
    "one_head": "one-head rewrite alone",
    "keep_size": "keep-size input alone",
    "official": "official pipeline (both)",
}
ARM_COLUMNS = (  # (key, title, key of its interval or None)
    ("embedding_cosine_mean", "emb. cosine", "embedding_cosine_interval"),
    ("embedding_cosine_min", "min cosine", None),
    ("score_change_mean_abs", "|score change|", "score_change_mean_abs_interval"),
    ("score_change_relative", "rel. change (median)", "score_change_relative_interval"),
    ("flip_rate", "flips", "flip_rate_interval"),
    ("accuracy", "zero-shot acc.", "accuracy_interval"),
)
DIGITS = 3  # every departure figure and its interval bounds
MAP_ARM_LABELS = {
    "faithful": "faithful (model's forward and input, raw q/k)",
    "qk_out_proj": "lambda on out_proj(q), out_proj(k) alone",
    "one_head": "one-head rewrite alone",
    "keep_size": "keep-size input alone",
    "one_head+qk_out_proj": "one-head + out_proj lambda",
    "keep_size+qk_out_proj": "keep-size + out_proj lambda",
    "one_head+keep_size": "one-head + keep-size",
    "published": "published (all three: evaluation script)",
}


def _map_labels(results: dict) -> dict[str, str]:
    """The labels of the map arms a result has; a published arm without the out_proj lambda (a family whose
    published pipeline uses raw q/k, e.g. BLIP's notebook) is labelled as what it is."""
    arms = results["maps"].get("arms", MAP_ARM_LABELS)
    labels = {arm: title for arm, title in MAP_ARM_LABELS.items() if arm in arms}
    published = arms.get("published", {})
    if published.get("lambda_qk", published.get("qk", "out_proj")) != "out_proj":  # "qk": records of 0.1.0
        labels["published"] = "published (one head + keep size, raw q/k)"
    return labels


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value + 0.0 if round(value, digits) else 0.0:.{digits}f}"  # no "-0.000" from float noise
    return str(value)


def _figure(values: dict, key: str, interval_key: str | None, digits: int = DIGITS) -> str:
    """``value [low, high]`` (the form ``tools/audit_docs.py --check`` reads back), or the bare value when the result
    has no interval for it (a min; a result written before intervals were recorded)."""
    value = values.get(key)
    interval = values.get(interval_key) if interval_key else None
    if value is None or interval is None:
        return _fmt(value, digits)
    return _estimate(value, interval, digits)


def _arm_rows(results: dict) -> list[tuple[str, list[str]]]:
    rows = [
        (ARM_LABELS[arm], [_figure(values, key, interval) for key, _, interval in ARM_COLUMNS])
        for arm, values in results["arms"].items()
    ]
    text = results["text"]
    if text is None:  # no text tower (a classifier), or no published text side (BLIP)
        return rows
    rows.append(
        (
            f"text: last {text['layers']} blocks one-head",
            [_figure(text, key, interval) for key, _, interval in ARM_COLUMNS],
        )
    )
    return rows


def _intervals_note(results: dict) -> str:
    """How the arm table's intervals were made, with its n."""
    boot = results.get("bootstrap")
    if boot is None:
        return ""
    prompts = f"; the text row's cosine over the {results['text']['prompts']} prompts" if results.get("text") else ""
    return (
        f"value [{100 * boot['confidence']:g} % interval] over the {results['images']} images: flips and accuracy "
        f"Wilson on the count, the rest a percentile bootstrap over images ({boot['resamples']} resamples, "
        f"seed {boot['seed']}){prompts}; min cosine: the smallest"
    )


def _map_figure(maps: dict, key: str) -> str:
    """A map figure's mean over the images where it is defined, with its interval when recorded."""
    interval = maps.get("intervals", {}).get(key)
    value = maps["mean"].get(key)
    return _fmt(value, DIGITS) if value is None or interval is None else _estimate(value, interval, DIGITS)


MAP_COLUMNS = (
    "Spearman vs faithful",
    "n (undefined)",
    "deletion AUC (lower better)",
    "deletion - faithful",
    "insertion AUC (higher better)",
    "insertion - faithful",
)


def _map_rows(results: dict) -> list[tuple[str, list[str]]]:
    """One row per map arm: Spearman with the faithful map (its n and undefined count), each AUC and its paired
    contrast with the faithful map on the same images."""
    maps = results["maps"]
    contrasts = maps.get("contrasts", {})
    rows = []
    for arm, title in _map_labels(results).items():
        spearman_key = f"spearman_{arm}_vs_faithful"
        cells = [
            _map_figure(maps, spearman_key),
            f"{maps['n'][spearman_key]} ({maps['undefined'][spearman_key]})" if "n" in maps else "-",
        ]
        for curve in ("deletion_auc", "insertion_auc"):
            key = f"{curve}_{arm}"
            contrast = contrasts.get(arm, {}).get(curve)
            cells += [
                _map_figure(maps, key),
                "-" if contrast is None else _estimate(contrast["value"], [contrast["low"], contrast["high"]], DIGITS),
            ]
        rows.append((title, cells))
    return rows


def contrast_reading(contrast: dict, curve: str) -> str:
    """What the interval of a paired contrast (an arm's AUC minus the faithful map's) says: ``worse``, ``better``
    or ``no difference shown`` (the interval spans 0). Deletion: lower is better; insertion: higher."""
    low, high = contrast["low"], contrast["high"]
    if low != low or high != high:
        return "undefined"
    sign = 1 if curve == "deletion_auc" else -1  # the direction in which a larger difference is worse
    nearer, further = sorted((sign * low, sign * high))
    if nearer > 0:
        return "worse"
    if further < 0:
        return "better"
    return "no difference shown"


def _published_verdict(results: dict) -> str | None:
    """One line: are the published maps worse than the faithful ones under the original model?"""
    contrasts = results["maps"].get("contrasts", {}).get("published")
    if not contrasts:
        return None
    parts = [
        f"{curve.split('_')[0]} {_estimate(c['value'], [c['low'], c['high']], DIGITS)} ({contrast_reading(c, curve)})"
        for curve, c in contrasts.items()
    ]
    return (
        f"published - faithful, paired over {contrasts['deletion_auc']['n']} images, scored by the ORIGINAL "
        f"model: " + "; ".join(parts)
    )


def format_audit(results: dict) -> str:
    """Terminal tables of one ``audit_departure`` result (plus ladder / P2 parts when present)."""
    lines = [
        f"Grad-ECLIP audit: {results['model']} on {results['data']} "
        f"({results['images']} images, {results['prompts']} prompts)",
        "",
    ]
    if results.get("departure_skipped"):
        return "\n".join([*lines[:1], f"  departure not measured: {results['departure_skipped']}", *_p2_lines(results)])
    if _intervals_note(results):
        lines += [_intervals_note(results) + ":", ""]
    width = 24
    header = f"{'forward':<40}" + "".join(f"{title:>{width}}" for _, title, _ in ARM_COLUMNS)
    lines += [header, "-" * len(header)]
    lines += [f"{label:<40}" + "".join(f"{v:>{width}}" for v in values) for label, values in _arm_rows(results)]
    maps = results.get("maps", {})
    if maps.get("mean"):
        lines += [
            "",
            f"Grad-ECLIP maps on {maps['images']} images, each cause alone and together; AUCs scored by "
            "the ORIGINAL model on its own input; '- faithful': the paired per-image difference from the "
            "faithful map; n (undefined): images with a defined Spearman (constant maps have none):",
        ]
        lines.append(
            f"  {'map':<46}" + "".join(f"{title:>{width + 8 if 'AUC' in title else width}}" for title in MAP_COLUMNS)
        )
        lines += [
            f"  {title:<46}"
            + "".join(f"{v:>{width + 8 if 'AUC' in MAP_COLUMNS[i] else width}}" for i, v in enumerate(values))
            for title, values in _map_rows(results)
        ]
        verdict = _published_verdict(results)
        if verdict:
            lines.append(f"  {verdict}")
        consistency = _map_figure(maps, "spearman_faithful_vs_grad_eclip")
        lines.append(f"  consistency: faithful arm vs faithclip's grad_eclip, Spearman {consistency} (expect 1)")
    return "\n".join(line.rstrip() for line in lines + _p2_lines(results))


def _p2_lines(results: dict) -> list[str]:
    """The ladder's and the correctness split's terminal tables, when the audit measured them."""
    lines = []
    if "p2" in results:
        lines += ["", format_p2(results["p2"])]
    if "correctness" in results:
        for split in _splits(results):
            lines += ["", format_correctness(split)]
    return lines


def _interval(interval: Any, digits: int = 2) -> str:
    low, high = interval
    return f"[{_fmt(float(low), digits)}, {_fmt(float(high), digits)}]"


def _estimate(value: float, interval: Any, digits: int = 2) -> str:
    """``value [low, high]``: the form ``tools/audit_docs.py --check`` reads back."""
    return f"{_fmt(float(value), digits)} {_interval(interval, digits)}"


def _splits(results: dict) -> list[dict]:
    split = results["correctness"]
    return split if isinstance(split, list) else [split]


PAIR_TITLES = {
    "primary": "faithfulness: x = the model's reliance on the named object (its share of the score drops from "
    "erasing each object), y = the map's mass share on it",
    "secondary": "plausibility: x = margin of the named prompt over the best absent class, y = pointing hit",
}


def _p(value: float) -> str:
    return "n/a" if value != value else f"{value:.3g}"


def p2_rows(p2: dict, pair: str) -> list[list[str]]:
    """One row per method: r [interval], Holm-adjusted p-values, verdict (and why no verdict)."""
    rows = []
    for method, e in p2[pair]["methods"].items():
        rows.append(
            [
                method,
                _estimate(e["r"], [e["low"], e["high"]]),
                _p(e["p_tracks_holm"]),
                _p(e["p_below_holm"]),
                e["verdict"] + (f" ({e['reason']})" if e["reason"] else ""),
            ]
        )
    return rows


def contrast_cells(p2: dict, method: str) -> list[str]:
    cells = []
    for row in p2["contrast"][method]:
        if row["rung"] is None:
            cells.append("no rung at that level")
        else:
            cells.append(
                f"{row['pointing'][0]:.2f} -> {row['pointing'][1]:.2f} (competence {row['competence'][0]:.2f} -> "
                f"{row['competence'][1]:.2f}; -{row['lost']} +{row['gained']}, p {_p(row['p_mcnemar'])})"
            )
    return cells


def format_p2(p2: dict) -> str:
    d = p2["design"]
    lines = [
        f"P2: do the maps track the model? Paired test (docs/p2.md): {d['scenes']} scene pairs x {d['ladders']} "
        f"ladders x {d['rungs']} rungs; r = the average scene's within-scene, within-rung association "
        f"(on {d.get('association', 'linear')}), "
        f"{d['resamples']} two-level bootstrap resamples [95 %] for the interval and both tests, Holm over the "
        f"run at {d['alpha']:g}, minimum effect {d['min_effect']:g}"
    ]
    for ladder in p2["ladders"]:
        lines.append(
            f"  ladder seed {ladder['seed']}: alpha 0 .. {ladder['alphas'][-1]:.3g}, competence on the scenes "
            + " ".join(f"{c:.2f}" for c in ladder["competence"])
        )
    for pair in ("primary", "secondary"):
        lines += [
            f"  {pair} ({PAIR_TITLES[pair]})",
            f"  {'method':<22} {'r [95 %]':<22} {'p tracks':>9} {'p below':>9}  verdict",
        ]
        lines += [f"  {m:<22} {r:<22} {pt:>9} {pb:>9}  {v}" for m, r, pt, pb, v in p2_rows(p2, pair)]
    lines.append(
        f"  headline: pointing on the trained model -> first rung with competence <= {d['contrast_level']:g} "
        "(exact McNemar per ladder)"
    )
    for method in p2["methods"]:
        lines.append(f"  {method:<22} " + "; ".join(contrast_cells(p2, method)))
    return "\n".join(line.rstrip() for line in lines)


def format_correctness(split: dict) -> str:
    at = f" at alpha = {split['alpha']:g}" if "alpha" in split else ""
    lines = [
        f"P2 (b) quality by correctness{at} ({split['right']} right, {split['wrong']} wrong predictions); "
        f"right - wrong with its interval; verdict on the difference WITHIN shape (permutation within shape, Holm "
        f"at {split.get('level', 0.05):g}; none with fewer than {split.get('min_group', 0)} images in a group)",
        f"  {'method':<22} {'pointing right':>14} {'pointing wrong':>14}  {'pointing right-wrong':<22} "
        f"{'within shape':>12} {'verdict':<13} "
        f"{'ins-del right':>13} {'ins-del wrong':>13}  {'ins-del right-wrong':<22}",
    ]
    for method, parts in split["methods"].items():
        lines.append(
            f"  {method:<22} {_fmt(parts['right'].get('pointing'), 3):>14} {_fmt(parts['wrong'].get('pointing'), 3):>14}  "
            f"{_estimate(parts['pointing_difference'], parts['pointing_difference_interval']):<22} "
            f"{_fmt(parts['pointing_within_shape'], 3):>12} {parts['verdict']:<13} "
            f"{_fmt(parts['right'].get('ins_minus_del'), 3):>13} {_fmt(parts['wrong'].get('ins_minus_del'), 3):>13}  "
            f"{_estimate(parts['ins_minus_del_difference'], parts['ins_minus_del_difference_interval']):<22}"
        )
    return "\n".join(line.rstrip() for line in lines)


def _table(header: list[str], rows: list[list[str]], bad_cells: Sequence[tuple[int, int]] = ()) -> str:
    from faithclip.report.page import table

    return table(header, rows, bad_cells=bad_cells)


def _flagged(rows: list[list[str]], column: int) -> list[tuple[int, int]]:
    """Cells of ``column`` whose verdict is ``flagged`` (highlighted with the page's ``bad`` class)."""
    return [(r, column) for r, row in enumerate(rows) if row[column] == "flagged"]


def audit_html(results: dict) -> str:
    """An HTML ``<section>`` with the audit's tables (escape-safe, no scripts, no external resources)."""
    parts = [
        "<section class='faithclip-audit'><h2>Grad-ECLIP audit</h2>",
        f"<p>{html.escape(str(results['model']))} on {html.escape(str(results['data']))}: "
        f"{results['images']} images, {results['prompts']} prompts. Each forward is compared with the "
        "original model on its standard input.</p>",
    ]
    if results.get("command"):
        parts.append(f"<p>Reproduce: <code>{html.escape(results['command'])}</code></p>")
    if results.get("reduced"):
        parts.append(f"<p><b>{html.escape(str(results['reduced']))}</b></p>")
    if results.get("departure_skipped"):
        parts.append(f"<p>Departure not measured: {html.escape(results['departure_skipped'])}.</p>")
        return "".join(parts + _p2_html(results) + ["</section>"])
    parts.append(
        _table(
            ["forward"] + [title for _, title, _ in ARM_COLUMNS],
            [[label] + values for label, values in _arm_rows(results)],
        )
    )
    if _intervals_note(results):
        parts.append(f"<p class='meta'>Each figure: {html.escape(_intervals_note(results))}.</p>")
    parts.append(
        "<p class='meta'>Reading: each row is a forward the published pipeline runs; where its values "
        "differ from the original model's, that pipeline's maps explain a different model from the one "
        "whose score is reported.</p>"
    )
    maps = results.get("maps", {})
    if maps.get("mean"):
        parts.append(f"<h3>Maps ({maps['images']} images), scored by the original model</h3>")
        parts.append(_table(["map", *MAP_COLUMNS], [[title, *values] for title, values in _map_rows(results)]))
        verdict = _published_verdict(results)
        if verdict:
            parts.append(f"<p>{html.escape(verdict)}.</p>")
        parts.append(
            "<p class='meta'>Reading: deletion (lower is better) and insertion (higher is better) are "
            "scored by the original model; '- faithful' is the paired per-image difference from the "
            "faithful map with a bootstrap interval over images. The published pipeline's map can score as "
            "well or better although it explains another forward: these metrics reward any map that ranks "
            "pixels well for the scoring model, whichever model the map came from, so a better AUC here is "
            "not evidence of faithfulness; the departure table above is.</p>"
        )
        consistency = _map_figure(maps, "spearman_faithful_vs_grad_eclip")
        parts.append(f"<p>Consistency: faithful arm vs faithclip's grad_eclip, Spearman {consistency} (expect 1).</p>")
        parts += _example_html(maps.get("example"))
    parts += _p2_html(results)
    parts.append("</section>")
    return "".join(parts)


def _example_html(example: dict | None) -> list[str]:
    """The first map image's faithful and published Grad-ECLIP maps side by side, over the model's crop, on
    ONE colour scale (same method, same units)."""
    if not example:
        return []
    import base64
    import io

    import numpy as np
    from PIL import Image

    from faithclip.report.colour import colour_scale
    from faithclip.report.figures import map_card_png

    crop = Image.open(io.BytesIO(base64.b64decode(example["crop_png"]))).convert("RGB")
    maps = {name: np.asarray(example[name], dtype=np.float64) for name in ("faithful", "published")}
    scale = colour_scale(list(maps.values()))
    cells = []
    for name, title in (
        ("faithful", "faithful (the model's forward and input)"),
        ("published", "published pipeline (what its code explains)"),
    ):
        png, caption = map_card_png(maps[name], crop, width=crop.width, scale=scale)
        cells.append(
            f"<figure style='display:inline-block;margin:0 1em 0 0'><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'><figcaption>{html.escape(title)}; "
            f"{html.escape(caption)}</figcaption></figure>"
        )
    spearman = example.get("spearman")
    rho = "undefined" if spearman is None or spearman != spearman else f"{spearman:.3f}"
    return [
        f'<h3>The maps themselves: image {example["image"]}, "{html.escape(str(example["prompt"]))}"</h3>',
        "<div>" + "".join(cells) + "</div>",
        f"<p class='meta'>Grad-ECLIP's map of the same prompt on the same image, on one colour scale (raw values, "
        f"the bar's black mark at 0); Spearman between them {rho}. The published map is computed on the "
        "keep-size input with one head and mapped back onto the model's crop grid.</p>",
    ]


def _p2_html(results: dict) -> list[str]:
    """The ladder's and the correctness split's HTML tables, when the audit measured them."""
    parts: list[str] = []
    if "p2" in results:
        p2 = results["p2"]
        d = p2["design"]
        parts.append(
            f"<h3>P2: do the maps track the model? ({d['scenes']} scene pairs x {d['ladders']} ladders x "
            f"{d['rungs']} rungs; Holm at {d['alpha']:g}; minimum effect {d['min_effect']:g})</h3>"
        )
        for pair in ("primary", "secondary"):
            rows = p2_rows(p2, pair)
            parts.append(f"<p>{html.escape(pair)}: {html.escape(PAIR_TITLES[pair])}</p>")
            parts.append(
                _table(
                    ["method", "r [95 %]", "p tracks (Holm)", "p below minimum (Holm)", "verdict"],
                    rows,
                    [(r, 4) for r, row in enumerate(rows) if row[4] == "does not track"],
                )
            )
        parts.append(
            _table(
                ["method"]
                + [
                    f"ladder seed {ladder['seed']}: pointing trained -> competence <= {d['contrast_level']:g}"
                    for ladder in p2["ladders"]
                ],
                [[m] + contrast_cells(p2, m) for m in p2["methods"]],
            )
        )
        parts.append(
            "<p class='meta'>Reading: r is the association, within each scene and rung, between how much "
            "the model leans on the named object and how much of the map lies on it; a map that follows the "
            "model has r above 0. 'tracks' and 'does not track' are the paired test's decisions (Holm over "
            "the run's methods; docs/p2.md); 'inconclusive' means this design cannot decide.</p>"
        )
    if "correctness" in results:
        for split in _splits(results):
            at = f" at alpha = {split['alpha']:g}" if "alpha" in split else ""
            parts.append(f"<h3>P2: quality by correctness{at} ({split['right']} right, {split['wrong']} wrong)</h3>")
            rows = [
                [
                    m,
                    _fmt(p["right"].get("pointing"), 3),
                    _fmt(p["wrong"].get("pointing"), 3),
                    _estimate(p["pointing_difference"], p["pointing_difference_interval"]),
                    _fmt(p["pointing_within_shape"], 3),
                    p["verdict"],
                    _fmt(p["right"].get("ins_minus_del"), 3),
                    _fmt(p["wrong"].get("ins_minus_del"), 3),
                    _estimate(p["ins_minus_del_difference"], p["ins_minus_del_difference_interval"]),
                ]
                for m, p in split["methods"].items()
            ]
            parts.append(
                _table(
                    [
                        "method",
                        "pointing (right)",
                        "pointing (wrong)",
                        "right - wrong",
                        "within shape",
                        "verdict",
                        "ins-del (right)",
                        "ins-del (wrong)",
                        "right - wrong",
                    ],
                    rows,
                    _flagged(rows, 5),
                )
            )
            parts.append(
                "<p class='meta'>Reading: a map that follows the model should look better where the "
                "model is right than where it is wrong (a positive right - wrong, compared within shape); "
                "an interval that spans 0 does not separate the two.</p>"
            )
    return parts


def audit_page(results: dict) -> str:
    """The audit as a complete self-contained HTML page (``faithclip audit --out DIR``)."""
    from faithclip.report.page import html_page

    return html_page(
        "faithclip audit",
        audit_html(results),
        subtitle=f"{html.escape(str(results.get('model', '')))}: how far the published Grad-ECLIP "
        "pipeline departs from the model"
        + (", and principle P2" if "ladder" in results or "correctness" in results else ""),
    )


__all__ = ["audit_html", "audit_page", "contrast_reading", "format_audit", "format_correctness", "format_p2", "p2_rows"]
