"""P2 -- an explanation must track the model's actual performance ("Debunking Grad-ECLIP", arXiv 2605.12952).

(a) The performance ladder. Rung ``alpha`` is the trained model with every weight moved toward a
re-initialised copy (same config, transformers' own initialisation, fixed seed):

    theta(alpha) = (1 - alpha) * theta_trained + alpha * theta_init          (logit_scale kept)

Per rung: zero-shot top-1 accuracy over the class prompts (single-object scenes) and, per method,
explanation quality on multi-object scenes where the caption names one object: the pointing game
(arg-max of the map inside the named object's mask) and the deletion/insertion AUCs scored by that
rung's model (``ins_minus_del`` = insertion AUC - deletion AUC, higher is better). Per method,
Spearman's rho between accuracy and quality across rungs, with a 95 % percentile bootstrap interval
(scenes resampled, ``faithclip.audit.bootstrap``). A method is flagged when the whole interval of
rho(accuracy, pointing) lies below ``flag_below`` (default 0.5): its maps do not reflect what the model
can do; ``inconclusive`` when the interval straddles the threshold, ``pass`` when it lies above.

(b) Quality split by the model's correctness: on single-object scenes, the map for the TRUE class's
prompt, pointing and deletion reported separately for images the model classified right and wrong,
with the difference right - wrong and its interval (verdict against 0).

Images are the raw scene renders; the model sees its standard preprocessing of them, and a method that
needs the original image (``grad_eclip_official``) receives it as ``original=``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from faithclip.audit.bootstrap import Bootstrap, difference_interval, ladder_rho_interval, mean_interval, verdict
from faithclip.audit.departure import AuditData
from faithclip.audit.measures import crop_grid_map, patch_deletion_insertion, pointing_hit
from faithclip.methods.context import Context
from faithclip.models.clip import ClipHandle
from faithclip.registry import METHODS, MethodSpec

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
EXPENSIVE_METHODS = ("rise", "m2ib", "occlusion")  # left out of the default ladder (add with methods=)


def degrade(handle: ClipHandle, alpha: float, seed: int = 0) -> ClipHandle:
    """A copy of the model with weights ``(1 - alpha) * trained + alpha * re-initialised`` (logit_scale kept)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    model = handle.model
    degraded = copy.deepcopy(model)
    if alpha > 0:
        torch.manual_seed(seed)
        fresh = type(model)(model.config).to(dtype=handle.dtype, device=handle.device)
        fresh_state = fresh.state_dict()
        with torch.no_grad():
            for name, parameter in degraded.named_parameters():
                if name in ("logit_scale", "logit_bias") or not parameter.is_floating_point():
                    continue
                parameter.mul_(1 - alpha).add_(fresh_state[name].to(parameter.dtype), alpha=alpha)
    degraded.eval()
    return type(handle)(model=degraded, tokenizer=handle.tokenizer, preprocess=handle.preprocess,
                        name=f"{handle.name} (alpha={alpha:g})", family=handle.family)


def zero_shot_predictions(handle: ClipHandle, data: AuditData) -> torch.Tensor:
    """Top-1 prompt (class) index per image ``(N,)`` under the model's standard preprocessing, by the family's
    default score (CLIP: the cosine; SigLIP: its logit; a classifier: the class logit)."""
    from faithclip.audit.departure import default_scores

    with torch.no_grad():
        text = handle.encode_text(handle.tokens(list(data.prompts)))
        chunks = [handle.encode_image(handle.pixels(data.images[s:s + 64])) for s in range(0, len(data.images), 64)]
        return default_scores(handle, torch.cat(chunks), text).argmax(-1).cpu()


def zero_shot_accuracy(handle: ClipHandle, data: AuditData) -> float:
    predictions = zero_shot_predictions(handle, data)
    return float((predictions == torch.as_tensor(data.labels)).double().mean())


Method = str | MethodSpec  # a registered name, or a spec not in the registry (``faithclip check`` on a callable)


def method_name(method: Method) -> str:
    return method if isinstance(method, str) else method.name


def explain_quality(handle: ClipHandle, method: Method, data: AuditData, indices: Sequence[int],
                    deletion_steps: int | None = 16, options: dict | None = None) -> list[dict[str, float]]:
    """Per image: pointing hit and deletion/insertion AUCs of ``method``'s map for the labelled prompt."""
    spec = METHODS.get(method) if isinstance(method, str) else method
    rows = []
    for index in indices:
        image, mask = data.images[index], data.masks[index]
        if image.size[0] != image.size[1]:
            raise ValueError("the ladder expects square scene renders (the model's crop is then the whole image)")
        pixels = handle.pixels(image)
        ctx = Context(handle=handle, side="image", pixels=pixels,
                      text=handle.tokens([data.prompts[data.labels[index]]]),
                      target=handle.family.default_target())
        extra = {"original": image} if spec.name == "grad_eclip_official" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch_map = spec.image(ctx, **extra, **(options or {})).maps[0, 0].detach()
        if tuple(patch_map.shape) != ctx.grid:  # a keep-size map: bring it to the model's crop grid
            patch_map = crop_grid_map(patch_map, image.size, handle.preprocess, ctx.grid)
        curves = patch_deletion_insertion(lambda b: ctx.score_images(b)[:, 0], pixels[0], patch_map.to(pixels.dtype),
                                          handle.patch_size, deletion_steps)
        rows.append({"pointing": pointing_hit(patch_map, mask), "deletion_auc": curves["deletion"],
                     "insertion_auc": curves["insertion"], "ins_minus_del": curves["insertion"] - curves["deletion"]})
    return rows


def default_methods(family: str = "clip") -> list[str]:
    """The ladder's methods for models of ``family``: every image-side method it supports but the expensive ones."""
    return [s.name for s in METHODS if s.image is not None and s.name not in EXPENSIVE_METHODS and s.supports(family)]


@dataclass(frozen=True)
class LadderConfig:
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    seed: int = 0  # seed of the re-initialised copy
    deletion_steps: int | None = 16
    flag_below: float = 0.5
    bootstrap: Bootstrap = Bootstrap()


QUALITY_METRICS = ("pointing", "ins_minus_del")


def ladder_statistics(alphas: Sequence[float], correct: np.ndarray, per_scene: dict[str, dict[str, np.ndarray]],
                      flag_below: float = 0.5, boot: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """Rates, rank correlations, intervals and verdicts from per-scene values (no model needed).

    correct ``(R, n_acc)`` 0/1 per rung and accuracy image; ``per_scene[method][metric]`` ``(R, n_pt)``.
    A method is ``flagged`` when the interval of rho(accuracy, pointing) lies below ``flag_below``,
    ``inconclusive`` when it straddles it, ``pass`` when it lies at or above it.
    """
    correct = np.asarray(correct, dtype=np.float64)
    rungs = []
    for r, alpha in enumerate(alphas):
        accuracy = mean_interval(correct[r], boot)
        quality, intervals = {}, {}
        for method, metrics in per_scene.items():
            quality[method] = {metric: float(np.mean(values[r])) for metric, values in metrics.items()}
            pointing = mean_interval(metrics["pointing"][r], boot)
            intervals[method] = [pointing["low"], pointing["high"]]
        rungs.append({"alpha": float(alpha), "accuracy": accuracy["value"],
                      "accuracy_interval": [accuracy["low"], accuracy["high"]],
                      "quality": quality, "pointing_interval": intervals})
    correlations = {}
    for method, metrics in per_scene.items():
        entry: dict[str, Any] = {}
        for metric in QUALITY_METRICS:
            rho = ladder_rho_interval(correct, metrics[metric], boot)
            entry[metric] = rho["value"]
            entry[f"{metric}_interval"] = [rho["low"], rho["high"]]
        entry["verdict"] = verdict(*entry["pointing_interval"], flag_below)
        entry["flagged"] = entry["verdict"] == "flagged"
        correlations[method] = entry
    accuracies = [r["accuracy"] for r in rungs]
    monotone = bool(all(a >= b for a, b in zip(accuracies[:-1], accuracies[1:])))
    return {"alphas": [float(a) for a in alphas], "rungs": rungs, "accuracy_monotone": monotone,
            "spearman": correlations, "flag_below": flag_below, "methods": list(per_scene),
            "bootstrap": asdict(boot), "accuracy_images": int(correct.shape[1]),
            "pointing_images": int(next(iter(per_scene.values()))["pointing"].shape[1]) if per_scene else 0}


def performance_ladder(handle: ClipHandle, accuracy_data: AuditData, pointing_data: AuditData,
                       methods: Sequence[Method] | None = None, config: LadderConfig = LadderConfig(),
                       options: dict[str, dict] | None = None) -> dict[str, Any]:
    """P2 (a): accuracy and explanation quality per rung, Spearman's rho per method with intervals, verdicts.

    The per-scene values are kept in the result (``per_scene``) so that the statistics can be recomputed.
    ``options`` gives per-method keyword options (by name).
    """
    methods = list(methods) if methods is not None else default_methods(handle.family.name)
    indices = range(len(pointing_data.images))
    labels = torch.as_tensor(accuracy_data.labels)
    correct = []
    per_scene: dict[str, dict[str, list]] = {method_name(m): {metric: [] for metric in QUALITY_METRICS} for m in methods}
    for alpha in config.alphas:
        rung = degrade(handle, alpha, config.seed)
        correct.append((zero_shot_predictions(rung, accuracy_data) == labels).double().numpy())
        logger.info("ladder: alpha=%g accuracy=%.3f", alpha, correct[-1].mean())
        for number, method in enumerate(methods, 1):
            name = method_name(method)
            logger.info("ladder: alpha=%g, %s on %d scenes (%d/%d)", alpha, name, len(indices), number, len(methods))
            rows = explain_quality(rung, method, pointing_data, indices, config.deletion_steps, (options or {}).get(name))
            for metric in QUALITY_METRICS:
                per_scene[name][metric].append([row[metric] for row in rows])
    arrays = {m: {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()} for m, metrics in per_scene.items()}
    result = ladder_statistics(config.alphas, np.stack(correct), arrays, config.flag_below, config.bootstrap)
    result["seed"] = config.seed
    result["per_scene"] = {"correct": np.stack(correct).tolist(),
                           **{m: {k: v.tolist() for k, v in metrics.items()} for m, metrics in arrays.items()}}
    return result


SPLIT_MIN_GROUP = 20  # fewer right (or wrong) images than this: no verdict


def split_statistics(correct: Sequence[bool], per_scene: dict[str, dict[str, Sequence[float]]],
                     boot: Bootstrap = Bootstrap(), margin: float = 0.0,
                     min_group: int = SPLIT_MIN_GROUP) -> dict[str, Any]:
    """P2 (b) from per-image values: means on right / wrong images and right - wrong with its interval.

    Verdict on the pointing difference against ``margin``: ``flagged`` when its interval lies below it
    (the maps are worse where the model is right), ``pass`` at or above it, ``inconclusive`` otherwise;
    ``n/a`` when either group has fewer than ``min_group`` images: resampling a handful of 0/1 hits (all
    misses, say) gives an interval with no spread, which would turn chance into a verdict.
    """
    correct = np.asarray(correct, dtype=bool)
    out: dict[str, Any] = {"right": int(correct.sum()), "wrong": int((~correct).sum()), "margin": margin,
                           "min_group": min_group, "bootstrap": asdict(boot), "methods": {}}
    enough = min(out["right"], out["wrong"]) >= min_group
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
        entry["verdict"] = verdict(*entry["pointing_difference_interval"], margin) if enough else "n/a"
        out["methods"][method] = entry
    return out


def correctness_split(handle: ClipHandle, data: AuditData, methods: Sequence[Method] | None = None,
                      deletion_steps: int | None = 16, boot: Bootstrap = Bootstrap(),
                      options: dict[str, dict] | None = None) -> dict[str, Any]:
    """P2 (b): quality of the true-class map on images the model got right vs wrong, with intervals."""
    methods = list(methods) if methods is not None else default_methods(handle.family.name)
    correct = (zero_shot_predictions(handle, data) == torch.as_tensor(data.labels)).tolist()
    per_scene = {}
    for number, method in enumerate(methods, 1):
        name = method_name(method)
        logger.info("correctness split: %s on %d images (%d/%d)", name, len(data.images), number, len(methods))
        rows = explain_quality(handle, method, data, range(len(data.images)), deletion_steps, (options or {}).get(name))
        per_scene[name] = {metric: [row[metric] for row in rows] for metric in QUALITY_METRICS}
    result = split_statistics(correct, per_scene, boot)
    result["per_scene"] = {"correct": correct, **per_scene}
    return result


__all__ = ["Method", "method_name", "degrade", "zero_shot_accuracy", "zero_shot_predictions", "explain_quality", "performance_ladder",
           "correctness_split", "LadderConfig", "DEFAULT_ALPHAS", "default_methods", "ladder_statistics",
           "split_statistics", "QUALITY_METRICS"]
