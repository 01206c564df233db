"""The one helper every test uses to compare floats that two code paths computed (docs/testing.md).

Two computations of the same quantity along different code paths (batch composition, grad mode, threads,
the CPU's kernels) agree to rounding, not to the bit, and which kernels run depends on the processor: CI
may be Intel or AMD. Such pairs are compared with ``assert_rounding_close`` at the bound of the dtype they
were computed in (``faithclip.numerics.ROUNDING_RTOL``). ``==`` / ``torch.equal`` stay only where the two
values are the same computation by construction (the same tensor, a copy, a rerun of the same call), and
the assert says so in a comment.
"""

from __future__ import annotations

from typing import Any

import torch

from faithclip.numerics import relative_difference, rounding_rtol


def assert_rounding_close(
    actual: Any,
    expected: Any,
    dtype: torch.dtype | str = torch.float32,
    *,
    kind: str = "value",
    scale: float | None = None,
    what: str = "",
) -> None:
    """Assert ``max|actual - expected| <= rtol[kind][dtype] * max(max|actual|, max|expected|, scale)``.

    ``kind="value"`` (scores, embeddings; ``scale`` 1 by default) or ``"map"`` (maps; ``scale`` 0 by
    default: relative to the map's largest value).
    """
    scale = (1.0 if kind == "value" else 0.0) if scale is None else scale
    difference = relative_difference(actual, expected, scale)
    bound = rounding_rtol(dtype, kind)
    assert difference <= bound, (
        f"{what + ': ' if what else ''}relative difference {difference:.3e} exceeds the "
        f"{str(dtype).replace('torch.', '')} {kind} rounding bound {bound:.0e}"
    )
