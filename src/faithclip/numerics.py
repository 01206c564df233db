"""When two floating-point results count as the same number: the project's one tolerance policy.

Two computations of the same quantity that take different code paths (another batch composition, grad mode
on or off, another thread count, another CPU's kernels) agree to rounding, not to the bit: which BLAS kernel
runs, and so the order of each reduction, depends on the shapes, the threads and the processor. faithclip
therefore calls two such results equal when

    |a - b|  <=  rtol[kind][dtype] * max(|a|, |b|, scale)

- ``kind="value"``: scores, embeddings, logits, probabilities; ``scale`` is the quantity's natural unit
  (1 for cosines, probabilities and logits).
- ``kind="map"``: gradient-derived maps, compared relative to their largest value (``scale=0``). A map is
  a sum of products that cancel (a logit's gradient is the temperature times the cosine's): its rounding
  error is relative to those terms, not to the map's peak, so its bound is wider.

``rtol`` is derived from measured rounding (``python benchmarks/rounding.py``; docs/testing.md has the
table): the largest relative difference seen between two code paths on the shipped models and the ViT-B/32
architecture, times three or more (float32 and float64: six or more), and never below 8 of the dtype's rounding units (2^-53, 2^-24,
2^-8, 2^-11). Exact equality is used only where it holds by construction (the same tensor, a copy, a
deterministic rerun of the same call on the same machine) and says so where it is used.

Not this policy: Grad-ECLIP vs Attention-ECLIP are two formulas for one map
(``faithclip.mapmath.EQUIVALENCE_TOLERANCE``, docs/equivalence.md), with their own measured bounds.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Relative bounds for "the same computation along different kernels", per kind and dtype of the model.
# Measured worst cases (benchmarks/rounding.py, 2026-12-02, AMD EPYC, AVX2; docs/testing.md):
#   value: float64 0, float32 3.9e-7, bfloat16 1.7e-2 (SigLIP's pooling attention vs its recomputation),
#          float16 1.5e-3
#   map:   float64 3.4e-14, float32 1.6e-5, bfloat16 7.6e-2, float16 1.1e-2 (all SigLIP's logit maps, batch
#          of 8 vs one image: the logit's temperature scales terms that cancel)
ROUNDING_RTOL: dict[str, dict[str, float]] = {
    "value": {"float64": 1e-12, "float32": 1e-5, "bfloat16": 6e-2, "float16": 1e-2},
    "map": {"float64": 1e-12, "float32": 1e-4, "bfloat16": 2.5e-1, "float16": 5e-2},
}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.float32`` / ``"float32"`` -> ``"float32"``."""
    name = str(dtype).replace("torch.", "")
    if name not in ROUNDING_RTOL["value"]:
        raise ValueError(f"no rounding tolerance for dtype {name!r}; known: {', '.join(ROUNDING_RTOL['value'])}")
    return name


def rounding_rtol(dtype: torch.dtype | str, kind: str = "value") -> float:
    """The relative bound for two code paths computing the same ``kind`` of quantity in ``dtype``."""
    if kind not in ROUNDING_RTOL:
        raise ValueError(f"kind must be one of {', '.join(ROUNDING_RTOL)}, not {kind!r}")
    return ROUNDING_RTOL[kind][dtype_name(dtype)]


def relative_difference(a: Any, b: Any, scale: float = 1.0) -> float:
    """``max |a - b| / max(max|a|, max|b|, scale)`` over all elements (tensors, arrays or numbers); infinite
    when one holds a NaN, or an infinity the other does not hold at the same place."""
    a, b = _float64(a), _float64(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.all()):
        if bool(torch.isnan(a).any() or torch.isnan(b).any()) or not bool(((a == b) | finite).all()):
            return math.inf
        a, b = a[finite], b[finite]
    if a.numel() == 0:
        return 0.0
    denominator = max(float(a.abs().max()), float(b.abs().max()), scale)
    return float((a - b).abs().max()) / denominator if denominator > 0 else 0.0


def _float64(values: Any) -> torch.Tensor:
    """A float64 CPU copy; numbers and lists are read as float64 directly (not through float32)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64)
    return torch.as_tensor(values, dtype=torch.float64)


def same_to_rounding(a: Any, b: Any, dtype: torch.dtype | str, kind: str = "value", scale: float | None = None) -> bool:
    """True when ``a`` and ``b`` agree within the documented rounding bound of ``dtype`` and ``kind``
    (``scale`` defaults to 1 for values and 0 for maps)."""
    scale = (1.0 if kind == "value" else 0.0) if scale is None else scale
    return relative_difference(a, b, scale) <= rounding_rtol(dtype, kind)


__all__ = ["ROUNDING_RTOL", "dtype_name", "relative_difference", "rounding_rtol", "same_to_rounding"]
