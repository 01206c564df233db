"""P2 -- an explanation must track the model's actual performance ("Debunking Grad-ECLIP", arXiv 2605.12952).

(a) The performance ladder. Rung ``alpha`` is the trained model with every weight moved toward a
re-initialised copy (same config, transformers' own initialisation, fixed seed):

    theta(alpha) = (1 - alpha) * theta_trained + alpha * theta_init          (logit_scale kept)

Per rung: zero-shot top-1 accuracy over the class prompts (single-object scenes) and, per method,
explanation quality on multi-object scenes where the caption names one object: the pointing game
(arg-max of the map inside the named object's mask) and the deletion/insertion AUCs scored by that
rung's model (``ins_minus_del`` = insertion AUC - deletion AUC, higher is better). Per method,
Spearman's rho between accuracy and quality across rungs; a method whose pointing quality does not
fall with accuracy (``rho < flag_below``, default 0.5) is flagged: its maps do not reflect what the
model can do.

(b) Quality split by the model's correctness: on single-object scenes, the map for the TRUE class's
prompt, pointing and deletion reported separately for images the model classified right and wrong.

Images are the raw scene renders; the model sees its standard preprocessing of them, and a method that
needs the original image (``grad_eclip_official``) receives it as ``original=``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from faithclip.audit.departure import AuditData
from faithclip.audit.measures import crop_grid_map, patch_deletion_insertion, pointing_hit, spearman
from faithclip.methods.context import Context
from faithclip.models.clip import ClipHandle
from faithclip.registry import METHODS
from faithclip.targets import cosine_matrix, make_target

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
                if name == "logit_scale" or not parameter.is_floating_point():
                    continue
                parameter.mul_(1 - alpha).add_(fresh_state[name].to(parameter.dtype), alpha=alpha)
    degraded.eval()
    return type(handle)(model=degraded, tokenizer=handle.tokenizer, preprocess=handle.preprocess,
                        name=f"{handle.name} (alpha={alpha:g})")


def zero_shot_predictions(handle: ClipHandle, data: AuditData) -> torch.Tensor:
    """Top-1 prompt index per image ``(N,)`` under the model's standard preprocessing."""
    with torch.no_grad():
        text = handle.encode_text(handle.tokens(list(data.prompts)))
        chunks = [handle.encode_image(handle.pixels(data.images[s:s + 64])) for s in range(0, len(data.images), 64)]
        return cosine_matrix(torch.cat(chunks), text).argmax(-1).cpu()


def zero_shot_accuracy(handle: ClipHandle, data: AuditData) -> float:
    predictions = zero_shot_predictions(handle, data)
    return float((predictions == torch.as_tensor(data.labels)).double().mean())


def explain_quality(handle: ClipHandle, method: str, data: AuditData, indices: Sequence[int],
                    deletion_steps: int | None = 16, options: dict | None = None) -> list[dict[str, float]]:
    """Per image: pointing hit and deletion/insertion AUCs of ``method``'s map for the labelled prompt."""
    spec = METHODS.get(method)
    rows = []
    for index in indices:
        image, mask = data.images[index], data.masks[index]
        if image.size[0] != image.size[1]:
            raise ValueError("the ladder expects square scene renders (the model's crop is then the whole image)")
        pixels = handle.pixels(image)
        ctx = Context(handle=handle, side="image", pixels=pixels,
                      text=handle.tokens([data.prompts[data.labels[index]]]), target=make_target("cosine"))
        extra = {"original": image} if method == "grad_eclip_official" else {}
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


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def default_methods() -> list[str]:
    return [s.name for s in METHODS if s.image is not None and s.name not in EXPENSIVE_METHODS]


@dataclass
class LadderConfig:
    alphas: Sequence[float] = DEFAULT_ALPHAS
    seed: int = 0
    deletion_steps: int | None = 16
    flag_below: float = 0.5


def performance_ladder(handle: ClipHandle, accuracy_data: AuditData, pointing_data: AuditData,
                       methods: Sequence[str] | None = None, config: LadderConfig = LadderConfig()) -> dict[str, Any]:
    """P2 (a): accuracy and explanation quality per rung, Spearman's rho per method, flags."""
    methods = list(methods) if methods is not None else default_methods()
    indices = range(len(pointing_data.images))
    rungs = []
    for alpha in config.alphas:
        rung = degrade(handle, alpha, config.seed)
        accuracy = zero_shot_accuracy(rung, accuracy_data)
        logger.info("ladder: alpha=%g accuracy=%.3f", alpha, accuracy)
        quality = {m: _mean(explain_quality(rung, m, pointing_data, indices, config.deletion_steps)) for m in methods}
        rungs.append({"alpha": alpha, "accuracy": accuracy, "quality": quality})
    accuracies = torch.tensor([r["accuracy"] for r in rungs])
    correlations = {}
    for method in methods:
        per_metric = {}
        for metric in ("pointing", "ins_minus_del"):
            values = torch.tensor([r["quality"][method][metric] for r in rungs])
            per_metric[metric] = spearman(accuracies, values)
        rho = per_metric["pointing"]
        per_metric["flagged"] = bool(not rho >= config.flag_below)  # NaN (constant quality) is flagged too
        correlations[method] = per_metric
    monotone = bool(all(a >= b for a, b in zip(accuracies[:-1], accuracies[1:])))
    return {"alphas": list(config.alphas), "rungs": rungs, "accuracy_monotone": monotone,
            "spearman": correlations, "flag_below": config.flag_below, "methods": methods,
            "pointing_images": len(pointing_data.images), "accuracy_images": len(accuracy_data.images)}


def correctness_split(handle: ClipHandle, data: AuditData, methods: Sequence[str] | None = None,
                      deletion_steps: int | None = 16) -> dict[str, Any]:
    """P2 (b): quality of the true-class map on images the model got right vs wrong."""
    methods = list(methods) if methods is not None else default_methods()
    predictions = zero_shot_predictions(handle, data)
    right = [i for i, (p, y) in enumerate(zip(predictions.tolist(), data.labels)) if p == y]
    wrong = [i for i in range(len(data.images)) if i not in set(right)]
    out: dict[str, Any] = {"right": len(right), "wrong": len(wrong), "methods": {}}
    for method in methods:
        out["methods"][method] = {
            "right": _mean(explain_quality(handle, method, data, right, deletion_steps)),
            "wrong": _mean(explain_quality(handle, method, data, wrong, deletion_steps)),
        }
    return out


__all__ = ["degrade", "zero_shot_accuracy", "zero_shot_predictions", "explain_quality", "performance_ladder",
           "correctness_split", "LadderConfig", "DEFAULT_ALPHAS", "default_methods"]
