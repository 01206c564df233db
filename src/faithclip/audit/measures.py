"""Small measures the audit needs: map resampling, deletion/insertion on the patch grid, pointing.
(Spearman's rank correlation is ``faithclip.mapmath.spearman``, shared with the sanity-check metric.)

- ``crop_grid_map``: a map on the keep-size grid (covering the WHOLE image) brought to the model's crop
  grid: each cell's value spread over its area in the shortest-edge-resized image (nearest upsampling),
  centre-cropped like the model's input, then averaged over each patch cell (``adaptive_avg_pool2d``):
  area-weighted resampling, the identity when the grids coincide.
- ``patch_deletion_insertion`` (RISE's protocol on the patch grid, Petsiuk et al., BMVC 2018): patches
  ranked by the map, most salient first (stable order); deletion moves them from the image to the
  zero tensor (the mean colour of the normalised input), insertion from zeros to the image;
  ``AUC = mean of the trapezoids over the fraction of moved patches``.
- ``peak_in_mask``: 1 when the maximum of the map upsampled to the mask's size falls inside the mask.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from faithclip.metrics.case import pixel_map
from faithclip.metrics.pointing import pointing_hit
from faithclip.models.preprocess import ImagePreprocess


def crop_grid_map(
    full_map: torch.Tensor, image_size: tuple[int, int], preprocess: ImagePreprocess, grid: tuple[int, int]
) -> torch.Tensor:
    """A ``(gh', gw')`` map over the whole ``image_size = (W, H)`` image -> ``(gh, gw)`` on the model's crop."""
    rw, rh = preprocess.resized_size(*image_size)
    left, top, right, bottom = preprocess.crop_box(*image_size)
    dense = F.interpolate(full_map.detach().double()[None, None], size=(rh, rw), mode="nearest")  # (1, 1, rh, rw)
    crop = dense[..., top:bottom, left:right]  # (1, 1, crop_h, crop_w)
    return F.adaptive_avg_pool2d(crop, grid)[0, 0]  # (gh, gw)


def patch_order(patch_map: torch.Tensor) -> torch.Tensor:
    """Patch indices (raster order) by decreasing map value, ties in raster order."""
    return torch.sort(patch_map.detach().flatten().double(), descending=True, stable=True).indices


def patch_deletion_insertion(
    score: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    patch_map: torch.Tensor,
    patch: int,
    steps: int | None = None,
) -> dict[str, float]:
    """Deletion and insertion AUCs of one map: ``score`` maps ``(N, 3, H, W)`` to ``(N,)``.

    pixels ``(3, H, W)`` normalised; ``patch_map`` ``(gh, gw)``. ``steps`` points along the curve
    (default: one per patch).
    """
    gh, gw = patch_map.shape
    total = gh * gw
    steps = total if steps is None else min(steps, total)
    counts = sorted({round(total * i / steps) for i in range(steps + 1)})  # moved patches per point
    rank = torch.empty(total, dtype=torch.long)
    rank[patch_order(patch_map)] = torch.arange(total)
    moved = (rank[None, :] < torch.tensor(counts)[:, None]).reshape(len(counts), 1, gh, gw)  # (S, 1, gh, gw)
    moved = moved.repeat_interleave(patch, -2).repeat_interleave(patch, -1).to(pixels.dtype)  # (S, 1, H, W)
    deleted = pixels[None] * (1 - moved)  # (S, 3, H, W)
    inserted = pixels[None] * moved  # (S, 3, H, W)
    x = np.array(counts, dtype=np.float64) / total
    curves = {}
    for name, batch in (("deletion", deleted), ("insertion", inserted)):
        y = score(batch).double().cpu().numpy()
        curves[name] = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return curves


def peak_in_mask(patch_map: torch.Tensor, mask: np.ndarray) -> float:
    """1.0 if the arg-max of the patch map, upsampled bilinearly to the mask's ``(H, W)``, lies in the mask.

    The pointing game (``faithclip.metrics.pointing.pointing_hit``) with no tolerance, on the upsampled map;
    an empty mask (an object cropped away) is a miss here instead of an error.
    """
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))  # (H, W)
    if not mask.any():
        return 0.0
    return pointing_hit(pixel_map(patch_map, tuple(mask.shape)), mask, tolerance=0.0)


__all__ = ["crop_grid_map", "patch_order", "patch_deletion_insertion", "peak_in_mask"]
