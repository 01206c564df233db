"""The page of ``faithclip demo``: localisation, the equivalence, P1 and the audit, and every map card, rendered
from the demo's record with the images ``faithclip.demo`` made."""

from __future__ import annotations

import json
from typing import Any

from faithclip.report.audit_report import audit_html
from faithclip.report.page import data_uri, esc, html_page, table
from faithclip.report.verify_report import declaration, equivalence_table, p1_table


def render_demo(
    results: dict[str, Any], methods: list[str], thumbnails: list[bytes], overlays: dict[tuple[int, str], tuple]
) -> str:
    """The demo's page from its record (``demo.json``), the scenes' thumbnails (PNG, one per scene) and each
    (scene, method)'s map card (``(data URI, raw range, warnings)``), all made by ``faithclip.demo``."""
    parts = [
        f"<p>Model <b>{esc(results['model'])}</b>, faithclip {esc(results['version'])}, {len(thumbnails)} fixed "
        f"scenes (seed {results['seed']}), {results['seconds']:.1f} s. Method options: "
        f"<code>{esc(json.dumps(results['options']))}</code>.</p>"
    ]
    parts += localisation_section(results, methods)
    parts += checks_section(results)
    parts += maps_section(results, methods, thumbnails, overlays)
    return html_page("faithclip demo", "".join(parts))


def localisation_section(results: dict[str, Any], methods: list[str]) -> list[str]:
    """Pointing game and energy share per method (best first), beside the random map's expected values."""
    parts = ["<h2>Localisation against exact object masks</h2>"]
    parts.append(
        f"<p>Pointing game: the share of scenes where the map's peak lies within {results['tolerance_px']} px "
        "of the named object (15 px at 224 px, scaled). Energy share: the share of the map's positive mass "
        "inside the object. Both: higher is better (↑); time: lower is better (↓).</p>"
    )
    rows = []
    for name in sorted(
        methods, key=lambda m: (-results["methods"][m]["pointing"], -results["methods"][m]["energy_share"])
    ):
        entry = results["methods"][name]
        rows.append(
            [
                name,
                f"{entry['pointing']:.2f}",
                f"{entry['energy_share']:.2f}",
                f"{entry['seconds_per_map'] * 1000:.0f}",
                declaration(entry),
            ]
        )
    chance = results.get("random_map")
    if chance:
        rows.append(
            [
                "random map (expected)",
                f"{chance['pointing']:.2f}",
                f"{chance['energy_share']:.2f}",
                "",
                "a map that knows nothing: a uniformly random peak; a constant map",
            ]
        )
    scenes = len(results["scenes"])
    parts.append(
        table(
            ["method", "pointing game ↑", "energy share ↑", "ms per map ↓", "P1 declaration"], rows, text_columns=(0, 4)
        )
    )
    parts.append(
        f"<p class='meta'>Reading: a method locates the named object only where it beats the random-map "
        f"row. Each value is a mean over {scenes} scene(s), so one scene moves the pointing game by "
        f"{1 / max(scenes, 1):.2f}; with few scenes, ties and small gaps say nothing. Localisation is not "
        "faithfulness: a method that modifies the model (see P1) can point well while explaining a "
        "different model.</p>"
    )
    return parts


def checks_section(results: dict[str, Any]) -> list[str]:
    """The equivalence table, P1 and the Grad-ECLIP audit (or why it did not run)."""
    parts = ["<h2>Grad-ECLIP == Attention-ECLIP</h2>" + equivalence_table(results["equivalence"])]
    if "p1" in results:
        parts.append("<h2>Principle P1: is the explained score the model's own?</h2>" + p1_table(results["p1"]))
    if "audit_skipped" in results:
        parts.append(f"<h2>Grad-ECLIP audit</h2><p>Not run: {esc(results['audit_skipped'])}.</p>")
    if "audit" in results:
        parts.append(
            "<p>Deletion AUC (lower is better) is the area under the model's score as the map's top "
            "pixels are removed; the score is a cosine, which falls below zero once the evidence is "
            "gone, so an AUC can be negative, and lower still means better.</p>"
        )
        parts.append(audit_html(results["audit"]))
    return parts


def maps_section(
    results: dict[str, Any], methods: list[str], thumbnails: list[bytes], overlays: dict[tuple[int, str], tuple]
) -> list[str]:
    """Per scene, its thumbnail and each method's raw map card with the explained and the model's score."""
    parts = [
        "<h2>Maps</h2><p>Each method's RAW map over the scene on its own colour scale: non-negative maps "
        "run from 0 (transparent) to their largest value, signed maps are centred on 0 (blue below, red "
        "above); the strip on the right is the scale, with a black mark at 0, and its ends are written "
        "under the card. Methods' units differ, so compare a card's pattern, not its colour, with "
        "another method's. Then the score the method explained, and the model's own score where they "
        "differ (principle P1). A warning is marked in red.</p>"
    ]
    for index, (thumbnail, record) in enumerate(zip(thumbnails, results["scenes"])):
        cards = [
            f"<figure class='card'><img alt='scene {index}' src='{data_uri(thumbnail)}'>"
            f"<figcaption><b>scene {index + 1}</b><br>objects: {esc(', '.join(record['objects']))}</figcaption></figure>"
        ]
        cards += [map_card(name, record["scores"][name], *overlays[(index, name)]) for name in methods]
        parts.append(
            f'<h3>Scene {index + 1}: explained "{esc(record["caption"])}"</h3>'
            f"<div class='cards' style='--card:190px'>{''.join(cards)}</div>"
        )
    return parts


def map_card(name: str, score: dict[str, Any], uri: str, span: str, notes: list[str]) -> str:
    """One method's card: the map, its raw range, the explained score, the model's where they differ (P1)."""
    gap = not score["same"]  # P1: the documented rounding bound of the model's dtype (docs/testing.md)
    own = f" <span class='bad'>(model {score['model_score']:+.3f})</span>" if gap else ""
    warn = "".join(f"<br><span class='bad'>{esc(n)}</span>" for n in notes)
    return (
        f"<figure class='card'><img alt='{esc(name)}' src='{uri}'><figcaption><b>{esc(name)}</b>"
        f"<br>{esc(span)}<br>score {score['score']:+.3f}{own}{warn}</figcaption></figure>"
    )


__all__ = ["render_demo"]
