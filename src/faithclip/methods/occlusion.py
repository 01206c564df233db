"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014).

Image side: a ``window`` x ``window`` square slides over the image with ``stride`` (the last position of
each axis is added so every pixel is covered); inside it the normalised pixels are set to ``fill``
(0 = the dataset mean colour: the published grey square, the default), or, with ``baseline``, to the pixels of
a reference image at the same place (``baseline``: any image the model's ``pixels`` accepts, one for all images
or one per image, preprocessed as the explained images are; for example the scene without its objects, so that
a window restores the background; it replaces ``fill``). With S the explained target of a pair, W(u) the
windows covering pixel u and R the filled-in values (``fill`` or the baseline's pixels),

    map(u) = 1/|W(u)| sum_{w in W(u)} [ S(I) - S(I with w set to R) ]      (B, K, H, W), pixel resolution

A window on which the image equals the baseline changes nothing, so its drop is exactly 0.

``segments`` replaces the sliding windows by given regions (the feature groups of feature ablation): boolean
masks ``(N, H, W)`` at the explained pixels' size, one set for all images or a list of one set per image. The
formula is the same with W(u) the segments covering u; a pixel no segment covers gets 0. With the objects of a
scene as segments and its background as ``baseline``, the drop of an object's segment IS the score change of
erasing that object (P2's harness: ``faithclip.audit.p2``, "Options").

Text side: token deletion. For every token j of the family's text support (CLIP: strictly between start and
end; SigLIP: the words before the end token), the ids with j removed
(later ids shift left, the end token is kept, a padding slot is appended) are scored:

    map(j) = S(text) - S(text without token j)                               (B, K, L)

Defaults: ``window`` = round(min(H, W) / 7) pixels (32 at 224), ``stride`` = window // 2. Occluded
images and deleted texts are scored in batches with all K texts (or B images) at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from faithclip.errors import MethodError
from faithclip.methods.context import Context, MapResult
from faithclip.models.clip import TextBatch
from faithclip.registry import MethodSpec, register_method


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis; the last window ends at the border."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def occlusion_windows(size: tuple[int, int], window: int, stride: int) -> torch.Tensor:
    """``(N, H, W)`` bool: one mask per window position."""
    height, width = size
    masks = []
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            mask = torch.zeros(height, width, dtype=torch.bool)
            mask[top : top + window, left : left + window] = True
            masks.append(mask)
    return torch.stack(masks)


def average_drop(drops: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Score drops ``(N, K)`` and windows ``(N, H, W)`` -> per-pixel mean over covering windows ``(K, H, W)``."""
    covered = windows.to(drops.dtype)  # (N, H, W)
    total = torch.einsum("nk,nhw->khw", drops, covered)
    return total / covered.sum(0).clamp(min=1)


def baseline_pixels(ctx: Context, baseline: Any) -> torch.Tensor:
    """``baseline`` (an image, a path, normalised pixels, or a list of one per explained image) as ``(B, 3, H, W)``
    pixels aligned with ``ctx.pixels``."""
    several = isinstance(baseline, (list, tuple))
    if isinstance(baseline, (bool, int, float)) or (several and not baseline):
        raise MethodError(
            f"occlusion's baseline must be an image, an image path, normalised pixels or a list of one per image; "
            f"got {baseline!r} (a constant is fill=)."
        )
    if several and len(baseline) != ctx.num_images:
        raise MethodError(f"occlusion's baseline holds {len(baseline)} images for {ctx.num_images} explained images.")
    if isinstance(baseline, torch.Tensor):  # normalised pixels, taken as they are
        pixels = baseline if baseline.dim() == 4 else baseline[None]
    else:
        pixels = ctx.handle.pixels(list(baseline) if several else baseline)
    if pixels.shape[0] not in (1, ctx.num_images) or pixels.shape[1:] != ctx.pixels.shape[1:]:
        raise MethodError(
            f"occlusion's baseline must be {ctx.num_images} or 1 image(s) of {tuple(ctx.pixels.shape[1:])}; "
            f"got {tuple(pixels.shape)}."
        )
    return pixels.to(ctx.pixels).expand_as(ctx.pixels)


def segment_masks(ctx: Context, segments: Any) -> list[torch.Tensor]:
    """``segments`` (boolean masks ``(N, H, W)``, or a list of one such set per explained image) as one
    ``(N, H, W)`` bool tensor per image, on the pixels' device."""
    if isinstance(segments, str):
        raise MethodError(
            f"occlusion's segments={segments!r} names regions only P2's harness knows (the objects of its scenes: "
            "faithclip.audit.p2); here segments are boolean masks (N, H, W)."
        )
    several = isinstance(segments, (list, tuple))
    sets = list(segments) if several else [segments] * ctx.num_images
    if len(sets) != ctx.num_images:
        raise MethodError(f"occlusion's segments hold {len(sets)} sets for {ctx.num_images} explained images.")
    size = tuple(ctx.pixels.shape[-2:])
    masks = []
    for given in sets:
        mask = torch.as_tensor(given, device=ctx.pixels.device)
        if mask.dtype != torch.bool or mask.dim() != 3 or tuple(mask.shape[1:]) != size or mask.shape[0] == 0:
            raise MethodError(
                f"occlusion's segments must be boolean masks (N, {size[0]}, {size[1]}), N >= 1, at the size of the "
                f"explained pixels; got {mask.dtype} {tuple(mask.shape)}."
            )
        masks.append(mask)
    return masks


def occlusion_image(
    ctx: Context,
    window: int | None = None,
    stride: int | None = None,
    fill: float = 0.0,
    baseline: Any = None,
    segments: Any = None,
    batch_size: int = 64,
) -> MapResult:
    size = tuple(ctx.pixels.shape[-2:])
    if segments is not None:
        regions, window, stride = segment_masks(ctx, segments), None, None
    else:
        window = max(1, round(min(size) / 7)) if window is None else window
        stride = max(1, window // 2) if stride is None else stride
        if not 1 <= window <= min(size) or stride < 1:
            raise MethodError(
                f"occlusion needs 1 <= window <= {min(size)} and stride >= 1; got window={window}, stride={stride}."
            )
        regions = [occlusion_windows(size, window, stride).to(ctx.pixels.device)] * ctx.num_images  # (N, H, W)
    filled = torch.full_like(ctx.pixels, fill) if baseline is None else baseline_pixels(ctx, baseline)  # (B, 3, H, W)
    base = ctx.model_scores()  # (B, K)
    maps = []
    for image in range(ctx.num_images):
        windows, drops = regions[image], []
        for start in range(0, windows.shape[0], batch_size):
            part = windows[start : start + batch_size, None]  # (n, 1, H, W)
            occluded = torch.where(part, filled[image], ctx.pixels[image])  # (n, 3, H, W)
            drops.append(base[image] - ctx.score_images(occluded, batch_size=batch_size))  # (n, K)
        maps.append(average_drop(torch.cat(drops), windows))
    reference = None if baseline is None else str(baseline) if isinstance(baseline, (str, Path)) else "given"
    options = {"window": window, "stride": stride, "fill": fill if baseline is None else None, "baseline": reference}
    if segments is not None:
        options["segments"] = [int(mask.shape[0]) for mask in regions]
    return MapResult(maps=torch.stack(maps), scores=base, input_size=size, options=options)


def deleted_tokens(text: TextBatch, support: torch.Tensor) -> tuple[TextBatch, torch.Tensor, torch.Tensor]:
    """Every text with one token of ``support`` ``(K, L)`` removed: the batch ``(N, L)``, its source text
    ``(N,)`` and position ``(N,)``."""
    rows, sources, positions = [], [], []
    for k in range(text.input_ids.shape[0]):
        ids, mask = text.input_ids[k], text.attention_mask[k]
        for j in support[k].nonzero().flatten().tolist():
            keep = torch.arange(ids.shape[0], device=ids.device) != j
            rows.append((torch.cat([ids[keep], ids[-1:]]), torch.cat([mask[keep], torch.zeros_like(mask[:1])])))
            sources.append(k)
            positions.append(j)
    ids = torch.stack([r[0] for r in rows])  # (N, L): the appended slot is padding (mask 0)
    mask = torch.stack([r[1] for r in rows])
    sources_t = torch.tensor(sources, dtype=torch.long, device=ids.device)
    batch = TextBatch(ids, mask, text.eos_positions[sources_t] - 1, [], [])
    return batch, sources_t, torch.tensor(positions, dtype=torch.long, device=ids.device)


def occlusion_text(ctx: Context, batch_size: int = 256) -> MapResult:
    base = ctx.model_scores()  # (B, K)
    maps = torch.zeros(ctx.num_images, ctx.num_texts, ctx.text.input_ids.shape[1], dtype=base.dtype, device=base.device)
    support = ctx.support_mask()  # (K, L)
    if bool(support.any()):
        batch, sources, positions = deleted_tokens(ctx.text, support)
        scores = ctx.score_texts(batch, batch_size=batch_size)  # (B, N)
        maps[:, sources, positions] = base[:, sources] - scores
    return MapResult(maps=maps, scores=base, options={"deletion": "token"})


register_method(
    MethodSpec(
        name="occlusion",
        assumes_pooled_score=None,  # any scalar of the image: the ITM score too
        families=("*",),  # reads the model through the family adapter only
        paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
        image=occlusion_image,
        text=occlusion_text,
        modifies_input=True,
        slow=True,
        defaults={
            "window": "round(min(H, W) / 7) px",
            "stride": "window // 2",
            "fill": 0.0,
            "baseline": None,
            "segments": None,
            "batch_size": "64 / 256",
        },
        summary="score drop when a sliding window (image) or one token (text) is removed, averaged over covering windows",
    )
)
