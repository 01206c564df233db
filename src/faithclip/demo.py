"""``faithclip demo``: everything faithclip checks, offline, on the shipped shapes model, in about a minute.

On a fixed set of generated multi-object scenes (seed ``DEMO_SEED``) it
1. explains each scene for the prompt of one of its objects with every image-side method in the registry;
2. verifies Grad-ECLIP == Attention-ECLIP on both towers (float32 and float64);
3. scores localisation against the exact object masks: pointing game (peak within ``tolerance`` px,
   15 px at 224 scaled to the model's input) and energy share;
4. checks principle P1 for every method, and principle P2 (performance ladder and right/wrong split)
   together with the Grad-ECLIP audit (departure of the official pipeline), unless ``audit=False``;
and writes ``report.html`` (self-contained) and ``demo.json`` (everything behind it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faithclip._version import __version__
from faithclip.audit.run import AuditSettings
from faithclip.explanation import json_bytes, write_atomic
from faithclip.numerics import same_to_rounding
from faithclip.report.page import data_uri

logger = logging.getLogger(__name__)

DEMO_SEED = 20261126
# Per-method options that keep the demo within its time budget; recorded in the report.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {"rise": {"masks": 500}}
# The audit at a REDUCED size that keeps the demo near a minute: the same code path as `faithclip audit`
# (this is `DEMO_AUDIT.command()`, documented in docs/audit.md's reduced block); its intervals are wide.
# Its P2 design is below the smallest one offered a verdict (docs/p2.md): every P2 verdict it prints is
# "inconclusive", by the rule, and the numbers beside it only show what the test measures.
DEMO_AUDIT = AuditSettings(
    scenes=40,
    map_images=4,
    deletion_steps=8,
    ladder=True,
    correctness=True,
    p2_scenes=16,
    p2_ladders=1,
    p2_rungs=4,
    ladder_deletion_steps=8,
    correctness_alphas=(0.5,),
    methods=("attention_eclip", "grad_eclip", "self_attention", "grad_cam"),
)


def _image_methods(family: str = "clip") -> list[str]:
    """Every registered image-side method that supports the model ``family``."""
    import faithclip.methods  # noqa: F401
    from faithclip.registry import METHODS

    return [spec.name for spec in METHODS if spec.image is not None and spec.supports(family)]


def run_demo(
    out_dir: str | Path,
    model: Any = None,
    scenes: int = 8,
    methods: list[str] | None = None,
    audit: bool = True,
    progress: Callable[[str], None] = logger.info,
    threads: int | None = None,
) -> dict[str, Any]:
    from faithclip.models.loading import load

    started = time.perf_counter()
    out = Path(out_dir)
    handle = model if model is not None else load()
    before = torch.get_num_threads()
    if threads is None and sum(p.numel() for p in handle.model.parameters()) < 20_000_000:
        threads = 1  # small models run several times faster on one thread than on two contended ones
    torch.set_num_threads(threads or before)
    try:
        return _run(handle, out, scenes, methods, audit, progress, started)
    finally:
        torch.set_num_threads(before)


def _run(
    handle: Any,
    out: Path,
    scenes: int,
    methods: list[str] | None,
    audit: bool,
    progress: Callable[[str], None],
    started: float,
) -> dict[str, Any]:
    from faithclip.api import explain
    from faithclip.equivalence import verify_equivalence
    from faithclip.metrics.case import pixel_map
    from faithclip.metrics.pointing import energy_share, pointing_hit
    from faithclip.registry import METHODS
    from faithclip.shapes.world import ShapesWorld

    size = handle.image_size
    tolerance = round(15 * size / 224, 1)
    world = ShapesWorld(image_size=size)
    batch = world.multi_object_set(scenes, seed=DEMO_SEED)
    items = batch.scenes()
    methods = methods or _image_methods(handle.family.name)
    timings: dict[str, float] = {}
    results: dict[str, Any] = {
        "model": handle.name,
        "version": __version__,
        "seed": DEMO_SEED,
        "scenes": [],
        "methods": {},
        "tolerance_px": tolerance,
        "options": DEMO_OPTIONS,
    }
    for name in methods:
        spec = METHODS.get(name)
        results["methods"][name] = {
            "modifies_model": spec.modifies_model,
            "modifies_input": spec.modifies_input,
            "paper": spec.paper,
            "hits": [],
            "energy": [],
        }
    overlays: dict[tuple[int, str], str] = {}
    for index, scene in enumerate(items):
        mask = torch.from_numpy(np.ascontiguousarray(scene.objects[scene.target].mask))
        record = {"caption": scene.caption, "objects": scene.captions, "scores": {}}
        text = _class_text(handle, scene)
        for name in methods:
            tick = time.perf_counter()
            explanation = explain(handle, scene.image, text, name, **DEMO_OPTIONS.get(name, {}))
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - tick
            saliency = pixel_map(explanation.map, (size, size))
            entry = results["methods"][name]
            entry["hits"].append(pointing_hit(saliency, mask, tolerance))
            entry["energy"].append(energy_share(saliency, mask))
            record["scores"][name] = {
                "score": explanation.score,
                "model_score": explanation.model_score,
                "same": explanation.model_score is None
                or same_to_rounding(explanation.score, explanation.model_score, handle.dtype),
            }
            overlays[(index, name)] = _card(scene.image, explanation)
        record["random_map"] = random_map_levels(mask, tolerance)
        results["scenes"].append(record)
        progress(f"scene {index + 1}/{len(items)}: {scene.caption}")
    for name, entry in results["methods"].items():
        entry["pointing"] = float(np.mean(entry["hits"]))
        energies = [e for e in entry["energy"] if e == e]
        entry["energy_share"] = float(np.mean(energies)) if energies else float("nan")
        entry["seconds_per_map"] = timings[name] / len(items)
    results["random_map"] = {
        key: float(np.mean([r["random_map"][key] for r in results["scenes"]])) for key in ("pointing", "energy_share")
    }
    images = [s.image for s in items[:4]]
    texts = [_class_text(handle, s) for s in items[:2]]
    rows = verify_equivalence(handle, images, texts, layers=(1, 2), dtypes=(torch.float32, torch.float64))
    results["equivalence"] = [r.as_dict() for r in rows]
    progress("equivalence verified")
    if audit:
        results.update(_principles_and_audit(handle, methods, progress))
    results["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "demo.json", json_bytes(results))
    from faithclip.report.demo_report import render_demo

    thumbnails = [_png(scene.image.resize((176, 176), 0)) for scene in items]
    write_atomic(out / "report.html", render_demo(results, methods, thumbnails, overlays).encode())
    return results


def random_map_levels(mask: torch.Tensor, tolerance: float) -> dict[str, float]:
    """What a map that knows nothing scores on this mask, the level a method must beat:

    - pointing game: a peak at a uniformly random pixel hits when it lies within ``tolerance`` px of an
      object pixel, so the expected hit is the share of pixels within ``tolerance`` of the mask;
    - energy share: a constant map puts the object's area share of its mass inside the object."""
    height, width = mask.shape
    rows, columns = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    pixels = torch.stack([rows.reshape(-1), columns.reshape(-1)], dim=1)  # (H*W, 2)
    objects = torch.nonzero(mask).to(torch.float64)  # (M, 2)
    nearest = torch.cdist(pixels, objects).min(dim=1).values  # (H*W,) distance to the closest object pixel
    return {"pointing": float((nearest <= tolerance).double().mean()), "energy_share": float(mask.double().mean())}


def _class_text(handle: Any, scene: Any) -> str:
    """The text naming the scene's target object for this model: its caption, or a classifier's label."""
    if handle.family.has_side("text"):
        return scene.caption
    from faithclip.stand_ins import class_names

    return class_names(handle)[scene.objects[scene.target].label]


def _principles_and_audit(handle: Any, methods: list[str], progress: Callable[[str], None]) -> dict[str, Any]:
    from dataclasses import replace

    from faithclip.audit.principles import check_p1
    from faithclip.audit.run import run_audit
    from faithclip.shapes.world import ShapesWorld

    size = handle.image_size
    scene = ShapesWorld(image_size=size).multi_object_set(1, seed=DEMO_SEED + 1).scene(0)
    p1 = check_p1(handle, scene.image, _class_text(handle, scene), methods, options=DEMO_OPTIONS)
    progress("P1 checked")
    from faithclip.registry import METHODS

    if not METHODS.get("grad_eclip_official").supports(handle.family.name):
        return {
            "p1": [row.as_dict() for row in p1],
            "audit_skipped": f"no published Grad-ECLIP pipeline exists for {handle.family.name} models to audit",
        }
    settings = DEMO_AUDIT
    chosen = tuple(m for m in DEMO_AUDIT.methods or () if m in methods)
    if chosen != DEMO_AUDIT.methods:
        settings = replace(DEMO_AUDIT, methods=chosen or tuple(methods[:1]))
    audit = run_audit(handle, settings)
    audit["reduced"] = (
        "reduced size, chosen for the demo's time; the documented verdicts come from "
        "`faithclip audit --ladder --correctness` (docs/audit.md)"
    )
    progress("Grad-ECLIP audit and P2 measured")
    return {"p1": [row.as_dict() for row in p1], "audit": audit}


def _card(image: Any, explanation: Any) -> tuple[str, str, list[str]]:
    """The map as a report card: raw values over the scene, colour bar, raw range; and its warnings."""
    from faithclip.report.figures import map_card_png

    png, span = map_card_png(explanation.map, image, 176)
    return data_uri(png), span, list(explanation.warnings)


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
