"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018), after the official code (eclique/RISE, ``generate_masks``).

N random masks M_i: an s x s grid of cells kept with probability p, upsampled bilinearly to
(s + 1) * ceil(H / s) x (s + 1) * ceil(W / s) pixels and cropped at a random shift in [0, cell) per axis.
Masked images I * M_i are scored (normalised pixels times the mask: 0 is the mean colour), and

    saliency = sum_i S(I * M_i) M_i / (N p)                 (B, K, H, W) at pixel resolution

S the explained target of each pair. The official upsampling is ``skimage.transform.resize(order=1,
mode='reflect', anti_aliasing=False)``: linear interpolation on pixel centres with mirror boundaries;
``interpolation_matrix`` builds exactly that, separably. ``s`` counts cells per side (8 at any size: a
cell is ceil(H/8) pixels, 28 at 224). Masks are drawn from ``seed`` and made in batches, so memory
stays at one batch of masks; the map for a pair does not depend on the other inputs. When all the masks
fit in ``KEEP_BYTES`` (4,000 at 64 px: 66 MB), the last set made is kept and the next map with the same
masks (the same count, cells, prob, size, seed and batches: another image, or the randomised models of the
sanity cascade) reuses it instead of drawing and rendering it again: the same numbers, made once.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import torch

from faithclip.errors import MethodError
from faithclip.methods.context import Context, MapResult
from faithclip.registry import MethodSpec, register_method
from faithclip.targets import accumulation_dtype


def interpolation_matrix(cells: int, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(size, cells)`` linear interpolation from ``cells`` samples to ``size`` on pixel centres
    (coordinate (i + 0.5) * cells / size - 0.5), mirror boundary (a coordinate -c reads at c)."""
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) * cells / size - 0.5  # (size,)
    if cells > 1:
        period = 2 * (cells - 1)
        coords = torch.remainder(coords, period)
        coords = torch.where(coords > cells - 1, period - coords, coords)  # mirror about the end samples
    else:
        coords = torch.zeros_like(coords)
    low = coords.floor().clamp(0, max(cells - 2, 0)).long()  # (size,)
    frac = coords - low
    matrix = torch.zeros(size, cells, dtype=torch.float64)
    rows = torch.arange(size)
    matrix[rows, low] += 1 - frac
    if cells > 1:
        matrix[rows, low + 1] += frac
    return matrix.to(dtype)


def generate_masks(
    count: int,
    cells: int,
    prob: float,
    size: tuple[int, int],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random parts of ``count`` masks: kept cells ``(N, s, s)`` and shifts ``(N, 2)`` (pixels)."""
    grids = (torch.rand(count, cells, cells, generator=generator) < prob).to(dtype)  # (N, s, s)
    cell_h, cell_w = (math.ceil(side / cells) for side in size)
    shifts = torch.stack(
        [
            torch.randint(0, cell_h, (count,), generator=generator),
            torch.randint(0, cell_w, (count,), generator=generator),
        ],
        dim=1,
    )  # (N, 2)
    return grids, shifts


def render_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample ``(N, s, s)`` grids to ``(s+1)*cell`` and crop ``size`` at ``shifts`` -> ``(N, H, W)``."""
    cells = grids.shape[-1]
    height, width = size
    up_h, up_w = ((cells + 1) * math.ceil(side / cells) for side in size)
    rows = interpolation_matrix(cells, up_h, grids.dtype)  # (up_h, s)
    cols = interpolation_matrix(cells, up_w, grids.dtype)  # (up_w, s)
    offsets_h = shifts[:, :1] + torch.arange(height)  # (N, H)
    offsets_w = shifts[:, 1:] + torch.arange(width)  # (N, W)
    return torch.einsum("nhs,nst,nwt->nhw", rows[offsets_h], grids, cols[offsets_w])  # (N, H, W)


KEEP_BYTES = 128 * 2**20  # rendered masks kept for the next map that uses the same ones


@functools.lru_cache(maxsize=1)
def kept_masks(
    count: int, cells: int, prob: float, size: tuple[int, int], seed: int, batch_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Every batch of ``mask_batches``, made once and kept (one set: the last asked for). Never written to."""
    return tuple(made_masks(count, cells, prob, size, seed, batch_size, dtype))


def made_masks(
    count: int, cells: int, prob: float, size: tuple[int, int], seed: int, batch_size: int, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grids, shifts = generate_masks(count, cells, prob, size, generator, dtype)
    for start in range(0, count, batch_size):
        yield render_masks(grids[start : start + batch_size], shifts[start : start + batch_size], size)  # (n, H, W)


def mask_batches(
    count: int, cells: int, prob: float, size: tuple[int, int], seed: int, batch_size: int, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    """The ``count`` masks drawn from ``seed``, ``(n, H, W)`` ``batch_size`` at a time: kept for the next map
    when they fit in ``KEEP_BYTES``, made batch by batch otherwise (the same numbers either way)."""
    if count * size[0] * size[1] * dtype.itemsize <= KEEP_BYTES:
        return iter(kept_masks(count, cells, prob, tuple(size), seed, batch_size, dtype))
    return made_masks(count, cells, prob, size, seed, batch_size, dtype)


def rise_saliency(scores: torch.Tensor, masks: torch.Tensor, count: int, prob: float) -> torch.Tensor:
    """One batch's share of the saliency: scores ``(n, K)``, masks ``(n, H, W)`` -> ``(K, H, W)``."""
    return torch.einsum("nk,nhw->khw", scores, masks) / (count * prob)


def rise(
    ctx: Context, masks: int = 4000, cells: int = 8, prob: float = 0.5, batch_size: int = 64, seed: int = 0
) -> MapResult:
    if masks < 1 or cells < 1 or not 0 < prob <= 1:
        raise MethodError(f"rise needs masks >= 1, cells >= 1 and 0 < prob <= 1; got {masks}, {cells}, {prob}.")
    size = tuple(ctx.pixels.shape[-2:])
    # summed over thousands of masks: in float32 even for a half-precision model (bf16 would lose the map)
    saliency = torch.zeros(
        ctx.num_images, ctx.num_texts, *size, dtype=accumulation_dtype(ctx.pixels.dtype), device=ctx.pixels.device
    )
    for batch in mask_batches(masks, cells, prob, size, seed, batch_size, ctx.pixels.dtype):
        batch = batch.to(ctx.pixels.device)  # (n, H, W)
        for image in range(ctx.num_images):
            masked = ctx.pixels[image] * batch[:, None]  # (n, 3, H, W)
            scores = ctx.score_images(masked, batch_size=batch_size)  # (n, K)
            saliency[image] += rise_saliency(scores.to(saliency.dtype), batch.to(saliency.dtype), masks, prob)
    return MapResult(
        maps=saliency,
        scores=ctx.model_scores(),
        input_size=size,
        options={"masks": masks, "cells": cells, "prob": prob, "seed": seed},
    )


register_method(
    MethodSpec(
        name="rise",
        assumes_pooled_score=None,  # any scalar of the image: the ITM score too
        families=("*",),  # reads the model through the family adapter only
        paper="Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box Models, BMVC 2018",
        image=rise,
        modifies_input=True,
        slow=True,
        defaults={"masks": 4000, "cells": 8, "prob": 0.5, "batch_size": 64, "seed": 0},
        summary="sum_i S(I * M_i) M_i / (N p) over random upsampled, shifted s x s masks (pixel resolution)",
    )
)
