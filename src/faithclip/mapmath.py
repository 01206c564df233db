"""Pure functions on a map's values, shared by ``Explanation``, the metrics, the audit and the report drawings:
min-max scaling, upsampling, average ranks and Spearman's rank correlation (one implementation each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The largest max |a - b| / max(|a|, |b|) accepted, per dtype of the model the maps were computed in. float64
# and float32: rounding of the two computation orders (docs/equivalence.md). Half precision: both maps
# are computed from bf16/fp16 activations and gradients, so they differ by a few of that dtype's
# epsilons (bf16 2^-8 = 3.9e-3, fp16 2^-11 = 4.9e-4); measured on the shipped model 5.1e-3 (bf16) and
# 9.1e-4 (fp16), 2026-12-01, both towers, 1 and 2 layers: the bounds are about four times that.
EQUIVALENCE_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}


def minmax(values: torch.Tensor, dim: int | tuple[int, ...] | None = None, constant: float = 0.0) -> torch.Tensor:
    """``(x - min) / (max - min)`` over ``dim`` (``None``: the whole tensor), in the values' own dtype.

    A constant slice (``max == min``) becomes ``constant``: 0 by default; the published Grad-ECLIP lambda
    uses 1 (no reweighting). Non-finite values give non-finite results; ``Explanation.normalized`` refuses them.
    """
    if dim is None:
        low, high = values.min(), values.max()
    else:
        low, high = values.amin(dim=dim, keepdim=True), values.amax(dim=dim, keepdim=True)
    span = high - low
    flat = span == 0
    return torch.where(
        flat, torch.full_like(values, constant), (values - low) / torch.where(flat, torch.ones_like(span), span)
    )


def upsample(patch_map: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(gh, gw)`` -> ``(H, W)`` by ``F.interpolate`` (``align_corners=False`` for linear modes)."""
    grid = patch_map.detach().double()[None, None]  # (1, 1, gh, gw)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(grid, size=tuple(size), mode=mode, **kwargs)[0, 0]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..n`` of the flattened values in float64, ties given their average rank (as
    ``scipy.stats.rankdata``'s default ``method="average"``)."""
    flat = values.detach().reshape(-1).to(torch.float64)
    sorted_values, order = torch.sort(flat, stable=True)
    n = flat.numel()
    new_group = torch.ones(n, dtype=torch.bool, device=flat.device)
    new_group[1:] = sorted_values[1:] != sorted_values[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1  # (n,) tie-group id in sorted order
    groups = int(group[-1]) + 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=flat.device)
    group_sum = torch.zeros(groups, dtype=torch.float64, device=flat.device).index_add_(0, group, positions)
    group_size = torch.zeros(groups, dtype=torch.float64, device=flat.device).index_add_(
        0, group, torch.ones_like(positions)
    )
    ranks = torch.empty(n, dtype=torch.float64, device=flat.device)
    ranks[order] = (group_sum / group_size)[group]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally sized tensors: Pearson's correlation of their average
    ranks. NaN when either is constant (it has no ranking)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = torch.sqrt((ra**2).sum() * (rb**2).sum())
    if denominator == 0:
        return float("nan")
    return float((ra * rb).sum() / denominator)


__all__ = ["EQUIVALENCE_TOLERANCE", "average_ranks", "minmax", "spearman", "upsample"]
