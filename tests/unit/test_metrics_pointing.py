"""Pointing game and energy pointing game on fixtures whose answers are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from faithclip.metrics import METRICS
from faithclip.metrics.case import MetricCase
from faithclip.metrics.pointing import (
    box_mask,
    chance_energy,
    chance_pointing,
    energy_share,
    pointing_hit,
    run_energy,
    run_pointing,
)

SIZE = (64, 48)  # (H, W): non-square on purpose


def _disk(cy: float, cx: float, radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(SIZE[0]), torch.arange(SIZE[1]), indexing="ij")
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2


def test_a_map_equal_to_the_mask_scores_one():
    mask = _disk(20, 30, 6)
    saliency = mask.double()
    assert pointing_hit(saliency, mask) == 1.0
    assert energy_share(saliency, mask) == 1.0


def test_a_map_outside_the_object_scores_zero():
    mask = _disk(10, 10, 4)
    saliency = _disk(55, 40, 3).double()  # peak at least 15 px away from every object pixel
    assert pointing_hit(saliency, mask) == 0.0
    assert energy_share(saliency, mask) == 0.0


def test_tolerance_is_a_euclidean_distance_to_the_nearest_object_pixel():
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[30, 10] = True
    saliency = torch.zeros(SIZE, dtype=torch.float64)
    saliency[30 + 9, 10 + 12] = 1.0  # distance sqrt(81 + 144) = 15 exactly
    assert pointing_hit(saliency, mask, tolerance=15) == 1.0
    assert pointing_hit(saliency, mask, tolerance=14.99) == 0.0
    saliency[30 + 9, 10 + 12] = 0.0
    saliency[30 + 11, 10 + 11] = 1.0  # sqrt(242) = 15.56
    assert pointing_hit(saliency, mask, tolerance=15) == 0.0


def test_energy_is_the_share_of_positive_mass_and_ignores_negative_values_and_ignored_pixels():
    mask = box_mask((0, 0, 10, 10), SIZE)
    saliency = torch.zeros(SIZE, dtype=torch.float64)
    saliency[0:10, 0:10] = 3.0 / 100  # 3 units inside
    saliency[50, 40] = 1.0  # 1 unit outside
    saliency[60, 0] = -5.0  # negative: not mass
    assert energy_share(saliency, mask) == pytest.approx(0.75, abs=1e-12)
    ignore = torch.zeros(SIZE, dtype=torch.bool)
    ignore[50, 40] = True  # a boundary pixel counts neither way
    assert energy_share(saliency, mask, ignore) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(energy_share(-saliency.abs(), mask))  # no positive mass: undefined, not 0


def test_box_mask_ends_are_exclusive():
    mask = box_mask((2, 3, 5, 7), SIZE)
    assert mask.sum() == 3 * 4 and mask[3, 2] and mask[6, 4] and not mask[7, 4] and not mask[3, 5]


def test_runners_upsample_a_patch_map_to_the_scored_image():
    """A patch-grid map peaked on the object's patch points inside it; its energy is mostly inside."""
    mask = box_mask((16, 32, 24, 40), SIZE)  # patch (4, 2) of an 8x8-pixel grid on 64x48
    patch_map = torch.zeros(8, 6)
    patch_map[4, 2] = 1.0
    case = MetricCase(score_ctx=None, rgb=torch.zeros(3, *SIZE), patch_map=patch_map, label=0, seed=0, mask=mask)
    assert run_pointing(case).values == {"hit": 1.0}
    energy = run_energy(case).values["energy"]
    assert 0.25 < energy < 1.0  # bilinear upsampling spreads mass into the neighbouring patches
    with pytest.raises(ValueError, match="mask"):
        run_energy(MetricCase(score_ctx=None, rgb=torch.zeros(3, *SIZE), patch_map=patch_map, label=0, seed=0))


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        pointing_hit(torch.rand(SIZE), torch.zeros(SIZE, dtype=torch.bool))


def test_registry_metadata():
    for name in ("pointing_game", "energy_pointing_game"):
        spec = METRICS.get(name)
        assert spec.category == "localisation" and spec.higher_is_better and spec.needs_mask
    assert METRICS.get("pointing_game").column("hit") == "pointing game [pointing, 15 px]"
    assert METRICS.get("pointing_game").column("hit", {"tolerance": 4.3}) == "pointing game [pointing, 4.3 px]"
    assert METRICS.get("deletion_rise").column("auc", {"substrate": "black"}) == "deletion AUC [rise; substrate=black]"


def test_chance_levels_worked_by_hand():
    """The image-centre map's hit and a uniform map's energy, on masks whose answer is known by construction."""
    size = (40, 60)  # centre pixel (20, 30)
    case = lambda mask, ignore=None: MetricCase(
        score_ctx=None,
        rgb=torch.zeros(3, *size),
        patch_map=torch.zeros(2, 2),
        label=0,
        seed=0,
        mask=mask,
        ignore=ignore,
    )
    assert chance_pointing(case(box_mask((30, 20, 31, 21), size))).values == {"hit": 1.0}  # the centre itself
    assert chance_pointing(case(box_mask((45, 20, 46, 21), size))).values == {"hit": 1.0}  # 15 px right: within
    assert chance_pointing(case(box_mask((46, 20, 47, 21), size))).values == {"hit": 0.0}  # 16 px right
    assert chance_pointing(case(box_mask((46, 20, 47, 21), size)), tolerance=16).values == {"hit": 1.0}
    mask = box_mask((0, 0, 10, 6), size)  # 60 object pixels
    ignore = box_mask((50, 30, 60, 40), size)  # 100 ignored pixels, none in the object
    assert chance_energy(case(mask)).values["energy"] == pytest.approx(60 / 2400)
    assert chance_energy(case(mask, ignore)).values["energy"] == pytest.approx(60 / 2300)
    for name, label in (("pointing_game", "the image centre"), ("energy_pointing_game", "a uniform map")):
        assert METRICS.get(name).chance_label == label
