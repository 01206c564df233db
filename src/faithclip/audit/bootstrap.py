"""Percentile bootstrap intervals of rates and differences (pure numpy; scenes are the resampling unit).

Percentile bootstrap (Efron & Tibshirani, 1993, ch. 13): draw ``resamples`` index sets of size n with
replacement from a generator seeded with ``seed``, recompute the statistic on each, and take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the recomputed values.

- a rate (pointing, accuracy): the mean of per-scene values;
- the correctness split: right and wrong images are resampled separately (stratified) and the
  difference of their means taken.

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


__all__ = ["Bootstrap", "DEFAULT_RESAMPLES", "DEFAULT_CONFIDENCE", "resample_indices", "percentile_interval",
           "mean_interval", "difference_interval"]
