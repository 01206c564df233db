"""Pure functions on a map's values, shared by ``Explanation`` and the report drawings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The largest max |a - b| / max |a| accepted, per dtype of the model the maps were computed in. float64
# and float32: rounding of the two computation orders (docs/equivalence.md). Half precision: both maps
# are computed from bf16/fp16 activations and gradients, so they differ by a few of that dtype's
# epsilons (bf16 2^-8 = 3.9e-3, fp16 2^-11 = 4.9e-4); measured on the shipped model 5.1e-3 (bf16) and
# 9.1e-4 (fp16), 2026-12-01, both towers, 1 and 2 layers: the bounds are about four times that.
EQUIVALENCE_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}



def minmax(values: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)``; constant input gives zeros."""
    values = values.detach().double()
    low, high = values.min(), values.max()
    if not torch.isfinite(low) or not torch.isfinite(high):
        raise ValueError("map holds NaN or infinite values")
    span = high - low
    return torch.zeros_like(values) if span == 0 else (values - low) / span


def upsample(patch_map: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(gh, gw)`` -> ``(H, W)`` by ``F.interpolate`` (``align_corners=False`` for linear modes)."""
    grid = patch_map.detach().double()[None, None]  # (1, 1, gh, gw)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(grid, size=tuple(size), mode=mode, **kwargs)[0, 0]
