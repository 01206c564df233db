"""P2 -- does an explanation track the model it is handed? ("Debunking Grad-ECLIP", arXiv 2605.12952)

**Design (paired).** S multi-object shapes scenes, each with a copy in which the named object is erased
(``ShapesWorld.counterfactual_pairs(kind="remove")``), rendered at the model's input size. L ladders (re-
initialisation seeds); ladder l moves every weight toward a re-initialised copy,
``theta(alpha) = (1 - alpha) theta_trained + alpha theta_init(l)`` (``faithclip.audit.ladder.degrade``; the
copy is seeded by the ladder seed itself, ``reinit="seed"``, or by a seed spawned from it, ``"spawned"``, which
no training seed meets: the shipped shapes models were built after seed 0, and ladder 0 of ``"seed"`` moves them
toward their own initial weights).
Its rungs are dense where the model still works: V equally spaced alphas from 0 to the first alpha of a
scan (step ``scan_step``) at which the model's competence ON THESE SCENES has fallen to chance
(``<= chance + chance_margin``); later rungs are dropped. Every rung sees the same scenes.

**Per scene and rung** (the very inputs whose maps are scored), with the family's default score:
- ``effect``: the model's own interventional effect of the named object,
  score(named prompt | scene) - score(named prompt | scene without the named object);
- ``reliance`` (the faithfulness target): the model's own share of the named object among the scene's objects.
  Each object in turn is erased (its pixels set to the scene's background) and the named prompt's score drop
  d_k is spread over the object's pixels: the model's object-erasure map, occlusion with the objects as segments
  (``RELIANCE_OPTIONS``). ``reliance`` is that map's ``share`` (below) of the named object, by the same code as a
  method's map (pooled to the patch grid, ``mass_share``). The named object's d_k is ``effect`` (where no other
  object overlaps it);
- ``margin``: score of the named prompt minus the best prompt of a class absent from the scene;
  ``competent``: margin > 0 (the named object ranked above every absent class);
- per method, ``share``: the map's positive mass on the named object
  (patch-coverage weighted; a map with no positive mass counts as uniform), and ``pointing``
  (plausibility): the map's arg-max inside the named object's mask.

**Estimand.** r = the average scene's within-scene, within-rung association of the map with the model
(``p2stats``), on the ``association`` scale: by default each quantity is first replaced by its rank among the
scenes at the same ladder and rung (``"ranks"``), so that a map whose share is ANY increasing function of the
model's reliance gets r = 1; ``"linear"`` keeps the raw values, which measure linear association only (a
faithful map whose share saturates gets r < 0 and ``does not track`` on it: ``tests/unit/test_p2_stats.py``).
Then per ladder, scene and rung effects are removed (``y = beta x + scene + rung + noise``), and
each scene's correlation of the residuals over its ladders and rungs is averaged over scenes, each scene
weighted equally. The primary pair is (x = reliance, y = share): where the model's score leans on the named
object, relative to the scene's other objects, more than that scene's and that rung's average, a map that
tracks the model puts more of its mass there; the model's own object-erasure map gets r = 1 by construction.
Until 2026-12-03 the primary pair was (x = effect, y = share), an absolute score change against a relative mass:
the object-erasure map itself, which measures every object's effect exactly, got r -0.13 and ``does not track``
on it (docs/p2.md), so it could not tell a faithful map. The secondary pair is (x = margin, y = pointing).
Rung-level co-movement (every map degrades as the weights become noise) is absorbed by the rung effects, and everything fixed about a scene (shape, size,
clutter) by the scene effects: that is what the old rho over five rung means could not separate. The pooled
correlation (scenes weighted by their variation in x) is reported as ``r_pooled``; it was the estimand before,
and 32-scene samples of it disagreed beyond its own interval (docs/p2.md).

**Null model and tests.** H0_tracks: r <= 0 and H0_below: r >= ``min_effect`` (pre-registered 0.1), both by
the two-level bootstrap (ladders, then scenes). Holm's step-down over all 2M p-values of the M methods in a
run at level ``alpha`` (0.05). A scene-permutation p-value of the sharp null (no scene associated) is
reported as ``p_sharp`` and decides nothing: scenes differ in their association, and under an average of 0 it
rejects too often.

**Decision rule.** ``does not track`` when H0_below is rejected (the association is reliably below the
minimum effect, whether or not it is above 0); else ``tracks`` when H0_tracks is rejected; else
``inconclusive``. A run smaller than ``MIN_SCENES`` scenes or ``MIN_LADDERS`` ladders is not offered a
verdict (``inconclusive``): ``python -m faithclip.audit.p2_simulate`` measures the false-flag rate and
power of this very function by size (docs/p2.md), and below those sizes one of them is poor.

**Options.** A method's options are passed as given, except two values the harness fills in per scene
(``scene_options``): ``baseline="background"`` (occlusion's reference image) becomes the scene's own background,
rendered without any object, so that an occluding window restores what erasing an object restores; and
``segments="objects"`` (occlusion's regions) becomes the masks of the scene's objects. Both together erase one
whole object per occlusion: the named object's drop is then ``effect`` itself, by construction.

**Headline contrast.** Per ladder, pointing on the trained model (rung 0) against the first rung whose
competence on the scenes is <= ``contrast_level``; exact McNemar on the paired per-scene hits.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from faithclip.audit.p2stats import WithinTest, holm, mcnemar_exact, within_test

logger = logging.getLogger(__name__)

VERDICTS = ("tracks", "does not track", "inconclusive")
PAIRS = {"primary": ("reliance", "share"), "secondary": ("margin", "pointing")}  # the default design's
# The x of the primary pair: the model's reliance (the default), or the named object's effect alone, the primary
# pair until 2026-12-03, which a map that measures every object's effect exactly does not track (docs/p2.md).
PRIMARY_XS = ("reliance", "effect")
# The model's own object-erasure map (module docstring, "reliance"): occlusion with these options, which
# ``scene_options`` fills in per scene; its share of the named object is ``reliance``.
RELIANCE_OPTIONS = {"segments": "objects", "baseline": "background"}
MODEL_MEASURES = ("effect", "margin", "competent", "reliance")  # kept per scene, ladder and rung
MIN_EFFECT = 0.1
ALPHA = 0.05
# The smallest design offered a verdict; chosen from the operating characteristics that
# `python -m faithclip.audit.p2_simulate` prints (docs/p2.md, "Operating characteristics").
MIN_SCENES = 64
MIN_LADDERS = 2


@dataclass(frozen=True)
class P2Design:
    """Everything that decides a P2 run's numbers (the model and methods aside)."""

    scenes: int = 128  # scenes, not ladders, carry the variation (docs/p2.md): 2 x 128, not 3 x 32
    ladders: int = 2  # re-initialisation seeds ladder_seed, ladder_seed + 1, ...
    rungs: int = 6
    scan_step: float = 0.05
    chance_margin: float = 0.05
    contrast_level: float = 0.5
    min_effect: float = MIN_EFFECT
    alpha: float = ALPHA
    resamples: int = 2000
    permutations: int = 2000
    scene_seed: int = 0
    ladder_seed: int = 0
    bootstrap_seed: int = 0
    association: str = "ranks"  # "ranks" (within-rung ranks among scenes) or "linear" (raw values); p2stats
    # how a ladder seed seeds its re-initialised copy: "seed" (itself; meets a model built after the same seed)
    # or "spawned" (faithclip.audit.ladder.reinit_seed)
    reinit: str = "seed"
    primary: str = "reliance"  # the primary pair's x (PRIMARY_XS); a statistic of the measures, like association


def pairs(design: P2Design) -> dict[str, tuple[str, str]]:
    """The design's pairs of measures (x of the model, y of the map): ``PAIRS`` with its primary x."""
    if design.primary not in PRIMARY_XS:
        raise ValueError(f"the primary pair's x must be one of {', '.join(PRIMARY_XS)}, got {design.primary!r}")
    return {**PAIRS, "primary": (design.primary, PAIRS["primary"][1])}


# ---- the verdict ----------------------------------------------------------------------------------
def p2_verdicts(
    tests: dict[str, WithinTest],
    min_effect: float = MIN_EFFECT,
    alpha: float = ALPHA,
    min_scenes: int = MIN_SCENES,
    min_ladders: int = MIN_LADDERS,
) -> dict[str, dict[str, Any]]:
    """Verdicts for the methods of one run from their ``within_test`` results (rule in the module docstring).

    Holm over the 2M one-sided p-values of the run. Returns per method the adjusted p-values, the verdict
    and, when no verdict is offered, why.
    """
    names = list(tests)
    raw = [tests[n].p_tracks for n in names] + [tests[n].p_below for n in names]
    adjusted = holm(raw)
    out = {}
    for i, name in enumerate(names):
        test = tests[name]
        p_tracks, p_below = adjusted[i], adjusted[len(names) + i]
        reason = ""
        if test.scenes < min_scenes or test.ladders < min_ladders:
            verdict, reason = (
                "inconclusive",
                (
                    f"{test.scenes} scenes x {test.ladders} ladders is below the smallest "
                    f"design offered a verdict ({min_scenes} x {min_ladders})"
                ),
            )
        elif math.isnan(test.r):
            verdict, reason = "inconclusive", "the model's measure does not vary within scenes"
        elif p_below < alpha:
            verdict = "does not track"
        elif p_tracks < alpha:
            verdict = "tracks"
        else:
            verdict = "inconclusive"
        out[name] = {
            **asdict(test),
            "p_tracks_holm": p_tracks,
            "p_below_holm": p_below,
            "verdict": verdict,
            "reason": reason,
            "min_effect": min_effect,
            "alpha": alpha,
        }
    return out


def p2_statistics(
    model: dict[str, np.ndarray],
    maps: dict[str, dict[str, np.ndarray]],
    design: P2Design = P2Design(),
    min_scenes: int = MIN_SCENES,
    min_ladders: int = MIN_LADDERS,
    scaled: bool = False,
) -> dict[str, Any]:
    """Tests and verdicts from per-scene arrays ``(L, S, V)``: ``model`` holds effect, margin, competent;
    ``maps[method]`` holds share and pointing. Returns per pair (primary, secondary) the verdict table.
    ``scaled``: the arrays are already on the design's association scale (``p2_replicate``'s pooled grid, ranked
    within each scene set)."""
    association = "linear" if scaled else design.association
    result = {}
    for pair, (x_name, y_name) in pairs(design).items():
        tests = {
            m: within_test(
                model[x_name],
                values[y_name],
                design.min_effect,
                design.resamples,
                design.permutations,
                0.95,
                design.bootstrap_seed,
                association,
            )
            for m, values in maps.items()
        }
        result[pair] = {
            "x": x_name,
            "y": y_name,
            "methods": p2_verdicts(tests, design.min_effect, design.alpha, min_scenes, min_ladders),
        }
    return result


def headline_contrast(competent: np.ndarray, pointing: np.ndarray, level: float) -> list[dict[str, Any]]:
    """Per ladder: pointing at rung 0 vs the first rung whose competence <= ``level``, exact McNemar.

    competent, pointing ``(L, S, V)`` 0/1."""
    rows = []
    for l in range(competent.shape[0]):
        rates = competent[l].mean(0)  # (V,)
        below = np.flatnonzero(rates <= level)
        if below.size == 0 or below[0] == 0:
            rows.append({"ladder": l, "rung": None})
            continue
        v = int(below[0])
        before, after = pointing[l, :, 0] > 0.5, pointing[l, :, v] > 0.5
        b, c = int((before & ~after).sum()), int((~before & after).sum())
        rows.append(
            {
                "ladder": l,
                "rung": v,
                "competence": [float(rates[0]), float(rates[v])],
                "pointing": [float(before.mean()), float(after.mean())],
                "lost": b,
                "gained": c,
                "p_mcnemar": mcnemar_exact(b, c),
            }
        )
    return rows


# ---- the measurements -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScenePairs:
    """The scenes, their erased copies, and both as the model's input (the same for every rung)."""

    scenes: Any  # ShapesWorld SceneBatch (with ``backgrounds``)
    images: list  # PIL renders of the scenes
    pixels: torch.Tensor  # (S, 3, H, W)
    erased_pixels: torch.Tensor  # (S, 3, H, W): the named object erased


def scene_pairs(handle: Any, n: int, seed: int) -> ScenePairs:
    """``n`` 2-4-object scenes and the same scenes with the named object erased, at the model's input size."""
    from faithclip.shapes.world import ShapesWorld

    scenes, erased = ShapesWorld(image_size=handle.image_size).counterfactual_pairs(
        n, seed=seed, kind="remove", min_objects=2
    )
    images = _pil(scenes.images)
    return ScenePairs(scenes, images, handle.pixels(images), handle.pixels(_pil(erased.images)))


def model_measures(handle: Any, pairs: ScenePairs, reliance: bool = True) -> dict[str, np.ndarray]:
    """Per scene ``(S,)``: effect, margin, competent, reliance (module docstring; ``reliance=False`` leaves it out:
    the ladder's scan needs competence only) and the chance level of competence."""
    from faithclip.audit.departure import default_scores

    scenes = pairs.scenes
    prompts = list(scenes.prompts)
    with torch.no_grad():
        text = handle.encode_text(handle.tokens(prompts))
        scores = default_scores(handle, handle.encode_image(pairs.pixels), text)  # (S, C)
        removed = default_scores(handle, handle.encode_image(pairs.erased_pixels), text)  # (S, C)
    scores, removed = scores.double().cpu().numpy(), removed.double().cpu().numpy()
    rows = np.arange(len(scenes))
    named = scenes.target_labels
    present = np.zeros_like(scores, dtype=bool)
    for k in range(scenes.labels.shape[1]):
        valid = scenes.labels[:, k] >= 0
        present[rows[valid], scenes.labels[valid, k]] = True
    best_absent = np.where(present, -np.inf, scores).max(1)
    margin = scores[rows, named] - best_absent
    measures = {
        "effect": scores[rows, named] - removed[rows, named],
        "margin": margin,
        "competent": (margin > 0).astype(np.float64),
        "chance": 1.0 / (len(prompts) - present.sum(1) + 1),
    }
    if reliance:
        measures["reliance"] = map_measures(handle, "occlusion", pairs, RELIANCE_OPTIONS)["share"]
    return measures


def _pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(image), mode="RGB") for image in images]


def map_measures(handle: Any, method: Any, pairs: ScenePairs, options: dict | None = None) -> dict[str, np.ndarray]:
    """Per scene ``(S,)``: the method's map for the named prompt, scored by share and pointing."""
    from faithclip.audit.ladder import method_name
    from faithclip.audit.measures import crop_grid_map, peak_in_mask
    from faithclip.methods.context import Context
    from faithclip.registry import METHODS

    spec = METHODS.get(method) if isinstance(method, str) else method
    scenes = pairs.scenes
    share, pointing = [], []
    for index, image in enumerate(pairs.images):
        mask = scenes.target_masks[index]
        pixels = pairs.pixels[index : index + 1]
        ctx = Context(
            handle=handle,
            side="image",
            pixels=pixels,
            text=handle.tokens([scenes.prompts[scenes.target_labels[index]]]),
            target=handle.family.default_target(),
            originals=[image],
        )
        extra = {"original": image} if "original" in spec.defaults else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            given = scene_options(options or {}, scenes, index)
            patch_map = spec.image(ctx, **extra, **given).maps[0, 0].detach().double()
        if tuple(patch_map.shape) != ctx.grid:
            patch_map = crop_grid_map(patch_map, image.size, handle.preprocess, ctx.grid)
        share.append(mass_share(patch_map, mask))
        pointing.append(peak_in_mask(patch_map, mask))
    logger.debug("p2: %s on %d scenes", method_name(method), len(pairs.images))
    return {"share": np.asarray(share), "pointing": np.asarray(pointing)}


def scene_options(options: dict, scenes: Any, index: int) -> dict:
    """``options`` for scene ``index``, the harness's values (module docstring, "Options") filled in from the scene."""
    filled = dict(options)
    if filled.get("baseline") == "background":
        filled["baseline"] = _pil(scenes.backgrounds[index : index + 1])[0]
    if filled.get("segments") == "objects":
        filled["segments"] = scenes.masks[index][scenes.labels[index] >= 0]  # (objects, H, W) bool
    return filled


def mass_share(patch_map: torch.Tensor, mask: np.ndarray) -> float:
    """Share of the map's positive mass on the mask: ``sum(relu(m) * cover) / sum(relu(m))``, ``cover`` the
    fraction of each map cell inside the mask; a map with no positive mass counts as uniform (mean cover)."""
    cover = F.adaptive_avg_pool2d(torch.as_tensor(mask, dtype=torch.float64)[None, None], tuple(patch_map.shape))[
        0, 0
    ]  # (gh, gw)
    positive = patch_map.double().clamp_min(0)
    total = float(positive.sum())
    return float(cover.mean()) if total <= 0 else float((positive * cover).sum() / total)


def ladder_rungs(handle: Any, pairs: ScenePairs, seed: int, design: P2Design) -> tuple[list[float], list[float]]:
    """The ladder's rungs: V alphas from 0 to the first scanned alpha at chance; and the scanned competence."""
    from faithclip.audit.ladder import degrade

    steps = int(round(1 / design.scan_step))
    scan, competence = [k / steps for k in range(steps + 1)], []
    end = 1.0
    for alpha in scan:
        measures = model_measures(degrade(handle, alpha, seed, design.reinit), pairs, reliance=False)
        competence.append(float(measures["competent"].mean()))
        if competence[-1] <= float(measures["chance"].mean()) + design.chance_margin:
            end = alpha
            break
    if end == 0.0:
        raise ValueError("the trained model is already at chance on these scenes: P2 has no ladder to climb")
    return [end * v / (design.rungs - 1) for v in range(design.rungs)], competence


def p2_test(
    handle: Any,
    methods: Sequence[Any],
    design: P2Design = P2Design(),
    options: dict[str, dict] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """P2 on ``handle``: per-scene measures on every rung of every ladder, the tests, verdicts and contrast."""
    from faithclip.audit.ladder import degrade, method_name

    started = time.perf_counter()
    pairs = scene_pairs(handle, design.scenes, design.scene_seed)
    names = [method_name(m) for m in methods]
    model = {k: np.zeros((design.ladders, design.scenes, design.rungs)) for k in MODEL_MEASURES}
    maps = {
        n: {k: np.zeros((design.ladders, design.scenes, design.rungs)) for k in ("share", "pointing")} for n in names
    }
    ladders = []
    trained_maps: dict[str, dict[str, np.ndarray]] = {}  # alpha = 0 is the same trained model in every ladder
    trained_model: dict[str, np.ndarray] = {}
    for l in range(design.ladders):
        seed = design.ladder_seed + l
        alphas, scanned = ladder_rungs(handle, pairs, seed, design)
        ladders.append({"seed": seed, "alphas": alphas, "scan_competence": scanned, "scan_step": design.scan_step})
        for v, alpha in enumerate(alphas):
            rung = degrade(handle, alpha, seed, design.reinit)
            measures = trained_model if v == 0 and trained_model else model_measures(rung, pairs)
            if v == 0:
                trained_model = measures
            for key, values in measures.items():
                if key in model:
                    model[key][l, :, v] = values
            for method, name in zip(methods, names):
                if v == 0 and name in trained_maps:
                    measured = trained_maps[name]
                else:
                    measured = map_measures(rung, method, pairs, (options or {}).get(name))
                    if v == 0:
                        trained_maps[name] = measured
                for key, values in measured.items():
                    maps[name][key][l, :, v] = values
            if progress:
                progress(f"P2 ladder {l + 1}/{design.ladders} rung {v + 1}/{design.rungs} (alpha {alpha:.3f})")
        ladders[-1]["competence"] = model["competent"][l].mean(0).tolist()
    result = {
        "design": asdict(design),
        "model": handle.name,
        "methods": names,
        "ladders": ladders,
        **p2_statistics(model, maps, design),
        "contrast": {
            n: headline_contrast(model["competent"], maps[n]["pointing"], design.contrast_level) for n in names
        },
        "per_scene": {
            "model": {k: v.tolist() for k, v in model.items()},
            "maps": {n: {k: v.tolist() for k, v in m.items()} for n, m in maps.items()},
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result


__all__ = [
    "P2Design",
    "VERDICTS",
    "PAIRS",
    "PRIMARY_XS",
    "RELIANCE_OPTIONS",
    "MODEL_MEASURES",
    "pairs",
    "MIN_EFFECT",
    "ALPHA",
    "MIN_SCENES",
    "MIN_LADDERS",
    "p2_verdicts",
    "p2_statistics",
    "headline_contrast",
    "model_measures",
    "map_measures",
    "scene_options",
    "mass_share",
    "ladder_rungs",
    "p2_test",
    "scene_pairs",
    "ScenePairs",
]
