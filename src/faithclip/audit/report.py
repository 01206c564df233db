"""Rendering audit results (the JSON dict is canonical): a terminal table and an HTML fragment.

``audit_html(results)`` returns a self-contained ``<section>`` the demo report can include as is.
"""

from __future__ import annotations

import html
import math
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
    rows.append((f"text: last {text['layers']} blocks one-head", [_fmt(text.get(key)) for key, _ in ARM_COLUMNS]))
    return rows


def format_audit(results: dict) -> str:
    """Terminal tables of one ``audit_departure`` result (plus ladder / P2 parts when present)."""
    lines = [f"Grad-ECLIP audit: {results['model']} on {results['data']} "
             f"({results['images']} images, {results['prompts']} prompts)", ""]
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
                  for arm, title in MAP_ARM_LABELS.items()]
        lines.append(f"  consistency: faithful arm vs faithclip's grad_eclip, Spearman "
                     f"{_fmt(maps.get('spearman_faithful_vs_grad_eclip'))} (expect 1)")
    if "ladder" in results:
        lines += ["", format_ladder(results["ladder"])]
    if "correctness" in results:
        lines += ["", format_correctness(results["correctness"])]
    return "\n".join(lines)


def format_ladder(ladder: dict) -> str:
    lines = ["P2 (a) performance ladder: theta = (1-alpha) trained + alpha re-initialised",
             "  alpha:    " + " ".join(f"{r['alpha']:>7g}" for r in ladder["rungs"]),
             "  accuracy: " + " ".join(f"{r['accuracy']:>7.3f}" for r in ladder["rungs"]),
             f"  accuracy falls monotonically: {ladder['accuracy_monotone']}",
             f"  {'method':<22} {'pointing per rung':<44} {'rho(acc,pointing)':>18} {'rho(acc,ins-del)':>17}  flag"]
    for method in ladder["methods"]:
        pointing = " ".join(f"{r['quality'][method]['pointing']:.2f}" for r in ladder["rungs"])
        rho = ladder["spearman"][method]
        flag = "FLAG: quality does not fall with accuracy" if rho["flagged"] else ""
        lines.append(f"  {method:<22} {pointing:<44} {_fmt(rho['pointing'], 3):>18} {_fmt(rho['ins_minus_del'], 3):>17}  {flag}")
    return "\n".join(lines)


def format_correctness(split: dict) -> str:
    lines = [f"P2 (b) quality by correctness ({split['right']} right, {split['wrong']} wrong predictions)",
             f"  {'method':<22} {'pointing right':>15} {'pointing wrong':>15} {'ins-del right':>14} {'ins-del wrong':>14}"]
    for method, parts in split["methods"].items():
        lines.append(f"  {method:<22} {_fmt(parts['right'].get('pointing'), 3):>15} {_fmt(parts['wrong'].get('pointing'), 3):>15} "
                     f"{_fmt(parts['right'].get('ins_minus_del'), 4):>14} {_fmt(parts['wrong'].get('ins_minus_del'), 4):>14}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='faithclip-audit'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def audit_html(results: dict) -> str:
    """An HTML ``<section>`` with the audit's tables (escape-safe, no scripts, no external resources)."""
    parts = [f"<section class='faithclip-audit'><h2>Grad-ECLIP audit</h2>",
             f"<p>{html.escape(str(results['model']))} on {html.escape(str(results['data']))}: "
             f"{results['images']} images, {results['prompts']} prompts. Each forward is compared with the "
             "original model on its standard input.</p>"]
    parts.append(_table(["forward"] + [title for _, title in ARM_COLUMNS],
                        [[label] + values for label, values in _arm_rows(results)]))
    maps = results.get("maps", {}).get("mean", {})
    if maps:
        parts.append(f"<h3>Maps ({results['maps']['images']} images), scored by the original model</h3>")
        parts.append(_table(["map", "Spearman vs faithful", "deletion AUC (lower better)", "insertion AUC (higher better)"],
                            [[title, _fmt(maps.get(f"spearman_{arm}_vs_faithful")), _fmt(maps.get(f"deletion_auc_{arm}")),
                              _fmt(maps.get(f"insertion_auc_{arm}"))] for arm, title in MAP_ARM_LABELS.items()]))
        parts.append(f"<p>Consistency: faithful arm vs faithclip's grad_eclip, Spearman "
                     f"{_fmt(maps.get('spearman_faithful_vs_grad_eclip'))} (expect 1).</p>")
    if "ladder" in results:
        ladder = results["ladder"]
        parts.append("<h3>P2: performance ladder</h3>")
        header = ["method"] + [f"alpha={r['alpha']:g} (acc {r['accuracy']:.2f})" for r in ladder["rungs"]] + \
            ["rho(acc, pointing)", "rho(acc, ins-del)", "flag"]
        rows = [[m] + [f"{r['quality'][m]['pointing']:.2f}" for r in ladder["rungs"]] +
                [_fmt(ladder["spearman"][m]["pointing"], 3), _fmt(ladder["spearman"][m]["ins_minus_del"], 3),
                 "does not track accuracy" if ladder["spearman"][m]["flagged"] else ""]
                for m in ladder["methods"]]
        parts.append(_table(header, rows))
    if "correctness" in results:
        split = results["correctness"]
        parts.append(f"<h3>P2: quality by correctness ({split['right']} right, {split['wrong']} wrong)</h3>")
        parts.append(_table(["method", "pointing (right)", "pointing (wrong)", "ins-del (right)", "ins-del (wrong)"],
                            [[m, _fmt(p["right"].get("pointing"), 3), _fmt(p["wrong"].get("pointing"), 3),
                              _fmt(p["right"].get("ins_minus_del")), _fmt(p["wrong"].get("ins_minus_del"))]
                             for m, p in split["methods"].items()]))
    parts.append("</section>")
    return "".join(parts)


__all__ = ["format_audit", "format_ladder", "format_correctness", "audit_html"]
