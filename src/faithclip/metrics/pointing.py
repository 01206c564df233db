"""Pointing game and energy-based pointing game.

Pointing game: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 (as in
TorchRay's ``PointingGame``): with the map upsampled to the scored image, ``p* = argmax_p map(p)`` (the
first maximum in raster order), a hit when some object pixel lies within ``tolerance`` pixels of ``p*``:

    hit = 1[ min_{q in object} ||p* - q||_2 <= tolerance ]          (tolerance 15 px by default)

Energy-based pointing game: Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs",
CVPR-W 2020, on the map's positive part:

    energy = sum_{p in object} ReLU(map(p)) / sum_{p not ignored} ReLU(map(p))

Pixels marked ``ignore`` (VOC's 255 boundary label) count neither as object nor as background: they are
left out of both sums, and a maximum on them is judged by its distance to the object like any other.
A map without positive mass has no energy share (NaN, left out of the mean and counted). The object is
a boolean mask, or a box ``(x0, y0, x1, y1)`` with exclusive ends turned into one (``box_mask``).

Chance levels (``MetricSpec.chance``, computed once per image from the data alone, shown beside the
methods): the pointing game of the image-centre map (its single maximum at ``(H // 2, W // 2)``, Zhang et
al.'s "Center" baseline), and the energy share of a uniform map (the object's share of the non-ignored
pixels). A method at or below its chance row localises no better than a map that ignores the model.
"""

from __future__ import annotations

import torch

from faithclip.metrics import MetricSpec, register_metric
from faithclip.metrics.case import MetricCase, MetricValue, pixel_map


def box_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` bool mask of the box ``(x0, y0, x1, y1)``, ends exclusive."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(size, dtype=torch.bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def pointing_hit(saliency: torch.Tensor, mask: torch.Tensor, tolerance: float = 15.0) -> float:
    """1.0 if the map's maximum lies within ``tolerance`` px of the mask, else 0.0. ``(H, W)``, ``(H, W)`` bool."""
    if not mask.any():
        raise ValueError("the object mask is empty; the pointing game needs at least one object pixel")
    width = saliency.shape[-1]
    peak = int(torch.argmax(saliency.reshape(-1)))  # first maximum in raster order
    peak_yx = torch.tensor([peak // width, peak % width], dtype=torch.float64)  # (2,)
    object_yx = torch.nonzero(mask).to(torch.float64)  # (M, 2)
    distance = torch.sqrt(((object_yx - peak_yx) ** 2).sum(-1)).min()
    return float(distance <= tolerance)


def energy_share(saliency: torch.Tensor, mask: torch.Tensor, ignore: torch.Tensor | None = None) -> float:
    """Share of the map's positive mass inside the mask (NaN when there is none). ``(H, W)`` each."""
    positive = saliency.to(torch.float64).clamp(min=0)  # (H, W)
    if ignore is not None:
        positive = torch.where(ignore, torch.zeros_like(positive), positive)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    return float(positive[mask].sum() / total)


# ---- runners --------------------------------------------------------------------------------------
def _require_mask(case: MetricCase) -> torch.Tensor:
    if case.mask is None:
        raise ValueError("this metric needs an object mask or box; use a data set with masks (voc:, shapes)")
    return case.mask


def run_pointing(case: MetricCase, tolerance: float = 15.0) -> MetricValue:
    return MetricValue(
        values={"hit": pointing_hit(pixel_map(case.patch_map, case.size), _require_mask(case), tolerance)}
    )


def centre_map(size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W)`` map with its single maximum at the image centre ``(H // 2, W // 2)``: the "Center" baseline
    of the pointing game (Zhang et al. 2016), which knows nothing of the model or the prompt."""
    saliency = torch.zeros(size, dtype=torch.float64, device=device)
    saliency[size[0] // 2, size[1] // 2] = 1.0
    return saliency


def chance_pointing(case: MetricCase, tolerance: float = 15.0) -> MetricValue:
    """The pointing game of the image-centre map (same hit rule and tolerance as the methods)."""
    mask = _require_mask(case)
    return MetricValue(values={"hit": pointing_hit(centre_map(case.size, mask.device), mask, tolerance)})


def chance_energy(case: MetricCase) -> MetricValue:
    """The energy share of a uniform map: the object's share of the non-ignored pixels."""
    mask = _require_mask(case)
    return MetricValue(
        values={
            "energy": energy_share(torch.ones(case.size, dtype=torch.float64, device=mask.device), mask, case.ignore)
        }
    )


def run_energy(case: MetricCase) -> MetricValue:
    return MetricValue(
        values={"energy": energy_share(pixel_map(case.patch_map, case.size), _require_mask(case), case.ignore)}
    )


register_metric(
    MetricSpec(
        name="pointing_game",
        category="localisation",
        higher_is_better=True,
        protocol="pointing, {tolerance:g} px",
        summary="hit if the map's maximum lies within 15 px of the object",
        paper="Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016",
        run=run_pointing,
        outputs={"hit": "pointing game"},
        needs_mask=True,
        defaults={"tolerance": 15.0},
        chance=chance_pointing,
        chance_label="the image centre",
    )
)
register_metric(
    MetricSpec(
        name="energy_pointing_game",
        category="localisation",
        higher_is_better=True,
        protocol="energy, ReLU",
        summary="share of the map's positive mass inside the object",
        paper="Wang et al., Score-CAM: Score-Weighted Visual Explanations for CNNs, CVPR-W 2020",
        run=run_energy,
        outputs={"energy": "energy pointing game"},
        needs_mask=True,
        chance=chance_energy,
        chance_label="a uniform map",
    )
)
