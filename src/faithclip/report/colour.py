"""Colour scales for maps: the one rule every figure, card and overlay draws with.

A scale is fixed by the RAW values of the maps it is shared by, never stretched to their min and max:

- **non-negative maps** (every value >= 0): a sequential, colour-blind-safe map (``cividis``, designed for
  readers with colour-vision deficiency: Nuñez, Anderton & Renslow 2018) from **0** to the largest value;
- **signed maps** (any value < 0): a diverging map (``RdBu_r``: blue negative, white zero, red positive)
  **centred on zero**, from ``-m`` to ``+m`` with ``m`` the largest absolute value. A map lying between
  -0.355 and -0.315 is therefore drawn as an even, pale-to-mid blue, not as a bright hot spot;
- **clipping** (``clip=99``): the top of the scale is the 99th percentile of the values (of their
  absolute values on a signed scale) instead of their maximum; values beyond it take the end colour and the
  colour bar gets a pointed end (matplotlib's ``extend``) and says where it was clipped.

Every colour bar therefore shows zero, and its ends are the ends of the colour mapping: a colour never
stands for a value range other than the one the bar claims. Opacity over the image grows with the colour's
distance from zero, so where the map is 0 the image shows through untouched.

``colour_scale(maps)`` computes one scale for several maps; ``scale_groups`` says which maps of a figure
share one. ``"shared"`` (the default): every map in the same units, i.e. of the same method and target, so
that one method's maps of several prompts or images compare by colour (an absent prompt's map is drawn on
the present one's scale). Different methods' maps are in different units (a gradient x activation sum, a
change of cosine under masking, an attention weight), so a common colour would compare numbers that do not
measure the same thing; ``"all"`` puts them on one scale anyway, for maps whose units the user knows
agree; ``"per_map"`` gives each map its own scale (still from 0, never stretched to its minimum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SEQUENTIAL_CMAP = "cividis"
DIVERGING_CMAP = "RdBu_r"
SCALES = ("shared", "all", "per_map")
MAX_OPACITY = 0.9


@dataclass(frozen=True)
class ColourScale:
    """One colour mapping: raw values ``low`` .. ``high`` (``low`` is 0, or ``-high`` when ``signed``).

    ``data_low`` / ``data_high`` are the raw range of the maps drawn with it; ``clip`` the percentile the top
    was clipped at (``None``: not clipped, ``high`` is the largest (absolute) value)."""

    low: float
    high: float
    signed: bool
    data_low: float
    data_high: float
    clip: float | None = None

    @property
    def cmap(self) -> str:
        return DIVERGING_CMAP if self.signed else SEQUENTIAL_CMAP

    @property
    def extend(self) -> str:
        """Which ends of the colour bar are pointed: values beyond them were clipped to the end colour."""
        above, below = self.data_high > self.high, self.data_low < self.low
        return "both" if above and below else "max" if above else "min" if below else "neither"

    def norm(self) -> Any:
        from matplotlib.colors import Normalize

        return Normalize(vmin=self.low, vmax=self.high)

    def position(self, values: np.ndarray) -> np.ndarray:
        """Where each raw value falls on the colour map, in [0, 1] (clipped at the ends)."""
        return np.clip((np.asarray(values, dtype=np.float64) - self.low) / (self.high - self.low), 0.0, 1.0)

    def strength(self, values: np.ndarray) -> np.ndarray:
        """In [0, 1]: a value's distance from zero relative to the scale's end (the overlay's opacity grows with it)."""
        return np.clip(np.abs(np.asarray(values, dtype=np.float64)) / self.high, 0.0, 1.0)

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """``(..., 4)`` colours of raw values, transparent at 0 and up to ``MAX_OPACITY`` at the scale's ends."""
        from matplotlib import colormaps

        colours = colormaps[self.cmap](self.position(values))
        colours[..., 3] = MAX_OPACITY * self.strength(values) ** 0.6
        return colours

    def ticks(self) -> list[float]:
        """Colour-bar ticks: the two ends and zero (and the middle of a sequential bar)."""
        return [self.low, 0.0, self.high] if self.signed else [0.0, self.high / 2, self.high]

    def label(self) -> str:
        """The colour bar's label: raw units, and where the scale was clipped."""
        if self.clip is None:
            return "raw map value"
        beyond = max(abs(self.data_low), abs(self.data_high)) if self.signed else self.data_high
        return f"raw map value, clipped at {self.clip:g}th pct (raw max {tick_text(beyond)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "signed": self.signed,
            "colour_map": self.cmap,
            "data_low": self.data_low,
            "data_high": self.data_high,
            "clip_percentile": self.clip,
        }


def tick_text(value: float) -> str:
    """A raw value in three significant digits, written in full (no offset or ``1e-2`` multiplier)."""
    return "0" if value == 0 else f"{value:.3g}"


def colour_scale(maps: Sequence[Any], clip: float | None = None) -> ColourScale:
    """One scale for all of ``maps`` (tensors or arrays of raw values; non-finite values are ignored).

    ``clip``: a percentile in (50, 100] for the scale's top (of the absolute values on a signed scale);
    ``None`` uses the largest value."""
    if clip is not None and not 50 < clip <= 100:
        raise ValueError(f"clip is a percentile in (50, 100], e.g. 99; got {clip}")
    values = np.concatenate([_values(m).ravel() for m in maps]) if maps else np.zeros(1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    data_low, data_high = float(values.min()), float(values.max())
    signed = data_low < 0
    magnitude = np.abs(values) if signed else values
    top = float(np.percentile(magnitude, clip)) if clip is not None else float(magnitude.max())
    if top <= 0:  # every value is 0 (or clipped to 0): any positive top draws them transparent
        top = 1.0 if data_high <= 0 and data_low >= 0 else float(magnitude.max())
    return ColourScale(-top if signed else 0.0, top, signed, data_low, data_high, clip)


def scale_groups(explanations: Sequence[Any], scale: str) -> list[int]:
    """The scale group of each explanation: ``"shared"`` one per (method, target) (the maps' units),
    ``"all"`` one for all, ``"per_map"`` one each."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(repr(s) for s in SCALES)}; got {scale!r}")
    if scale == "all":
        return [0] * len(explanations)
    if scale == "per_map":
        return list(range(len(explanations)))
    units = list(dict.fromkeys((e.method, e.target) for e in explanations))
    return [units.index((e.method, e.target)) for e in explanations]


def scales_of(explanations: Sequence[Any], scale: str = "shared", clip: float | None = None) -> list[ColourScale]:
    """The colour scale each explanation is drawn with."""
    groups = scale_groups(explanations, scale)
    shared = {g: colour_scale([e.map for e, h in zip(explanations, groups) if h == g], clip) for g in set(groups)}
    return [shared[g] for g in groups]


def _values(patch_map: Any) -> np.ndarray:
    if hasattr(patch_map, "detach"):
        return patch_map.detach().cpu().double().numpy()
    return np.asarray(patch_map, dtype=np.float64)


__all__ = [
    "ColourScale",
    "DIVERGING_CMAP",
    "SCALES",
    "SEQUENTIAL_CMAP",
    "colour_scale",
    "scale_groups",
    "scales_of",
    "tick_text",
]
