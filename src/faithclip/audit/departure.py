"""How far the official Grad-ECLIP pipeline departs from the model it claims to explain.

On the same images and prompts, four forwards (a 2x2 ablation of the two causes):

    arm         last block              image input
    original    the model's own heads    standard resize + centre crop      (what the model predicts from)
    one_head    recomputed, ONE head     standard resize + centre crop
    keep_size   the model's own heads    keep-size, interpolated positions
    official    recomputed, ONE head     keep-size, interpolated positions  (what the official code explains)

Per arm, against ``original``: the cosine between image embeddings; the change of the explained score
(the family's default score -- CLIP: the cosine; a ViT classifier: the class logit, its "prompts" the
class names -- of the label's prompt, or of the original top-1 prompt when there are no labels); prediction
flips (top-1 prompt differs from the original's); zero-shot accuracy. Text side: the last 8 text blocks
recomputed with one head against the model's text tower. Maps (on ``map_images`` images): a 2x2x2
ablation that adds the third cause, lambda's q/k (``MAP_ARMS``), so that each cause is measured on its own
(``map_departure``); the keep-size arms use the evaluation loop's short-side cap ``cap`` throughout.

Every figure carries its n and an interval (``faithclip.audit.bootstrap``, seeded): flips and accuracy a
Wilson interval on their counts; means and medians over images (cosines, score changes, AUCs, Spearman)
a percentile bootstrap over images. Spearman is undefined (NaN) when a map is constant; those images are
counted (``undefined``) and left out of that arm's mean and n. The map part also gives PAIRED contrasts,
each arm's AUC minus the faithful map's on the same image, with a bootstrap over images of the
differences: whether a cause makes the map worse under the ORIGINAL model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from faithclip.audit.bootstrap import Bootstrap, mean_interval, median_interval, wilson_interval
from faithclip.audit.measures import crop_grid_map, patch_deletion_insertion
from faithclip.mapmath import spearman
from faithclip.methods.context import Context
from faithclip.methods.official.keepsize import (
    OFFICIAL_SHORT_SIDE_CAP,
    keep_size_pixels,
)
from faithclip.methods.official.rewrite import encode_text_rewritten
from faithclip.models.clip import ModelHandle

logger = logging.getLogger(__name__)

ARMS: dict[str, tuple[bool, bool]] = {  # name -> (one-head rewrite, keep-size input)
    "original": (False, False),
    "one_head": (True, False),
    "keep_size": (False, True),
    "official": (True, True),
}


@dataclass
class AuditData:
    """Raw images (before any preprocessing), the prompt set, and optionally labels and target masks."""

    images: list[Image.Image]
    prompts: list[str]
    labels: list[int] | None = None  # index into prompts, per image
    masks: list[np.ndarray] | None = None  # (H, W) bool of the labelled object, raw-image coordinates
    name: str = ""


def arm_pixels(handle: ModelHandle, image: Image.Image, keep_size: bool, cap: int | None) -> torch.Tensor:
    """``(1, 3, H, W)``: the model's standard input, or the official keep-size input."""
    if keep_size:
        return keep_size_pixels(image, handle.patch_size, handle.preprocess, cap)[None].to(handle.device, handle.dtype)
    return handle.pixels(image)


def arm_image_embeds(
    handle: ModelHandle, images: Sequence[Image.Image], arm: str, cap: int | None = OFFICIAL_SHORT_SIDE_CAP
) -> torch.Tensor:
    """Image embeddings ``(N, P)`` of one ablation arm (no gradients)."""
    one_head, keep = ARMS[arm]
    out = []
    with torch.no_grad():
        if not keep:
            pixels = handle.pixels(list(images))  # (N, 3, H, W), all the same size
            for start in range(0, len(pixels), 64):
                chunk = pixels[start : start + 64]
                out.append(rewritten_image_embeds(handle, chunk, 1) if one_head else handle.encode_image(chunk))
        else:
            for image in images:
                pixels = arm_pixels(handle, image, True, cap)
                out.append(rewritten_image_embeds(handle, pixels, 1 if one_head else None))
    return torch.cat(out)


def rewritten_image_embeds(handle: ModelHandle, pixels: torch.Tensor, heads: int | None) -> torch.Tensor:
    """The image embeddings of the official forward (the last block recomputed with ``heads`` heads, positions
    interpolated to the pixels' grid): CLIP's ``generate_emap.py``, or the published ViT notebook's for a ViT
    classifier (its features, before the classifier)."""
    return handle.family.official.pipeline.image_embeds(handle.model, pixels, heads)


def default_scores(handle: ModelHandle, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``(N, C)``: the family's default score of every image against every prompt (CLIP: the cosine; a
    classifier: the class logit)."""
    target = handle.family.default_target()
    return handle.family.score(target, image_embeds, text_embeds, handle.model)


def rewritten_text_embeds(handle: ModelHandle, prompts: Sequence[str], layers: int = 8) -> torch.Tensor:
    """The official text side's forward: last ``layers`` text blocks with one head, ids padded with 0."""
    batch = handle.tokens(list(prompts))
    ids = handle.context_batch(batch).input_ids  # (K, context), padded with 0 as clip.tokenize
    with torch.no_grad():
        return encode_text_rewritten(handle.model, ids, batch.eos_positions, heads=1, layers=layers)[0]


def _z(confidence: float) -> float:
    """The normal quantile of a two-sided ``confidence`` interval (1.96 at 95 %)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf((1 + confidence) / 2)


def _mean_figure(values: torch.Tensor | np.ndarray, boot: Bootstrap) -> tuple[float, list[float]]:
    estimate = mean_interval(torch.as_tensor(values).detach().double().cpu().numpy(), boot)
    return estimate["value"], [estimate["low"], estimate["high"]]


def _count_figure(flags: torch.Tensor, boot: Bootstrap) -> tuple[int, float, list[float]]:
    """(successes, rate, Wilson interval) of boolean ``flags`` ``(N,)``."""
    successes, n = int(flags.sum()), int(flags.numel())
    return successes, successes / n if n else math.nan, list(wilson_interval(successes, n, _z(boot.confidence)))


def _cosine_rows(cosine: torch.Tensor, boot: Bootstrap) -> dict:
    mean, interval = _mean_figure(cosine, boot)
    return {
        "embedding_cosine_mean": mean,
        "embedding_cosine_interval": interval,
        "embedding_cosine_min": float(cosine.min()),
    }


def _prediction_rows(
    handle: ModelHandle,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    reference: torch.Tensor,
    reference_text: torch.Tensor,
    explained: torch.Tensor,
    labels: torch.Tensor | None,
    boot: Bootstrap,
) -> dict:
    """Departure of one (image embeddings, text embeddings) pair from the reference pair, over ``n`` images."""
    with torch.no_grad():
        cos = default_scores(handle, image_embeds, text_embeds)  # (N, C)
        cos_ref = default_scores(handle, reference, reference_text)  # (N, C)
    rows = torch.arange(len(explained))
    score, score_ref = cos[rows, explained], cos_ref[rows, explained]
    pred, pred_ref = cos.argmax(-1), cos_ref.argmax(-1)
    change = (score - score_ref).abs()  # (N,)
    relative = median_interval((change / score_ref.abs().clamp_min(1e-12)).double().cpu().numpy(), boot)
    change_mean, change_interval = _mean_figure(change, boot)
    flips, flip_rate, flip_interval = _count_figure(pred != pred_ref, boot)
    row = {
        "n": len(explained),
        "score_mean": float(score.mean()),
        "score_change_mean_abs": change_mean,
        "score_change_mean_abs_interval": change_interval,
        "score_change_relative": relative["value"],
        "score_change_relative_interval": [relative["low"], relative["high"]],
        "flips": flips,
        "flip_rate": flip_rate,
        "flip_rate_interval": flip_interval,
    }
    if labels is not None:
        correct, accuracy, accuracy_interval = _count_figure(pred == labels, boot)
        row.update(correct=correct, accuracy=accuracy, accuracy_interval=accuracy_interval)
    return row


def embedding_departure(
    handle: ModelHandle,
    data: AuditData,
    cap: int | None = OFFICIAL_SHORT_SIDE_CAP,
    text_layers: int = 8,
    boot: Bootstrap = Bootstrap(),
) -> dict:
    """Embedding cosines, score changes, flips and accuracy of every arm and of the rewritten text tower, each
    with its n and interval (the text side's cosine is over the prompts, its predictions over the images)."""
    text_embeds = handle.encode_text(handle.tokens(list(data.prompts))).detach()
    original = arm_image_embeds(handle, data.images, "original", cap)
    labels = None if data.labels is None else torch.as_tensor(data.labels, device=original.device)
    with torch.no_grad():
        explained = labels if labels is not None else default_scores(handle, original, text_embeds).argmax(-1)
    arms = {}
    for arm in ARMS:
        embeds = original if arm == "original" else arm_image_embeds(handle, data.images, arm, cap)
        cosine = F.cosine_similarity(embeds, original, dim=-1)  # (N,)
        arms[arm] = {
            **_cosine_rows(cosine, boot),
            **_prediction_rows(handle, embeds, text_embeds, original, text_embeds, explained, labels, boot),
        }
    if (
        not handle.family.has_side("text") or not handle.family.official.text
    ):  # a classifier; BLIP's image-only notebook
        return {"arms": arms, "text": None}
    text_rewritten = rewritten_text_embeds(handle, data.prompts, text_layers)
    text_cosine = F.cosine_similarity(text_rewritten, text_embeds, dim=-1)  # (C,)
    text = {
        **_cosine_rows(text_cosine, boot),
        "prompts": len(data.prompts),
        "layers": min(text_layers, len(handle.family.blocks(handle.model, "text"))),
        **_prediction_rows(handle, original, text_rewritten, original, text_embeds, explained, labels, boot),
    }
    return {"arms": arms, "text": text}


MAP_ARMS: dict[str, tuple[bool, bool, str]] = {  # name -> (one-head rewrite, keep-size input, lambda's q/k)
    "faithful": (False, False, "raw"),
    "qk_out_proj": (False, False, "out_proj"),
    "one_head": (True, False, "raw"),
    "keep_size": (False, True, "raw"),
    "one_head+qk_out_proj": (True, False, "out_proj"),
    "keep_size+qk_out_proj": (False, True, "out_proj"),
    "one_head+keep_size": (True, True, "raw"),
    "published": (True, True, "out_proj"),
}


def map_arms(family: Any) -> dict[str, tuple[bool, bool, str]]:
    """The arms of ``MAP_ARMS`` whose lambda q/k the family's published pipeline has; ``published`` is the
    family's published variant (CLIP: all three causes; BLIP: one head + keep size with raw q/k, which
    replaces the arm of the same causes)."""
    choices = family.official.lambda_qk
    arms = {name: arm for name, arm in MAP_ARMS.items() if arm[2] in choices and name != "published"}
    published = (True, True, choices[0])
    return {**{name: arm for name, arm in arms.items() if arm != published}, "published": published}


def summarise_maps(per_image: Sequence[dict], arms: Sequence[str], boot: Bootstrap = Bootstrap()) -> dict:
    """Per-figure summaries of the per-image map rows (``map_departure``'s), for JSON:

    - ``mean``: the mean of each figure over the images where it is defined (not NaN); ``n``: how many
      those are; ``undefined``: how many are NaN (Spearman of a constant map); ``intervals``: the
      percentile bootstrap interval of each mean over those images;
    - ``contrasts[arm]``: the PAIRED contrast of the arm's deletion and insertion AUCs minus the faithful
      map's on the same image (``value``, ``low``, ``high``, ``n``): the mean per-image difference with a
      bootstrap over images of the differences; deletion: above 0 = the arm's map is worse (lower is
      better); insertion: below 0 = worse."""
    keys = list(per_image[0]) if per_image else []
    mean, n, undefined, intervals = {}, {}, {}, {}
    for key in keys:
        values = np.array([row[key] for row in per_image], dtype=np.float64)  # (images,)
        defined = values[~np.isnan(values)]
        estimate = mean_interval(defined, boot)
        mean[key], n[key], undefined[key] = estimate["value"], int(defined.size), int(values.size - defined.size)
        intervals[key] = [estimate["low"], estimate["high"]]
    contrasts: dict[str, dict] = {}
    for arm in arms if per_image else ():
        contrasts[arm] = {}
        for curve in ("deletion_auc", "insertion_auc"):
            difference = np.array([row[f"{curve}_{arm}"] - row[f"{curve}_faithful"] for row in per_image])  # (images,)
            difference = difference[~np.isnan(difference)]
            contrasts[arm][curve] = {**mean_interval(difference, boot), "n": int(difference.size)}
    return {"mean": mean, "n": n, "undefined": undefined, "intervals": intervals, "contrasts": contrasts}


def map_departure(
    handle: ModelHandle,
    data: AuditData,
    indices: Sequence[int],
    *,
    cap: int | None = OFFICIAL_SHORT_SIDE_CAP,
    deletion_steps: int | None = None,
    boot: Bootstrap = Bootstrap(),
) -> dict:
    """The map ablation over THREE causes, on ``indices`` of the images: the one-head rewrite, the keep-size
    input, and lambda's q/k (raw, as the paper and notebooks, or out_proj(q), out_proj(k), as the published
    evaluation script). Every arm is the Grad-ECLIP formula on that arm's forward and input; ``faithful``
    (no cause) is Grad-ECLIP on the model's own forward and input, ``published`` (all three) is the
    evaluation script's map. Per arm: Spearman with the faithful map on the model's crop grid, deletion and
    insertion AUCs scored by the ORIGINAL model on its own input; plus the consistency of the faithful arm
    with ``faithclip``'s ``grad_eclip`` method (expect 1). Summaries, intervals and paired contrasts:
    ``summarise_maps``."""
    from faithclip.methods.grad_eclip import grad_eclip
    from faithclip.methods.grad_eclip_official import image_maps

    text_embeds = handle.encode_text(handle.tokens(list(data.prompts))).detach()
    per_image: list[dict] = []
    example: dict[str, Any] | None = None
    for index in indices:
        image = data.images[index]
        pixels = handle.pixels(image)
        with torch.no_grad():
            label = (
                data.labels[index]
                if data.labels is not None
                else int(default_scores(handle, handle.encode_image(pixels), text_embeds).argmax())
            )
        ctx = Context(
            handle=handle,
            side="image",
            pixels=pixels,
            text=handle.tokens([data.prompts[label]]),
            target=handle.family.default_target(),
        )
        maps = {}
        arms = map_arms(handle.family)
        for arm, (one_head, keep, lambda_qk) in arms.items():
            arm_map = image_maps(
                ctx, arm_pixels(handle, image, keep, cap), 1, lambda_qk, heads=1 if one_head else None
            )[0][0]
            maps[arm] = crop_grid_map(arm_map, image.size, handle.preprocess, ctx.grid) if keep else arm_map
        row: dict[str, Any] = {
            "spearman_faithful_vs_grad_eclip": spearman(maps["faithful"], grad_eclip(ctx).maps[0, 0])
        }
        for arm in arms:
            row[f"spearman_{arm}_vs_faithful"] = spearman(maps[arm], maps["faithful"])
        score = lambda batch: ctx.score_images(batch)[:, 0]
        for name, patch_map in maps.items():
            curves = patch_deletion_insertion(
                score, pixels[0], patch_map.to(pixels.dtype), handle.patch_size, deletion_steps
            )
            row[f"deletion_auc_{name}"] = curves["deletion"]
            row[f"insertion_auc_{name}"] = curves["insertion"]
        per_image.append(row)
        if example is None:  # the first image's two maps, for the report's figure (faithful vs published)
            example = {
                "image": int(index),
                "prompt": data.prompts[label],
                "crop_png": _crop_png(handle, image),
                "faithful": maps["faithful"].double().tolist(),
                "published": maps["published"].double().tolist(),
                "spearman": row["spearman_published_vs_faithful"],
            }
    arms = map_arms(handle.family)
    return {
        "images": len(per_image),
        "arms": {arm: {"one_head": h, "keep_size": k, "lambda_qk": q} for arm, (h, k, q) in arms.items()},
        **summarise_maps(per_image, list(arms), boot),
        "per_image": per_image,
        **({"example": example} if example is not None else {}),
    }


def _crop_png(handle: ModelHandle, image: Image.Image, width: int = 192) -> str:
    """The model's crop of ``image`` (the region both maps cover, on the crop grid) as a small base64 PNG."""
    import base64
    import io

    crop = handle.preprocess.crop_image(image).convert("RGB")
    crop = crop.resize((width, max(1, round(width * crop.height / crop.width))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def audit_departure(
    handle: ModelHandle,
    data: AuditData,
    *,
    map_images: int = 8,
    cap: int | None | str = "published",
    deletion_steps: int | None = None,
    text_layers: int = 8,
    boot: Bootstrap = Bootstrap(),
) -> dict:
    """The departure of the official pipeline from the model, as one JSON-ready dict. ``cap="published"``: the
    short-side cap of the family's published pipeline (CLIP: 640, the evaluation loop; BLIP: none). ``boot``:
    the resamples, level and seed of every interval."""
    if cap == "published":
        cap = handle.family.official.short_side_cap
    logger.info("audit: embeddings of %d images under %d arms", len(data.images), len(ARMS))
    result = {
        "data": data.name,
        "model": handle.name,
        "images": len(data.images),
        "prompts": len(data.prompts),
        "labelled": data.labels is not None,
        "cap": cap,
        "bootstrap": {"resamples": boot.resamples, "confidence": boot.confidence, "seed": boot.seed},
        **embedding_departure(handle, data, cap, text_layers, boot),
    }
    logger.info("audit: maps of %d images", min(map_images, len(data.images)))
    result["maps"] = map_departure(
        handle, data, range(min(map_images, len(data.images))), cap=cap, deletion_steps=deletion_steps, boot=boot
    )
    return result


__all__ = [
    "ARMS",
    "MAP_ARMS",
    "AuditData",
    "arm_image_embeds",
    "arm_pixels",
    "audit_departure",
    "embedding_departure",
    "map_arms",
    "map_departure",
    "rewritten_text_embeds",
    "summarise_maps",
]
