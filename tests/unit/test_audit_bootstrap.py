"""The audit's bootstrap intervals and the correctness split: oracles are scipy (intervals) and fixtures whose answer is
known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faithclip.audit.bootstrap import Bootstrap, difference_interval, mean_interval, percentile_interval
from faithclip.audit.ladder import shape_of, split_statistics

scipy_stats = pytest.importorskip("scipy.stats")


def test_mean_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    hits = (rng.random(120) < 0.4).astype(float)
    ours = mean_interval(hits, Bootstrap(resamples=4000, seed=1))
    theirs = scipy_stats.bootstrap(
        (hits,),
        np.mean,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        random_state=np.random.default_rng(2),
    ).confidence_interval
    assert ours["value"] == pytest.approx(hits.mean())
    # two independent Monte-Carlo runs of the same percentile interval: agree to Monte-Carlo error
    assert ours["low"] == pytest.approx(theirs.low, abs=0.02)
    assert ours["high"] == pytest.approx(theirs.high, abs=0.02)


def test_difference_interval_agrees_with_scipy_independent_samples():
    rng = np.random.default_rng(4)
    right, wrong = rng.normal(0.3, 1, 80), rng.normal(0.0, 1, 50)
    ours = difference_interval(right, wrong, Bootstrap(resamples=4000, seed=1))
    theirs = scipy_stats.bootstrap(
        (right, wrong),
        lambda a, b: np.mean(a) - np.mean(b),
        n_resamples=4000,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    assert ours["value"] == pytest.approx(right.mean() - wrong.mean())
    assert ours["low"] == pytest.approx(theirs.low, abs=0.04)
    assert ours["high"] == pytest.approx(theirs.high, abs=0.04)


def test_interval_is_reproducible_and_degenerate_for_constant_data():
    values = np.random.default_rng(0).random(30)
    assert mean_interval(values) == mean_interval(values)  # fixed bootstrap seed
    assert mean_interval(np.full(25, 0.25)) == {"value": 0.25, "low": 0.25, "high": 0.25}
    assert math.isnan(mean_interval(np.array([]))["low"])


def test_percentile_interval_of_a_uniform_grid():
    samples = np.arange(1001) / 1000  # quantiles known exactly: 0.025 and 0.975
    assert percentile_interval(samples, 0.95) == pytest.approx((0.025, 0.975))


def test_split_statistics_difference_and_verdict():
    correct = [True] * 6 + [False] * 4
    per_scene = {
        "better_when_right": {"pointing": [1.0] * 6 + [0.0] * 4, "ins_minus_del": [0.0] * 10},
        "worse_when_right": {"pointing": [0.0] * 6 + [1.0] * 4, "ins_minus_del": [0.0] * 10},
    }
    one_shape = [0] * 10
    split = split_statistics(correct, per_scene, one_shape, min_group=4, permutations=500)
    assert (split["right"], split["wrong"]) == (6, 4)
    good, bad = split["methods"]["better_when_right"], split["methods"]["worse_when_right"]
    assert good["pointing_difference"] == 1.0 and good["pointing_difference_interval"] == [1.0, 1.0]
    # one permutation in C(10, 6) = 210 reproduces the split exactly: p ~ 1/210 each, Holm x 4 < 0.05
    assert good["pointing_within_shape"] == 1.0 and good["p_greater_holm"] < 0.05
    assert good["verdict"] == "pass" and bad["verdict"] == "flagged"
    none_wrong = split_statistics([True] * 3, {"m": {"pointing": [1.0] * 3, "ins_minus_del": [0.0] * 3}}, [0, 1, 2])
    assert none_wrong["methods"]["m"]["verdict"] == "n/a"
    few = split_statistics(correct, per_scene, one_shape, min_group=20, permutations=100)
    assert few["methods"]["worse_when_right"]["verdict"] == "n/a"


def test_split_verdict_is_taken_within_shape():
    # shape 0 is always right and always hit, shape 1 always wrong and always missed; a mixed shape 2 has no
    # difference. Right - wrong is large, but within shape there is nothing: no verdict but inconclusive.
    correct = [True] * 10 + [False] * 10 + [True, False] * 10
    pointing = [1.0] * 10 + [0.0] * 10 + [0.5] * 20
    split = split_statistics(
        correct,
        {"m": {"pointing": pointing, "ins_minus_del": [0.0] * 40}},
        [0] * 10 + [1] * 10 + [2] * 20,
        min_group=5,
        permutations=200,
    )
    entry = split["methods"]["m"]
    assert entry["pointing_difference"] > 0.4 and entry["pointing_within_shape"] == 0.0
    assert entry["verdict"] == "inconclusive"


def test_shape_of_reads_the_colours_major_labels():
    from faithclip.shapes.world import SHAPES, class_caption

    for label in (0, 4, 7, 29):
        assert class_caption(label).endswith(SHAPES[shape_of([label])[0]])
