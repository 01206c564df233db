"""Model variants and per-image measures for P2 ("Debunking Grad-ECLIP", arXiv 2605.12952).

``degrade``: rung ``alpha`` of a ladder is the trained model with every weight moved toward a re-initialised
copy (same config, transformers' own initialisation, fixed seed):

    theta(alpha) = (1 - alpha) * theta_trained + alpha * theta_init          (logit_scale kept)

The copy is drawn after ``torch.manual_seed(reinit_seed(seed, reinit))``: the ladder seed itself by default
(``"seed"``), or a seed spawned from it that no training seed meets (``"spawned"``; ``reinit_seed``).

P2's test of whether maps track the model is ``faithclip.audit.p2`` (paired across rungs and ladders).
Spearman's rho between five rung means, the verdict this module used to give, is gone: with rungs at chance
it could not decide (issue 20).

The correctness split (``correctness_split``): on single-object scenes, the map for the TRUE class's prompt,
pointing and deletion reported separately for images the model classified right and wrong. Whether the
model is right depends on the shape (some shapes are never right on a degraded rung) and so does pointing
(a ring's hole lies outside its mask), so the verdict compares right and wrong WITHIN each shape: the
stratified difference (``p2stats.stratified_difference``, weights n_right n_wrong / n per shape) with
within-shape permutation p-values, Holm over the 2M one-sided p-values of the run's methods: ``pass``
(better where the model is right), ``flagged`` (worse), ``inconclusive``, ``n/a`` (fewer than ``min_group``
right or wrong images). The plain right - wrong difference and its bootstrap interval stay as description.

Images are the raw scene renders; the model sees its standard preprocessing of them, and a method that
needs the original image (``grad_eclip_official``) receives it as ``original=``.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import torch

from faithclip.audit.bootstrap import Bootstrap, difference_interval
from faithclip.audit.departure import AuditData
from faithclip.audit.measures import crop_grid_map, patch_deletion_insertion, peak_in_mask
from faithclip.methods.context import Context
from faithclip.models.clip import ModelHandle
from faithclip.registry import METHODS, MethodSpec

logger = logging.getLogger(__name__)


# How a ladder seed becomes the torch seed of its re-initialised copy (``reinit_seed``).
REINITS = ("seed", "spawned")
# numpy SeedSequence entropy of the "spawned" re-initialisation: a fixed constant, so that it is reproducible.
SPAWN_ENTROPY = 0x5F2C_1A9E_0B37_D461


def reinit_seed(seed: int, reinit: str = "seed") -> int:
    """The ``torch.manual_seed`` under which ladder ``seed`` draws its re-initialised copy.

    ``"seed"`` (the default; every published grid used it): the ladder seed itself. A model that was built after
    the same ``torch.manual_seed`` -- the shipped shapes models, seed 0 in their TRAINING.json -- gets its OWN
    initial weights back on that ladder, not a random re-initialisation (tools/ladder_init.py measures it).
    ``"spawned"``: a 63-bit seed spawned from the ladder seed by ``numpy.random.SeedSequence([SPAWN_ENTROPY,
    seed])``; no small training seed meets it, so every ladder is an independent draw."""
    if reinit not in REINITS:
        raise ValueError(f"reinit must be one of {', '.join(REINITS)}, got {reinit!r}")
    if reinit == "seed":
        return int(seed)
    return int(np.random.SeedSequence([SPAWN_ENTROPY, int(seed)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def reinitialised_state(model: torch.nn.Module, seed: int, reinit: str = "seed") -> dict[str, torch.Tensor]:
    """The state of a fresh copy of ``model``'s architecture, built after ``torch.manual_seed(reinit_seed(seed,
    reinit))``. With ``reinit="seed"``, a model that was itself built after ``manual_seed(seed)`` gets its own
    initial weights back (tools/ladder_init.py). The caller's random state is left as it was: the copy is drawn
    inside ``torch.random.fork_rng``, so a ladder never reseeds the code around it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(reinit_seed(seed, reinit))
        return type(model)(model.config).state_dict()


def interpolated(name: str, parameter: torch.Tensor) -> bool:
    """Whether ``degrade`` moves this parameter: every floating-point one but the logit scale and bias."""
    return name not in ("logit_scale", "logit_bias") and parameter.is_floating_point()


def degrade(handle: ModelHandle, alpha: float, seed: int = 0, reinit: str = "seed") -> ModelHandle:
    """A copy of the model with weights ``(1 - alpha) * trained + alpha * re-initialised`` (logit_scale kept);
    ``reinit`` says how ``seed`` seeds the re-initialised copy (``reinit_seed``)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    model = handle.model
    degraded = copy.deepcopy(model)
    if alpha > 0:
        fresh_state = reinitialised_state(model, seed, reinit)
        with torch.no_grad():
            for name, parameter in degraded.named_parameters():
                if interpolated(name, parameter):
                    parameter.mul_(1 - alpha).add_(fresh_state[name].to(parameter), alpha=alpha)
    degraded.eval()
    return type(handle)(
        model=degraded,
        tokenizer=handle.tokenizer,
        preprocess=handle.preprocess,
        name=f"{handle.name} (alpha={alpha:g})",
        family=handle.family,
    )


def zero_shot_predictions(handle: ModelHandle, data: AuditData) -> torch.Tensor:
    """Top-1 prompt (class) index per image ``(N,)`` under the model's standard preprocessing, by the family's
    default score (CLIP: the cosine; SigLIP: its logit; a classifier: the class logit)."""
    from faithclip.audit.departure import default_scores

    with torch.no_grad():
        text = handle.encode_text(handle.tokens(list(data.prompts)))
        chunks = [handle.encode_image(handle.pixels(data.images[s : s + 64])) for s in range(0, len(data.images), 64)]
        return default_scores(handle, torch.cat(chunks), text).argmax(-1).cpu()


def zero_shot_accuracy(handle: ModelHandle, data: AuditData) -> float:
    predictions = zero_shot_predictions(handle, data)
    return float((predictions == torch.as_tensor(data.labels)).double().mean())


Method = str | MethodSpec  # a registered name, or a spec not in the registry (``faithclip check`` on a callable)


def method_name(method: Method) -> str:
    return method if isinstance(method, str) else method.name


def explain_quality(
    handle: ModelHandle,
    method: Method,
    data: AuditData,
    indices: Sequence[int],
    deletion_steps: int | None = 16,
    options: dict | None = None,
) -> list[dict[str, float]]:
    """Per image: pointing hit and deletion/insertion AUCs of ``method``'s map for the labelled prompt."""
    spec = METHODS.get(method) if isinstance(method, str) else method
    rows = []
    for index in indices:
        image, mask = data.images[index], data.masks[index]
        if image.size[0] != image.size[1]:
            raise ValueError("the ladder expects square scene renders (the model's crop is then the whole image)")
        pixels = handle.pixels(image)
        ctx = Context(
            handle=handle,
            side="image",
            pixels=pixels,
            text=handle.tokens([data.prompts[data.labels[index]]]),
            target=handle.family.default_target(),
        )
        extra = {"original": image} if spec.name == "grad_eclip_official" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch_map = spec.image(ctx, **extra, **(options or {})).maps[0, 0].detach()
        if tuple(patch_map.shape) != ctx.grid:  # a keep-size map: bring it to the model's crop grid
            patch_map = crop_grid_map(patch_map, image.size, handle.preprocess, ctx.grid)
        curves = patch_deletion_insertion(
            lambda b: ctx.score_images(b)[:, 0],
            pixels[0],
            patch_map.to(pixels.dtype),
            handle.patch_size,
            deletion_steps,
        )
        rows.append(
            {
                "pointing": peak_in_mask(patch_map, mask),
                "deletion_auc": curves["deletion"],
                "insertion_auc": curves["insertion"],
                "ins_minus_del": curves["insertion"] - curves["deletion"],
            }
        )
    return rows


def default_methods(family: str = "clip") -> list[str]:
    """The ladder's methods for models of ``family``: every image-side method it supports but the slow ones
    (``MethodSpec.slow``; add them with ``methods=``)."""
    return [s.name for s in METHODS if s.image is not None and not s.slow and s.supports(family)]


QUALITY_METRICS = ("pointing", "ins_minus_del")


SPLIT_MIN_GROUP = 20  # fewer right (or wrong) images than this: no verdict


def split_statistics(
    correct: Sequence[bool],
    per_scene: dict[str, dict[str, Sequence[float]]],
    strata: Sequence[int],
    boot: Bootstrap = Bootstrap(),
    min_group: int = SPLIT_MIN_GROUP,
    permutations: int = 2000,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The correctness split from per-image values (module docstring): means on right / wrong images, the
    plain difference with its bootstrap interval, and the within-``strata`` (shape) test and verdict."""
    from faithclip.audit.p2stats import holm, stratified_permutation

    correct = np.asarray(correct, dtype=bool)
    strata = np.asarray(strata)
    out: dict[str, Any] = {
        "right": int(correct.sum()),
        "wrong": int((~correct).sum()),
        "min_group": min_group,
        "bootstrap": asdict(boot),
        "permutations": permutations,
        "level": alpha,
        "methods": {},
    }
    enough = min(out["right"], out["wrong"]) >= min_group
    tests = {}
    for method, metrics in per_scene.items():
        entry: dict[str, Any] = {"right": {}, "wrong": {}}
        for metric, values in metrics.items():
            values = np.asarray(values, dtype=np.float64)
            right, wrong = values[correct], values[~correct]
            entry["right"][metric] = float(right.mean()) if right.size else float("nan")
            entry["wrong"][metric] = float(wrong.mean()) if wrong.size else float("nan")
            difference = difference_interval(right, wrong, boot)
            entry[f"{metric}_difference"] = difference["value"]
            entry[f"{metric}_difference_interval"] = [difference["low"], difference["high"]]
        tests[method] = stratified_permutation(
            np.asarray(metrics["pointing"], np.float64), correct, strata, permutations, boot.seed
        )
        entry["pointing_within_shape"] = tests[method]["difference"]
        entry["shapes_used"] = tests[method]["strata"]
        out["methods"][method] = entry
    names = list(tests)
    adjusted = holm([tests[m]["p_greater"] for m in names] + [tests[m]["p_less"] for m in names])
    for i, method in enumerate(names):
        entry = out["methods"][method]
        entry["p_greater_holm"], entry["p_less_holm"] = adjusted[i], adjusted[len(names) + i]
        if not enough or math.isnan(entry["pointing_within_shape"]):
            entry["verdict"] = "n/a"
        elif entry["p_less_holm"] < alpha:
            entry["verdict"] = "flagged"
        elif entry["p_greater_holm"] < alpha:
            entry["verdict"] = "pass"
        else:
            entry["verdict"] = "inconclusive"
    return out


def shape_of(labels: Sequence[int]) -> list[int]:
    """The shape index of each class label (labels index colours-major: ``colour * len(SHAPES) + shape``)."""
    from faithclip.shapes.world import SHAPES

    return [int(label) % len(SHAPES) for label in labels]


def correctness_split(
    handle: ModelHandle,
    data: AuditData,
    methods: Sequence[Method] | None = None,
    deletion_steps: int | None = 16,
    boot: Bootstrap = Bootstrap(),
    options: dict[str, dict] | None = None,
    permutations: int = 2000,
) -> dict[str, Any]:
    """P2 (b): quality of the true-class map on images the model got right vs wrong, with intervals."""
    methods = list(methods) if methods is not None else default_methods(handle.family.name)
    correct = (zero_shot_predictions(handle, data) == torch.as_tensor(data.labels)).tolist()
    per_scene = {}
    for number, method in enumerate(methods, 1):
        name = method_name(method)
        logger.info("correctness split: %s on %d images (%d/%d)", name, len(data.images), number, len(methods))
        rows = explain_quality(handle, method, data, range(len(data.images)), deletion_steps, (options or {}).get(name))
        per_scene[name] = {metric: [row[metric] for row in rows] for metric in QUALITY_METRICS}
    result = split_statistics(correct, per_scene, shape_of(data.labels), boot, permutations=permutations)
    result["per_scene"] = {"correct": correct, **per_scene}
    return result


__all__ = [
    "Method",
    "method_name",
    "degrade",
    "interpolated",
    "reinitialised_state",
    "zero_shot_accuracy",
    "zero_shot_predictions",
    "explain_quality",
    "correctness_split",
    "default_methods",
    "split_statistics",
    "shape_of",
    "QUALITY_METRICS",
]
