"""Intervals of rates and differences (pure numpy; scenes are the resampling unit).

Percentile bootstrap (Efron & Tibshirani, 1993, ch. 13): draw ``resamples`` index sets of size n with
replacement from a generator seeded with ``seed``, recompute the statistic on each, and take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the recomputed values.

- a rate (pointing, accuracy): the mean of per-scene values;
- the correctness split: right and wrong images are resampled separately (stratified) and the
  difference of their means taken;
- a paired contrast (two maps of the same images): the per-image differences are resampled together
  (``mean_interval`` of ``a - b``), so identical inputs give exactly 0 with a zero-width interval;
- a median (``median_interval``): the same resamples, the median recomputed.

A count of successes (flips, correct predictions) gets the Wilson score interval (Wilson, 1927):
``(p + z^2/2n) / (1 + z^2/n) +- z / (1 + z^2/n) * sqrt(p (1 - p) / n + z^2 / 4n^2)``, which stays inside
[0, 1] and does not collapse at 0 or n successes as the percentile bootstrap does.

These intervals describe; P2's verdicts are tests (``faithclip.audit.p2``, ``faithclip.audit.p2stats``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0

    def generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def resample_indices(generator: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """``(resamples, n)`` indices drawn with replacement from ``range(n)``."""
    return generator.integers(0, n, size=(resamples, n))


def percentile_interval(samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of 1-D bootstrap ``samples`` (NaN samples make the interval NaN)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0 or np.isnan(samples).any():
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


def mean_interval(values: np.ndarray, boot: Bootstrap = Bootstrap()) -> dict[str, float]:
    """Mean of per-scene ``values`` ``(n,)`` with its percentile interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"value": math.nan, "low": math.nan, "high": math.nan}
    means = values[resample_indices(boot.generator(), values.size, boot.resamples)].mean(axis=1)  # (B,)
    low, high = percentile_interval(means, boot.confidence)
    return {"value": float(values.mean()), "low": low, "high": high}


def median_interval(values: np.ndarray, boot: Bootstrap = Bootstrap()) -> dict[str, float]:
    """Median of per-scene ``values`` ``(n,)`` with its percentile interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"value": math.nan, "low": math.nan, "high": math.nan}
    medians = np.median(values[resample_indices(boot.generator(), values.size, boot.resamples)], axis=1)  # (B,)
    low, high = percentile_interval(medians, boot.confidence)
    return {"value": float(np.median(values)), "low": low, "high": high}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (z = 1.96: 95 %); (nan, nan) for n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(right: np.ndarray, wrong: np.ndarray, boot: Bootstrap = Bootstrap()) -> dict[str, float]:
    """mean(right) - mean(wrong) with a stratified percentile interval (NaN when a group is empty)."""
    right, wrong = np.asarray(right, np.float64), np.asarray(wrong, np.float64)
    if right.size == 0 or wrong.size == 0:
        return {"value": math.nan, "low": math.nan, "high": math.nan}
    generator = boot.generator()
    right_means = right[resample_indices(generator, right.size, boot.resamples)].mean(1)  # (B,)
    wrong_means = wrong[resample_indices(generator, wrong.size, boot.resamples)].mean(1)  # (B,)
    low, high = percentile_interval(right_means - wrong_means, boot.confidence)
    return {"value": float(right.mean() - wrong.mean()), "low": low, "high": high}


__all__ = [
    "Bootstrap",
    "DEFAULT_RESAMPLES",
    "DEFAULT_CONFIDENCE",
    "resample_indices",
    "percentile_interval",
    "mean_interval",
    "median_interval",
    "difference_interval",
    "wilson_interval",
]
