"""Grad-ECLIP == Attention-ECLIP, measured.

``verify_equivalence`` explains every image-text pair with both methods on both towers and reports the
largest absolute difference and the largest difference relative to the map's scale
(``max |a - b| / max(|a|, |b|)``, ``faithclip.numerics.relative_difference``). docs/equivalence.md derives why the two are equal.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from faithclip.api import explain, explain_text
from faithclip.mapmath import EQUIVALENCE_TOLERANCE
from faithclip.models.clip import ImageInput, ModelHandle
from faithclip.numerics import relative_difference


def equivalence_tolerance(dtype: str | torch.dtype) -> float:
    """The accepted relative difference for maps computed in ``dtype`` (e.g. ``"bfloat16"``)."""
    return EQUIVALENCE_TOLERANCE[str(dtype).replace("torch.", "")]


@dataclass
class EquivalenceRow:
    side: str
    layers: int
    dtype: str
    pairs: int
    max_abs_diff: float
    max_rel_diff: float
    max_map_value: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def verify_equivalence(
    model: ModelHandle,
    images: ImageInput | Sequence[ImageInput],
    texts: str | Sequence[str] | torch.Tensor,
    *,
    layers: Sequence[int] = (1,),
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    sides: Sequence[str] | None = None,
) -> list[EquivalenceRow]:
    """Compare Grad-ECLIP with Attention-ECLIP on every pair, per side, number of layers and dtype.

    ``sides``: default every side the model's family has. A tower pooled by an attention head (SigLIP's
    image tower) has one explained layer, the head: only ``layers`` 1 is compared there. A dtype other than the model's runs on a
    converted deep copy (the user's model is not touched).
    """
    sides = [
        side for side in (("image", "text") if sides is None else sides) if model.family.has_side(side)
    ]  # a classifier: image only
    rows = []
    for dtype in dtypes:
        handle = model if dtype == model.dtype else _converted(model, dtype)
        pixels = model.pixels(images).to(dtype)
        for side in sides:
            run = explain if side == "image" else explain_text
            pooled_by_head = model.family.pooling_attention(model.model, model.family.towers[side]) is not None
            for n in layers if not pooled_by_head else [n for n in layers if n == 1]:  # a head is one layer
                a = _as_list(run(handle, pixels, texts, "grad_eclip", layers=n))
                b = _as_list(run(handle, pixels, texts, "attention_eclip", layers=n))
                maps_a = torch.stack([e.map.double() for e in a])
                maps_b = torch.stack([e.map.double() for e in b])
                rows.append(
                    EquivalenceRow(
                        side=side,
                        layers=n,
                        dtype=str(dtype).replace("torch.", ""),
                        pairs=len(a),
                        max_abs_diff=(maps_a - maps_b).abs().max().item(),
                        max_rel_diff=max(relative_difference(x, y, 0.0) for x, y in zip(maps_a, maps_b)),
                        max_map_value=maps_a.abs().max().item(),
                    )
                )
    return rows


def format_table(rows: Sequence[EquivalenceRow]) -> str:
    header = (
        f"{'side':<6} {'layers':>6} {'dtype':<8} {'pairs':>5} {'max |diff|':>12} {'max rel diff':>13} {'max |map|':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.side:<6} {r.layers:>6} {r.dtype:<8} {r.pairs:>5} {r.max_abs_diff:>12.3e} "
            f"{r.max_rel_diff:>13.3e} {r.max_map_value:>11.3e}"
        )
    return "\n".join(lines)


def _converted(model: ModelHandle, dtype: torch.dtype) -> ModelHandle:
    clone = copy.deepcopy(model.model).to(dtype)
    return ModelHandle(
        model=clone, tokenizer=model.tokenizer, preprocess=model.preprocess, name=model.name, family=model.family
    )


def _as_list(result):
    return result if isinstance(result, list) else [result]
