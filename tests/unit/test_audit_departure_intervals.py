"""The departure's intervals, n and paired contrasts. Oracles: the Wilson interval worked by hand, and per-image
map rows whose summaries are known by construction (identical maps, a constant shift, a constant map)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faithclip.audit.bootstrap import Bootstrap, median_interval, wilson_interval
from faithclip.audit.departure import summarise_maps
from faithclip.mapmath import spearman
from faithclip.report.audit_report import contrast_reading

Z95 = 1.959963984540054


def test_wilson_interval_worked_by_hand_for_3_of_10():
    # p = 0.3, n = 10, z^2 = 3.84146: centre = (0.3 + 0.192073) / 1.384146 = 0.355507,
    # half = (1.959964 / 1.384146) * sqrt(0.021 + 0.0096037) = 1.416009 * 0.174939 = 0.247716
    low, high = wilson_interval(3, 10, Z95)
    assert low == pytest.approx(0.355507 - 0.247716, abs=2e-6)
    assert high == pytest.approx(0.355507 + 0.247716, abs=2e-6)


def test_wilson_interval_at_zero_successes_is_z2_over_n_plus_z2():
    # p = 0: centre = half = (z^2 / 2n) / (1 + z^2 / n), so the interval is [0, z^2 / (n + z^2)] (not [0, 0])
    low, high = wilson_interval(0, 200, Z95)
    assert low == 0.0 and high == pytest.approx(Z95**2 / (200 + Z95**2), rel=1e-12)
    assert wilson_interval(200, 200, Z95)[0] == pytest.approx(1 - Z95**2 / (200 + Z95**2), rel=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def _rows(faithful_deletion, faithful_insertion, shift_deletion=0.0, shift_insertion=0.0):
    """Per-image map rows of two arms, ``published`` = faithful + a constant per-image shift."""
    return [
        {
            "spearman_faithful_vs_faithful": 1.0,
            "spearman_published_vs_faithful": 0.5,
            "deletion_auc_faithful": d,
            "insertion_auc_faithful": i,
            "deletion_auc_published": d + shift_deletion,
            "insertion_auc_published": i + shift_insertion,
        }
        for d, i in zip(faithful_deletion, faithful_insertion)
    ]


def test_identical_maps_give_a_contrast_of_exactly_zero_with_a_degenerate_interval():
    rng = np.random.default_rng(0)
    rows = _rows(rng.normal(-0.2, 0.1, 40), rng.normal(0.3, 0.1, 40))
    summary = summarise_maps(rows, ["faithful", "published"], Bootstrap(resamples=500, seed=3))
    for arm in ("faithful", "published"):
        for curve in ("deletion_auc", "insertion_auc"):
            contrast = summary["contrasts"][arm][curve]
            assert (contrast["value"], contrast["low"], contrast["high"], contrast["n"]) == (0.0, 0.0, 0.0, 40)
            assert contrast_reading(contrast, curve) == "no difference shown"


def test_paired_contrast_sees_a_constant_shift_that_the_per_arm_intervals_hide():
    # AUCs vary widely across images, the published map is worse by exactly 0.05 on every image: the paired
    # interval is [0.05, 0.05] although the two arms' own intervals overlap almost entirely
    rng = np.random.default_rng(1)
    rows = _rows(rng.uniform(-0.6, 0.0, 32), rng.uniform(0.0, 0.6, 32), shift_deletion=0.05, shift_insertion=-0.05)
    summary = summarise_maps(rows, ["faithful", "published"], Bootstrap(resamples=500, seed=3))
    deletion = summary["contrasts"]["published"]["deletion_auc"]
    insertion = summary["contrasts"]["published"]["insertion_auc"]
    for contrast, shift in ((deletion, 0.05), (insertion, -0.05)):
        assert contrast["value"] == pytest.approx(shift, abs=1e-12)
        assert contrast["low"] == pytest.approx(shift, abs=1e-12) and contrast["high"] == pytest.approx(
            shift, abs=1e-12
        )
    assert contrast_reading(deletion, "deletion_auc") == "worse"  # deletion: higher is worse
    assert contrast_reading(insertion, "insertion_auc") == "worse"  # insertion: lower is worse
    faithful, published = summary["intervals"]["deletion_auc_faithful"], summary["intervals"]["deletion_auc_published"]
    assert published[0] < faithful[1]  # the unpaired intervals overlap


def test_contrast_reading_follows_the_side_of_zero():
    assert contrast_reading({"low": -0.02, "high": -0.01}, "deletion_auc") == "better"
    assert contrast_reading({"low": 0.01, "high": 0.02}, "insertion_auc") == "better"
    assert contrast_reading({"low": -0.01, "high": 0.02}, "insertion_auc") == "no difference shown"
    assert contrast_reading({"low": math.nan, "high": math.nan}, "deletion_auc") == "undefined"


def test_constant_map_counts_as_undefined_spearman_and_leaves_the_mean():
    varying = torch.arange(16.0).reshape(4, 4)
    constant = torch.full((4, 4), 0.25)  # a constant map has no ranks: Spearman is undefined
    assert math.isnan(spearman(constant, varying))
    rows = _rows([-0.1, -0.2, -0.3], [0.1, 0.2, 0.3])
    rows[0]["spearman_published_vs_faithful"] = spearman(constant, varying)
    rows[1]["spearman_published_vs_faithful"] = spearman(varying, varying)  # 1
    rows[2]["spearman_published_vs_faithful"] = spearman(-varying, varying)  # -1
    summary = summarise_maps(rows, ["faithful", "published"], Bootstrap(resamples=200))
    key = "spearman_published_vs_faithful"
    assert summary["undefined"][key] == 1 and summary["n"][key] == 2
    assert summary["mean"][key] == pytest.approx(0.0, abs=1e-12)  # mean of 1 and -1, the NaN left out
    low, high = summary["intervals"][key]
    assert -1 - 1e-12 <= low <= high <= 1 + 1e-12
    assert summary["undefined"]["deletion_auc_published"] == 0 and summary["n"]["deletion_auc_published"] == 3


def test_summaries_of_no_images_are_empty():
    summary = summarise_maps([], ["faithful", "published"])
    assert summary == {"mean": {}, "n": {}, "undefined": {}, "intervals": {}, "contrasts": {}}


def test_median_interval_is_degenerate_for_constant_data_and_brackets_the_median():
    assert median_interval(np.full(9, 0.04)) == {"value": 0.04, "low": 0.04, "high": 0.04}
    values = np.random.default_rng(2).exponential(size=101)
    estimate = median_interval(values, Bootstrap(resamples=500, seed=1))
    assert estimate["value"] == np.median(values)  # the same call on the same array
    assert estimate["low"] < estimate["value"] < estimate["high"]
    assert median_interval(values, Bootstrap(resamples=500, seed=1)) == estimate  # seeded: reproducible
