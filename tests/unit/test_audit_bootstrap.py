"""P2's bootstrap: oracles are scipy (intervals, rank correlation) and fixtures whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faithclip.audit.bootstrap import (
    Bootstrap,
    average_ranks_rows,
    difference_interval,
    ladder_rho_interval,
    mean_interval,
    percentile_interval,
    spearman_rows,
    verdict,
)
from faithclip.audit.ladder import ladder_statistics, split_statistics

scipy_stats = pytest.importorskip("scipy.stats")


def test_mean_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    hits = (rng.random(120) < 0.4).astype(float)
    ours = mean_interval(hits, Bootstrap(resamples=4000, seed=1))
    theirs = scipy_stats.bootstrap((hits,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                                   random_state=np.random.default_rng(2)).confidence_interval
    assert ours["value"] == pytest.approx(hits.mean())
    # two independent Monte-Carlo runs of the same percentile interval: agree to Monte-Carlo error
    assert ours["low"] == pytest.approx(theirs.low, abs=0.02)
    assert ours["high"] == pytest.approx(theirs.high, abs=0.02)


def test_difference_interval_agrees_with_scipy_independent_samples():
    rng = np.random.default_rng(4)
    right, wrong = rng.normal(0.3, 1, 80), rng.normal(0.0, 1, 50)
    ours = difference_interval(right, wrong, Bootstrap(resamples=4000, seed=1))
    theirs = scipy_stats.bootstrap((right, wrong), lambda a, b: np.mean(a) - np.mean(b), n_resamples=4000,
                                   method="percentile", random_state=np.random.default_rng(5)).confidence_interval
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


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_rank_rows_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, (50, 5)).astype(float)
    b = rng.integers(0, 4, (50, 5)).astype(float)
    ranks = average_ranks_rows(a)
    ours = spearman_rows(a, b)
    for row in range(50):
        assert ranks[row] == pytest.approx(scipy_stats.rankdata(a[row]) - 1)
        expected = scipy_stats.spearmanr(a[row], b[row]).statistic
        if np.isnan(expected):
            assert np.isnan(ours[row])
        else:
            assert ours[row] == pytest.approx(expected, abs=1e-12)


def _constant_rungs(rates: list[float], n: int) -> np.ndarray:
    """Per-scene values whose every resample has exactly the given rung means (each rung is constant)."""
    return np.repeat(np.asarray(rates, dtype=float)[:, None], n, axis=1)


def test_ladder_rho_known_by_construction():
    correct = _constant_rungs([1.0, 0.75, 0.5, 0.25, 0.0], 40)
    tracking = _constant_rungs([0.9, 0.7, 0.5, 0.3, 0.1], 20)
    opposite = tracking[::-1]
    assert ladder_rho_interval(correct, tracking) == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert ladder_rho_interval(correct, opposite) == {"value": -1.0, "low": -1.0, "high": -1.0}
    flat = ladder_rho_interval(correct, _constant_rungs([0.5] * 5, 20))
    assert math.isnan(flat["value"]) and flat["low"] == flat["high"] == 0.0  # no order: counted as rho 0


def test_ladder_rho_interval_covers_noise_and_shrinks_with_scenes():
    rng = np.random.default_rng(7)
    accuracy = [0.95, 0.8, 0.5, 0.2, 0.05]
    pointing = [0.6, 0.55, 0.5, 0.45, 0.4]  # a weak but real decrease
    correct = (rng.random((5, 200)) < np.array(accuracy)[:, None]).astype(float)
    widths = []
    for n in (20, 2000):
        hits = (rng.random((5, n)) < np.array(pointing)[:, None]).astype(float)
        rho = ladder_rho_interval(correct, hits, Bootstrap(resamples=1000))
        widths.append(rho["high"] - rho["low"])
    assert widths[1] < widths[0]
    assert rho["low"] > 0.5  # with 2000 scenes per rung the decrease is certain


def test_verdicts():
    assert verdict(0.1, 0.4, 0.5) == "flagged"
    assert verdict(0.5, 0.9, 0.5) == "pass"
    assert verdict(0.2, 0.7, 0.5) == "inconclusive"
    assert verdict(math.nan, math.nan, 0.5) == "n/a"


def test_ladder_statistics_flags_only_when_the_whole_interval_is_below():
    correct = _constant_rungs([1.0, 0.7, 0.4, 0.1], 30)
    per_scene = {
        "tracks": {"pointing": _constant_rungs([0.8, 0.6, 0.4, 0.2], 10), "ins_minus_del": _constant_rungs([4, 3, 2, 1], 10)},
        "inverse": {"pointing": _constant_rungs([0.2, 0.4, 0.6, 0.8], 10), "ins_minus_del": _constant_rungs([1, 2, 3, 4], 10)},
        # every rung hits 4 of 8 scenes, a window shifted by 2 per rung: equal rates, and resamples order
        # the rungs every way, so the interval straddles the threshold
        "noisy": {"pointing": np.array([[float((s - 2 * r) % 8 < 4) for s in range(8)] for r in range(4)]),
                  "ins_minus_del": np.zeros((4, 8))},
    }
    stats = ladder_statistics((0, 0.3, 0.6, 1), correct, per_scene, flag_below=0.5)
    assert stats["spearman"]["tracks"]["verdict"] == "pass"
    assert stats["spearman"]["inverse"]["verdict"] == "flagged" and stats["spearman"]["inverse"]["flagged"]
    noisy = stats["spearman"]["noisy"]
    assert noisy["verdict"] == "inconclusive" and noisy["pointing_interval"][0] < 0 < 0.5 < noisy["pointing_interval"][1]
    assert stats["rungs"][1]["accuracy"] == pytest.approx(0.7) and stats["rungs"][1]["accuracy_interval"] == pytest.approx([0.7, 0.7])
    assert stats["accuracy_monotone"]


def test_split_statistics_difference_and_verdict():
    correct = [True] * 6 + [False] * 4
    per_scene = {"better_when_right": {"pointing": [1.0] * 6 + [0.0] * 4, "ins_minus_del": [0.0] * 10},
                 "worse_when_right": {"pointing": [0.0] * 6 + [1.0] * 4, "ins_minus_del": [0.0] * 10}}
    split = split_statistics(correct, per_scene, min_group=4)
    assert (split["right"], split["wrong"]) == (6, 4)
    good, bad = split["methods"]["better_when_right"], split["methods"]["worse_when_right"]
    assert good["pointing_difference"] == 1.0 and good["pointing_difference_interval"] == [1.0, 1.0]
    assert good["verdict"] == "pass" and bad["verdict"] == "flagged"
    none_wrong = split_statistics([True] * 3, {"m": {"pointing": [1.0] * 3, "ins_minus_del": [0.0] * 3}})
    assert none_wrong["methods"]["m"]["verdict"] == "n/a"
    # 6 right images that all miss: the interval has no spread, but 6 images cannot carry a verdict
    few = split_statistics(correct, per_scene, min_group=20)
    assert few["methods"]["worse_when_right"]["pointing_difference_interval"] == [-1.0, -1.0]
    assert few["methods"]["worse_when_right"]["verdict"] == "n/a"
