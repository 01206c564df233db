"""Models whose mechanism is known by construction: verify it by intervention, then score explanations by it.

A model trained by ``faithclip train-shapes --mechanism M`` (``faithclip.shapes.world``, "Planted
mechanisms") can only have learned its captions from what M leaves informative. This module checks that it
did, by intervention on held-out scenes (``ShapesWorld.probe_layout``), and then asks of every explanation
method whether its map lies where the model's interventional effect lies.

**Prediction.** The arg-max over the world's 30 prompts of the family's default score (CLIP: cosine; the
ViT classifier: the class logit), on the very inputs whose maps are scored.

**Regions** per probe scene: ``effect`` is the region whose removal should change the prediction, ``decoy``
the one whose removal should not.

=============  =====================================  ==========================================
mechanism      effect                                 decoy
=============  =====================================  ==========================================
cue            the cue square                         the object (of another class than the cue)
ignore-shape   the nameable object                    the ring beside it
colour         the object whose colour the predicted  the other object (of another colour)
objects        prompt names                           (scenes where neither object has the
               (scenes where neither has it: skipped) predicted colour are counted as unmatched)
=============  =====================================  ==========================================

**Verification.** ``flip(region)`` = the share of scenes whose prediction changes when the region is
erased (background restored). On the two-object probes (colour, objects, ignore-shape), whose objects
always differ in colour, the prediction compared is the predicted prompt's COLOUR: it says which object
the prompt names, and a model that does not (yet) read shapes -- a colour model has no reason to rank "a
red circle" above "a red square" -- holds a near-tie among the prompts of one colour that any pixel may
flip. Whether the model reads the shape is measured instead by ``shape``: the share of scenes whose
predicted prompt names the effect object's drawn shape (chance 1/5). With Wilson 95 % intervals, a model HAS its mechanism when

- ``flip(effect)``'s lower bound >= ``EFFECT_FLOOR`` (0.8) and ``flip(decoy)``'s upper bound <=
  ``DECOY_CEILING`` (0.2), and, on the colour/objects probes, ``matched``'s lower bound >= 0.8;
- ``colour``: ``shape``'s upper bound <= ``SHAPE_CEILING`` (0.4: chance is 0.2, the shape is not read);
  ``objects``: its lower bound >= 0.8 (it is).

**Agreement score** (per scene whose own interventions agree with the mechanism: the effect flips, the
decoy does not): the map of the predicted prompt, ``share`` = its positive mass on the effect region
(``faithclip.audit.p2.mass_share``: patch-coverage weighted; a map with no positive mass counts as
uniform). 1 = all of the map's positive mass where the model's effect is; a uniform map scores the
region's area share. Per method and mechanism, the mean over scenes and models with a two-level
bootstrap 95 % interval (models, then scenes within each model). ``random`` is a map of uniform noise.

``python -m faithclip.audit.mechanisms DIR [DIR ...]`` prints both tables (docs/p2.md, "Planted
mechanisms").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from faithclip.audit.bootstrap import wilson_interval

logger = logging.getLogger(__name__)

EFFECT_FLOOR = 0.8
DECOY_CEILING = 0.2
SHAPE_CEILING = 0.4
DEFAULT_METHODS = ("attention_eclip", "grad_eclip", "grad_cam", "self_attention", "rollout", "occlusion")
RANDOM = "random"
# Sample seeds of the probe scenes: never drawn in training (seeds 0, 1, ... one per step), nor by the
# held-out figures (1e12.., 4e12..).
PROBE_SEED = 7 * 10**12


# ---- statistics -------------------------------------------------------------------------------------
def rate(flags: np.ndarray) -> dict[str, float]:
    """Share of true ``flags`` with its Wilson 95 % interval and n."""
    flags = np.asarray(flags, dtype=bool)
    low, high = wilson_interval(int(flags.sum()), len(flags))
    return {"rate": float(flags.mean()) if len(flags) else math.nan, "low": low, "high": high, "n": int(len(flags))}


def two_level_interval(
    groups: Sequence[np.ndarray], resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Mean of the group means, with a bootstrap interval that resamples groups (models), then the values
    (scenes) within each drawn group. Empty groups are dropped."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "models": 0, "scenes": 0}
    generator = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        drawn = generator.integers(0, len(groups), size=len(groups))
        means[r] = np.mean(
            [groups[g][generator.integers(0, len(groups[g]), size=len(groups[g]))].mean() for g in drawn]
        )
    tail = (1 - confidence) / 2
    return {
        "mean": float(np.mean([g.mean() for g in groups])),
        "low": float(np.quantile(means, tail)),
        "high": float(np.quantile(means, 1 - tail)),
        "models": len(groups),
        "scenes": int(sum(len(g) for g in groups)),
    }


def has_mechanism(mechanism: str, flips: dict[str, dict[str, float]]) -> bool:
    """The rule of the module docstring on ``verify``'s rates."""
    ok = flips["effect"]["low"] >= EFFECT_FLOOR and flips["decoy"]["high"] <= DECOY_CEILING
    if mechanism in ("colour", "objects"):
        ok = ok and flips["matched"]["low"] >= EFFECT_FLOOR
        if mechanism == "colour":
            ok = ok and flips["shape"]["high"] <= SHAPE_CEILING
        else:
            ok = ok and flips["shape"]["low"] >= EFFECT_FLOOR
    return bool(ok)


# ---- the probe scenes and their interventions --------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """Probe scenes of one mechanism and every intervention on them, all rendered."""

    mechanism: str
    scenes: Any  # SceneBatch
    variants: dict[str, Any]  # name -> SceneBatch: remove-0, and remove-1 or remove-cue


def probe(mechanism: str, n: int, seed: int = PROBE_SEED, image_size: int = 64) -> Probe:
    """``n`` probe scenes of ``mechanism`` and their edited copies (``ShapesWorld.probe_layout``)."""
    from faithclip.shapes.world import ShapesWorld

    world = ShapesWorld(image_size, seed=0, mechanism=mechanism)
    layout = world.probe_layout(n, seed=seed)
    variants = {"remove-0": world.render(world.without(layout, 0))}
    if mechanism == "cue":
        variants["remove-cue"] = world.render(world.without(layout, cue=True))
    else:
        variants["remove-1"] = world.render(world.without(layout, 1))
    return Probe(mechanism, world.render(layout), variants)


def effect_slots(mechanism: str, scenes: Any, predicted: np.ndarray) -> np.ndarray:
    """Per scene, the object slot of the effect region (-1: the cue; -2: unmatched, colour/objects only)."""
    from faithclip.shapes.world import SHAPES

    n = len(predicted)
    if mechanism == "cue":
        return np.full(n, -1)
    if mechanism == "ignore-shape":
        return np.zeros(n, dtype=np.int64)
    colours = scenes.drawn_labels[:, :2] // len(SHAPES)  # (n, 2)
    match = colours == (predicted // len(SHAPES))[:, None]
    return np.where(match[:, 0], 0, np.where(match[:, 1], 1, -2))


def region_masks(probe_set: Probe, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Effect and decoy masks (n, H, W) per scene; all-False where the scene is unmatched."""
    scenes = probe_set.scenes
    n = len(slots)
    rows = np.arange(n)
    if probe_set.mechanism == "cue":
        return scenes.cue_masks.copy(), scenes.masks[:, 0].copy()
    effect = np.zeros(scenes.masks.shape[:1] + scenes.masks.shape[2:], dtype=bool)
    decoy = np.zeros_like(effect)
    valid = slots >= 0
    effect[valid] = scenes.masks[rows[valid], slots[valid]]
    decoy[valid] = scenes.masks[rows[valid], 1 - slots[valid]]
    return effect, decoy


# ---- the model ---------------------------------------------------------------------------------------
def _pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(image), mode="RGB") for image in images]


@torch.no_grad()
def predict(handle: Any, images: np.ndarray, prompts: Sequence[str], chunk: int = 128) -> np.ndarray:
    """Arg-max prompt per image, (N,), with the family's default score."""
    from faithclip.audit.departure import default_scores

    text = handle.encode_text(handle.tokens(list(prompts)))
    out = []
    for start in range(0, len(images), chunk):
        pixels = handle.pixels(_pil(images[start : start + chunk]))
        out.append(default_scores(handle, handle.encode_image(pixels), text).argmax(1).cpu().numpy())
    return np.concatenate(out)


def verify(handle: Any, probe_set: Probe) -> dict[str, Any]:
    """Flip rates of the module docstring on ``probe_set``, per scene flags and the verdict."""
    from faithclip.shapes.world import SHAPES

    scenes, mechanism = probe_set.scenes, probe_set.mechanism
    prompts = scenes.prompts
    predicted = predict(handle, scenes.images, prompts)
    after = {name: predict(handle, batch.images, prompts) for name, batch in probe_set.variants.items()}
    by_colour = mechanism != "cue"  # two objects of different colours: compare predicted colours (docstring)
    level = (lambda labels: labels // len(SHAPES)) if by_colour else (lambda labels: labels)  # noqa: E731
    flipped = {name: level(values) != level(predicted) for name, values in after.items()}
    slots = effect_slots(mechanism, scenes, predicted)
    rows = np.arange(len(slots))
    if mechanism == "cue":
        effect, decoy, matched = flipped["remove-cue"], flipped["remove-0"], np.ones(len(slots), dtype=bool)
    else:
        removed = np.stack([flipped["remove-0"], flipped["remove-1"]], axis=1)  # (n, 2)
        matched = slots >= 0
        safe = np.maximum(slots, 0)
        effect, decoy = removed[rows, safe], removed[rows, 1 - safe]
    flips = {"effect": rate(effect[matched]), "decoy": rate(decoy[matched]), "matched": rate(matched)}
    if by_colour:
        drawn_shape = scenes.drawn_labels[rows, safe] % len(SHAPES)
        flips["shape"] = rate((predicted % len(SHAPES) == drawn_shape)[matched])
    if mechanism == "cue":
        flips["reads_cue"] = rate(predicted == scenes.cue_labels)
    agrees = matched & effect & ~decoy
    return {
        "mechanism": mechanism,
        "flips": flips,
        "has_mechanism": has_mechanism(mechanism, flips),
        "predicted": predicted,
        "slots": slots,
        "agrees": agrees,
    }


# ---- the maps ----------------------------------------------------------------------------------------
def method_map(
    handle: Any, method: str, image: Any, pixels: torch.Tensor, prompt: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The method's map (grid or pixel resolution) of ``prompt`` on one image; ``random``: uniform noise."""
    from faithclip.audit.measures import crop_grid_map
    from faithclip.methods.context import Context
    from faithclip.registry import METHODS

    ctx = Context(
        handle=handle,
        side="image",
        pixels=pixels,
        text=handle.tokens([prompt]),
        target=handle.family.default_target(),
        originals=[image],
    )
    if method == RANDOM:
        return torch.rand(ctx.grid, generator=generator, dtype=torch.float64)
    spec = METHODS.get(method)
    extra = {"original": image} if "original" in spec.defaults else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_map = spec.image(ctx, **extra).maps[0, 0].detach().double()
    if tuple(patch_map.shape) != ctx.grid and tuple(patch_map.shape) != tuple(pixels.shape[-2:]):
        patch_map = crop_grid_map(patch_map, image.size, handle.preprocess, ctx.grid)
    return patch_map


def agreement(patch_map: torch.Tensor, effect: np.ndarray) -> float:
    """The map's positive-mass share on the effect region (``p2.mass_share``)."""
    from faithclip.audit.p2 import mass_share

    return mass_share(patch_map, effect)


def score_methods(
    handle: Any, probe_set: Probe, verified: dict[str, Any], methods: Sequence[str], scenes: int, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Per method, on each of the first ``scenes`` agreeing probe scenes (``verified['agrees']``): the map's
    positive-mass share on the effect region (``effect``, the agreement score) and on the decoy (``decoy``)."""
    effect, decoy = region_masks(probe_set, verified["slots"])
    chosen = np.flatnonzero(verified["agrees"])[:scenes]
    images = _pil(probe_set.scenes.images[chosen])
    generator = torch.Generator().manual_seed(seed)
    out = {m: {"effect": np.empty(len(chosen)), "decoy": np.empty(len(chosen))} for m in methods}
    for i, index in enumerate(chosen):
        pixels = handle.pixels([images[i]])
        prompt = probe_set.scenes.prompts[verified["predicted"][index]]
        for m in methods:
            patch_map = method_map(handle, m, images[i], pixels, prompt, generator)
            out[m]["effect"][i] = agreement(patch_map, effect[index])
            out[m]["decoy"][i] = agreement(patch_map, decoy[index])
    return out


# ---- a run over saved models -------------------------------------------------------------------------
def model_record(directory: Path) -> dict[str, Any]:
    """Family, mechanism and seed of a saved shapes model (its config.json and TRAINING.json)."""
    config = json.loads((directory / "config.json").read_text())
    training = json.loads((directory / "TRAINING.json").read_text())
    family = {"clip": "clip", "vit": "vit", "siglip": "siglip"}.get(config.get("model_type"), config.get("model_type"))
    return {
        "path": str(directory),
        "family": family,
        "mechanism": training.get("mechanism", "objects"),
        "seed": training.get("seed"),
        # train_clip keeps steps and minutes under "metrics"; the other trainers at the top level
        "steps": training.get("steps", training.get("metrics", {}).get("steps")),
        "minutes": training.get("minutes", training.get("metrics", {}).get("minutes")),
    }


def run(
    directories: Sequence[str | Path],
    *,
    verify_scenes: int = 200,
    map_scenes: int = 32,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = PROBE_SEED,
    controls: Sequence[str | Path] = (),
    progress: Any = None,
) -> dict[str, Any]:
    """Verify every model in ``directories`` on its own mechanism's probe scenes (and every model in
    ``controls`` on every mechanism's), then score ``methods`` (plus ``random``) on the verified models."""
    from faithclip.models.loading import load

    started = time.perf_counter()
    methods = [*methods, RANDOM] if RANDOM not in methods else list(methods)
    probes: dict[str, Probe] = {}

    def probe_of(mechanism: str) -> Probe:
        if mechanism not in probes:
            probes[mechanism] = probe(mechanism, verify_scenes, seed)
        return probes[mechanism]

    models, per_model_scores = [], {}
    for directory in directories:
        record = model_record(Path(directory))
        handle = load(str(directory))
        tick = time.perf_counter()
        checked = verify(handle, probe_of(record["mechanism"]))
        record.update(
            flips=checked["flips"], has_mechanism=checked["has_mechanism"], agreeing_scenes=int(checked["agrees"].sum())
        )
        if checked["has_mechanism"] and map_scenes > 0:
            scores = score_methods(handle, probe_of(record["mechanism"]), checked, methods, map_scenes)
            per_model_scores[str(directory)] = scores
            record["scores"] = {
                m: {k: float(v.mean()) if len(v) else math.nan for k, v in parts.items()} for m, parts in scores.items()
            }
        record["seconds"] = round(time.perf_counter() - tick, 1)
        models.append(record)
        if progress:
            progress(
                f"{record['family']} {record['mechanism']} seed {record['seed']}: "
                f"{'has' if checked['has_mechanism'] else 'LACKS'} its mechanism ({record['seconds']} s)"
            )
    control_rows = []
    for directory in controls:
        record = model_record(Path(directory))
        handle = load(str(directory))
        for mechanism in ("objects", "colour", "cue", "ignore-shape"):
            checked = verify(handle, probe_of(mechanism))
            control_rows.append(
                {**record, "probe": mechanism, "flips": checked["flips"], "has_mechanism": checked["has_mechanism"]}
            )
    table = {}
    for family in sorted({m["family"] for m in models}):
        for mechanism in sorted({m["mechanism"] for m in models if m["family"] == family}):
            group = [m for m in models if m["family"] == family and m["mechanism"] == mechanism]
            kept = [per_model_scores[m["path"]] for m in group if m["path"] in per_model_scores]
            table[f"{family}/{mechanism}"] = {
                "models": len(group),
                "verified": sum(m["has_mechanism"] for m in group),
                "methods": {meth: two_level_interval([k[meth]["effect"] for k in kept]) for meth in methods},
                "decoy": {meth: two_level_interval([k[meth]["decoy"] for k in kept]) for meth in methods},
            }
    return {
        "design": {
            "verify_scenes": verify_scenes,
            "map_scenes": map_scenes,
            "probe_seed": seed,
            "effect_floor": EFFECT_FLOOR,
            "decoy_ceiling": DECOY_CEILING,
            "methods": methods,
        },
        "models": models,
        "controls": control_rows,
        "table": table,
        "seconds": round(time.perf_counter() - started, 1),
    }


# ---- rendering -------------------------------------------------------------------------------------
def _rate_text(r: dict[str, float]) -> str:
    return f"{r['rate']:.2f} [{r['low']:.2f}, {r['high']:.2f}]" if r["n"] else "n/a"


def verification_markdown(result: dict[str, Any]) -> str:
    rows = [
        "| family | mechanism | seed | steps | flip(effect) | flip(decoy) | shape | matched | has it |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        f = m["flips"]
        rows.append(
            f"| {m['family']} | {m['mechanism']} | {m['seed']} | {m['steps']} | {_rate_text(f['effect'])} | "
            f"{_rate_text(f['decoy'])} | {_rate_text(f['shape']) if 'shape' in f else '-'} | "
            f"{_rate_text(f['matched'])} | {'yes' if m['has_mechanism'] else 'NO'} |"
        )
    for c in result["controls"]:
        f = c["flips"]
        rows.append(
            f"| {c['family']} (control: {c['mechanism']}) | probe: {c['probe']} | {c['seed']} | {c['steps']} | "
            f"{_rate_text(f['effect'])} | {_rate_text(f['decoy'])} | "
            f"{_rate_text(f['shape']) if 'shape' in f else '-'} | {_rate_text(f['matched'])} | "
            f"{'yes' if c['has_mechanism'] else 'no'} |"
        )
    return "\n".join(rows)


def scores_markdown(result: dict[str, Any], part: str = "methods") -> str:
    """The methods x (family/mechanism) table of the effect share (``part="methods"``) or decoy share."""
    keys = list(result["table"])
    methods = result["design"]["methods"]
    rows = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for meth in methods:
        cells = []
        for key in keys:
            s = result["table"][key][part][meth]
            cells.append("n/a" if not s["models"] else f"{s['mean']:.2f} [{s['low']:.2f}, {s['high']:.2f}]")
        rows.append(f"| {meth} | " + " | ".join(cells) + " |")
    counts = [
        f"{k}: {v['verified']}/{v['models']} models have the mechanism, "
        f"{v['methods'][methods[0]]['scenes']} scenes scored"
        for k, v in result["table"].items()
    ]
    return "\n".join(rows) + "\n\n" + "; ".join(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m faithclip.audit.mechanisms",
        description="Verify planted mechanisms by intervention and score explanation methods by agreement with "
        "each model's interventional effect (docs/p2.md, 'Planted mechanisms').",
    )
    parser.add_argument("models", nargs="+", help="directories saved by `faithclip train-shapes --mechanism ...`")
    parser.add_argument(
        "--control",
        action="append",
        default=[],
        help="a model to run on every mechanism's probe scenes, as a control (repeatable)",
    )
    parser.add_argument("--verify-scenes", type=int, default=200, help="probe scenes per model (default: %(default)s)")
    parser.add_argument(
        "--map-scenes",
        type=int,
        default=32,
        help="agreeing scenes per model whose maps are scored (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated methods (default: %(default)s); random is always added",
    )
    parser.add_argument("--json", default=None, help="also write the full result here")
    args = parser.parse_args(argv)
    if args.verify_scenes < 1 or args.map_scenes < 0:
        parser.exit(2, "error: --verify-scenes must be >= 1 and --map-scenes >= 0\n")
    for directory in [*args.models, *args.control]:
        if not (Path(directory) / "TRAINING.json").is_file() or not (Path(directory) / "config.json").is_file():
            parser.exit(2, f"error: {directory} is not a saved shapes model (no config.json or TRAINING.json)\n")
    from faithclip.registry import METHODS

    methods = [m for m in args.methods.split(",") if m and m != RANDOM]
    unknown = [m for m in methods if m not in METHODS.names()]
    if unknown:
        parser.exit(2, f"error: unknown method(s) {', '.join(unknown)}; see `faithclip methods`\n")
    if args.json:  # checked before any work; written atomically at the end
        from faithclip.files import REFUSED_KINDS, OutputError, output_kind, refusal

        try:
            kind = output_kind(args.json)
        except OutputError as error:
            parser.exit(2, f"error: --json: {error}\n")
        if kind in REFUSED_KINDS:
            parser.exit(2, f"error: --json {refusal(args.json, kind)}\n")
        if not Path(args.json).expanduser().parent.is_dir():
            parser.exit(2, f"error: --json: the directory of {args.json} does not exist\n")
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run(
            args.models,
            verify_scenes=args.verify_scenes,
            map_scenes=args.map_scenes,
            methods=methods,
            controls=args.control,
            progress=logger.info,
        )
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(
        f"Verification ({args.verify_scenes} probe scenes per model; Wilson 95 %):\n\n"
        + verification_markdown(result)
        + "\n\nAgreement with the interventional effect "
        f"(positive-mass share on the effect region; up to {args.map_scenes} agreeing scenes per model; "
        "two-level bootstrap 95 %):\n\n" + scores_markdown(result) + "\n\nShare on the decoy (the region "
        "whose removal does not change the prediction):\n\n"
        + scores_markdown(result, "decoy")
        + f"\n\n{result['seconds']} s\n"
    )
    if args.json:
        from faithclip.files import OutputError, write_atomic

        try:
            write_atomic(Path(args.json).expanduser(), (json.dumps(result, indent=2) + "\n").encode())
        except OutputError as error:
            sys.stderr.write(f"error: {error}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
