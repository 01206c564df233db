"""Rendering audit results (the JSON dict is canonical): a terminal table and an HTML fragment.

``audit_html(results)`` returns a self-contained ``<section>`` the demo report can include as is;
``audit_page(results)`` the complete page ``faithclip audit --out DIR`` writes.
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
ARM_COLUMNS = (
    ("embedding_cosine_mean", "emb. cosine"),
    ("embedding_cosine_min", "min cosine"),
    ("score_change_mean_abs", "|score change|"),
    ("score_change_relative", "rel. change (median)"),
    ("flip_rate", "flips"),
    ("accuracy", "zero-shot acc."),
)
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
    if arms.get("published", {}).get("qk", "out_proj") != "out_proj":
        labels["published"] = "published (one head + keep size, raw q/k)"
    return labels


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _arm_rows(results: dict) -> list[tuple[str, list[str]]]:
    rows = [(ARM_LABELS[arm], [_fmt(values.get(key)) for key, _ in ARM_COLUMNS])
            for arm, values in results["arms"].items()]
    text = results["text"]
    if text is None:  # no text tower (a classifier), or no published text side (BLIP)
        return rows
    rows.append((f"text: last {text['layers']} blocks one-head", [_fmt(text.get(key)) for key, _ in ARM_COLUMNS]))
    return rows


def format_audit(results: dict) -> str:
    """Terminal tables of one ``audit_departure`` result (plus ladder / P2 parts when present)."""
    lines = [f"Grad-ECLIP audit: {results['model']} on {results['data']} "
             f"({results['images']} images, {results['prompts']} prompts)", ""]
    if results.get("departure_skipped"):
        return "\n".join([*lines[:1], f"  departure not measured: {results['departure_skipped']}", *_p2_lines(results)])
    header = f"{'forward':<40}" + "".join(f"{title:>21}" for _, title in ARM_COLUMNS)
    lines += [header, "-" * len(header)]
    lines += [f"{label:<40}" + "".join(f"{v:>21}" for v in values) for label, values in _arm_rows(results)]
    maps = results.get("maps", {}).get("mean", {})
    if maps:
        lines += ["", f"Grad-ECLIP maps on {results['maps']['images']} images, each cause alone and together; "
                      "AUCs scored by the ORIGINAL model on its own input:"]
        lines.append(f"  {'map':<46} {'Spearman vs faithful':>20} {'deletion AUC (lower better)':>28} "
                     f"{'insertion AUC (higher better)':>30}")
        lines += [f"  {title:<46} {_fmt(maps.get(f'spearman_{arm}_vs_faithful')):>20} "
                  f"{_fmt(maps.get(f'deletion_auc_{arm}')):>28} {_fmt(maps.get(f'insertion_auc_{arm}')):>30}"
                  for arm, title in _map_labels(results).items()]
        lines.append(f"  consistency: faithful arm vs faithclip's grad_eclip, Spearman "
                     f"{_fmt(maps.get('spearman_faithful_vs_grad_eclip'))} (expect 1)")
    return "\n".join(lines + _p2_lines(results))


def _p2_lines(results: dict) -> list[str]:
    """The ladder's and the correctness split's terminal tables, when the audit measured them."""
    lines = []
    if "ladder" in results:
        lines += ["", format_ladder(results["ladder"])]
    if "correctness" in results:
        for split in _splits(results):
            lines += ["", format_correctness(split)]
    return lines


def _interval(interval: Any, digits: int = 2) -> str:
    low, high = interval
    return f"[{_fmt(float(low), digits)}, {_fmt(float(high), digits)}]"


def _estimate(value: float, interval: Any, digits: int = 2) -> str:
    """``value [low, high]``: the form ``faithclip.cli.audit_docs --check`` reads back."""
    return f"{_fmt(float(value), digits)} {_interval(interval, digits)}"


def _splits(results: dict) -> list[dict]:
    split = results["correctness"]
    return split if isinstance(split, list) else [split]


CELL = 21  # one rung's "0.983 [0.950, 1.000]"


def format_ladder(ladder: dict) -> str:
    boot = ladder["bootstrap"]
    level = f"{100 * boot['confidence']:g} %"
    lines = [f"P2 (a) performance ladder: theta = (1-alpha) trained + alpha re-initialised (seed {ladder['seed']})",
             f"  {ladder['accuracy_images']} accuracy scenes and {ladder['pointing_images']} pointing scenes per rung; "
             f"[{level} percentile bootstrap interval, {boot['resamples']} resamples of scenes, bootstrap seed {boot['seed']}]",
             f"  {'alpha':<22} " + " ".join(f"{r['alpha']:<{CELL}g}" for r in ladder["rungs"]),
             f"  {'accuracy':<22} " + " ".join(f"{_estimate(r['accuracy'], r['accuracy_interval'], 3):<{CELL}}"
                                               for r in ladder["rungs"]),
             f"  accuracy falls monotonically: {ladder['accuracy_monotone']}",
             f"  {'pointing rate':<22} (per rung)"]
    for method in ladder["methods"]:
        lines.append(f"  {method:<22} " + " ".join(
            f"{_estimate(r['quality'][method]['pointing'], r['pointing_interval'][method]):<{CELL}}" for r in ladder["rungs"]))
    lines += [f"  {'rank correlation':<22} {'rho(acc, pointing)':<22} {'verdict (< ' + _fmt(ladder['flag_below'], 2) + ')':<16} "
              f"{'rho(acc, ins-del)':<22}"]
    for method in ladder["methods"]:
        rho = ladder["spearman"][method]
        lines.append(f"  {method:<22} {_estimate(rho['pointing'], rho['pointing_interval']):<22} {rho['verdict']:<16} "
                     f"{_estimate(rho['ins_minus_del'], rho['ins_minus_del_interval']):<22}")
    return "\n".join(line.rstrip() for line in lines)


def format_correctness(split: dict) -> str:
    at = f" at alpha = {split['alpha']:g}" if "alpha" in split else ""
    lines = [f"P2 (b) quality by correctness{at} ({split['right']} right, {split['wrong']} wrong predictions); "
             f"right - wrong with its interval, verdict against {_fmt(split.get('margin', 0.0), 2)} "
             f"(none with fewer than {split.get('min_group', 0)} images in a group)",
             f"  {'method':<22} {'pointing right':>14} {'pointing wrong':>14}  {'pointing right-wrong':<22} {'verdict':<13} "
             f"{'ins-del right':>13} {'ins-del wrong':>13}  {'ins-del right-wrong':<22}"]
    for method, parts in split["methods"].items():
        lines.append(
            f"  {method:<22} {_fmt(parts['right'].get('pointing'), 3):>14} {_fmt(parts['wrong'].get('pointing'), 3):>14}  "
            f"{_estimate(parts['pointing_difference'], parts['pointing_difference_interval']):<22} {parts['verdict']:<13} "
            f"{_fmt(parts['right'].get('ins_minus_del'), 3):>13} {_fmt(parts['wrong'].get('ins_minus_del'), 3):>13}  "
            f"{_estimate(parts['ins_minus_del_difference'], parts['ins_minus_del_difference_interval']):<22}")
    return "\n".join(line.rstrip() for line in lines)


def _table(header: list[str], rows: list[list[str]], bad_cells: Sequence[tuple[int, int]] = ()) -> str:
    from faithclip.report.page import table

    return table(header, rows, bad_cells=bad_cells)


def _flagged(rows: list[list[str]], column: int) -> list[tuple[int, int]]:
    """Cells of ``column`` whose verdict is ``flagged`` (highlighted with the page's ``bad`` class)."""
    return [(r, column) for r, row in enumerate(rows) if row[column] == "flagged"]


def audit_html(results: dict) -> str:
    """An HTML ``<section>`` with the audit's tables (escape-safe, no scripts, no external resources)."""
    parts = ["<section class='faithclip-audit'><h2>Grad-ECLIP audit</h2>",
             f"<p>{html.escape(str(results['model']))} on {html.escape(str(results['data']))}: "
             f"{results['images']} images, {results['prompts']} prompts. Each forward is compared with the "
             "original model on its standard input.</p>"]
    if results.get("command"):
        parts.append(f"<p>Reproduce: <code>{html.escape(results['command'])}</code></p>")
    if results.get("reduced"):
        parts.append(f"<p><b>{html.escape(str(results['reduced']))}</b></p>")
    if results.get("departure_skipped"):
        parts.append(f"<p>Departure not measured: {html.escape(results['departure_skipped'])}.</p>")
        return "".join(parts + _p2_html(results) + ["</section>"])
    parts.append(_table(["forward"] + [title for _, title in ARM_COLUMNS],
                        [[label] + values for label, values in _arm_rows(results)]))
    parts.append("<p class='meta'>Reading: each row is a forward the published pipeline runs; where its values "
                 "differ from the original model's, that pipeline's maps explain a different model from the one "
                 "whose score is reported.</p>")
    maps = results.get("maps", {}).get("mean", {})
    if maps:
        parts.append(f"<h3>Maps ({results['maps']['images']} images), scored by the original model</h3>")
        parts.append(_table(["map", "Spearman vs faithful", "deletion AUC (lower better)", "insertion AUC (higher better)"],
                            [[title, _fmt(maps.get(f"spearman_{arm}_vs_faithful")), _fmt(maps.get(f"deletion_auc_{arm}")),
                              _fmt(maps.get(f"insertion_auc_{arm}"))] for arm, title in _map_labels(results).items()]))
        parts.append("<p class='meta'>Reading: deletion (lower is better) and insertion (higher is better) are "
                     "scored by the original model. The published pipeline's map can score as well or better "
                     "although it explains another forward: these metrics reward any map that ranks pixels well "
                     "for the scoring model, whichever model the map came from, so a better AUC here is not "
                     "evidence of faithfulness; the departure table above is.</p>")
        parts.append(f"<p>Consistency: faithful arm vs faithclip's grad_eclip, Spearman "
                     f"{_fmt(maps.get('spearman_faithful_vs_grad_eclip'))} (expect 1).</p>")
    parts += _p2_html(results)
    parts.append("</section>")
    return "".join(parts)


def _p2_html(results: dict) -> list[str]:
    """The ladder's and the correctness split's HTML tables, when the audit measured them."""
    parts: list[str] = []
    if "ladder" in results:
        ladder = results["ladder"]
        parts.append(f"<h3>P2: performance ladder ({ladder['pointing_images']} pointing scenes per rung; "
                     f"{100 * ladder['bootstrap']['confidence']:g} % bootstrap intervals)</h3>")
        header = ["method"] + [f"alpha={r['alpha']:g} (acc {_estimate(r['accuracy'], r['accuracy_interval'])})"
                               for r in ladder["rungs"]] + ["rho(acc, pointing)", "verdict", "rho(acc, ins-del)"]
        rows = [[m] + [_estimate(r["quality"][m]["pointing"], r["pointing_interval"][m]) for r in ladder["rungs"]] +
                [_estimate(ladder["spearman"][m]["pointing"], ladder["spearman"][m]["pointing_interval"]),
                 ladder["spearman"][m]["verdict"],
                 _estimate(ladder["spearman"][m]["ins_minus_del"], ladder["spearman"][m]["ins_minus_del_interval"])]
                for m in ladder["methods"]]
        parts.append(_table(header, rows, _flagged(rows, len(header) - 2)))
        parts.append("<p class='meta'>Reading: each rung is a weaker model (its accuracy in the header); a method "
                     "whose maps follow the model should lose pointing quality with it, so its rank correlation "
                     "with accuracy is positive. The verdict is the test's decision (docs/audit.md); an interval "
                     "that spans 0 does not show a relation.</p>")
    if "correctness" in results:
        for split in _splits(results):
            at = f" at alpha = {split['alpha']:g}" if "alpha" in split else ""
            parts.append(f"<h3>P2: quality by correctness{at} ({split['right']} right, {split['wrong']} wrong)</h3>")
            rows = [[m, _fmt(p["right"].get("pointing"), 3), _fmt(p["wrong"].get("pointing"), 3),
                     _estimate(p["pointing_difference"], p["pointing_difference_interval"]), p["verdict"],
                     _fmt(p["right"].get("ins_minus_del"), 3), _fmt(p["wrong"].get("ins_minus_del"), 3),
                     _estimate(p["ins_minus_del_difference"], p["ins_minus_del_difference_interval"])]
                    for m, p in split["methods"].items()]
            parts.append(_table(["method", "pointing (right)", "pointing (wrong)", "right - wrong", "verdict",
                                 "ins-del (right)", "ins-del (wrong)", "right - wrong"], rows, _flagged(rows, 4)))
            parts.append("<p class='meta'>Reading: a map that follows the model should look better where the "
                         "model is right than where it is wrong (a positive right - wrong); an interval that spans "
                         "0 does not separate the two.</p>")
    return parts


def audit_page(results: dict) -> str:
    """The audit as a complete self-contained HTML page (``faithclip audit --out DIR`` / ``--html FILE``)."""
    from faithclip.report.page import html_page

    return html_page("faithclip audit", audit_html(results),
                     subtitle=f"{html.escape(str(results.get('model', '')))}: how far the published Grad-ECLIP "
                              "pipeline departs from the model" +
                              (", and principle P2" if "ladder" in results or "correctness" in results else ""))


__all__ = ["audit_html", "audit_page", "format_audit", "format_correctness", "format_ladder"]
