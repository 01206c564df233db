"""Bootstrap intervals and verdicts for P2 (pure numpy; scenes are the resampling unit).

Percentile bootstrap (Efron & Tibshirani, 1993, ch. 13): draw ``resamples`` index sets of size n with
replacement from a generator seeded with ``seed``, recompute the statistic on each, and take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the recomputed values.

- a rate (pointing, accuracy): the mean of per-scene values;
- the ladder's rank correlation: every rung sees the SAME accuracy images and the SAME pointing scenes,
  so one draw of accuracy images and one draw of pointing scenes is applied to all rungs (a paired
  resample); the rung means are recomputed and Spearman's rho between them taken per resample;
- the correctness split: right and wrong images are resampled separately (stratified) and the
  difference of their means taken.

A verdict against a threshold t on an interval [lo, hi]: ``flagged`` when hi < t, ``pass`` when
lo >= t, ``inconclusive`` otherwise (and ``n/a`` when there is no interval).
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


def average_ranks_rows(x: np.ndarray) -> np.ndarray:
    """Ranks 0..R-1 along the last axis of ``(..., R)``, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    below = (x[..., None, :] < x[..., :, None]).sum(-1)  # (..., R): how many values are smaller
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)  # (..., R): how many are equal (itself included)
    return below + (equal - 1) / 2


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``(..., R)`` arrays; NaN where a row is constant."""
    ra, rb = average_ranks_rows(a), average_ranks_rows(b)
    ra = ra - ra.mean(-1, keepdims=True)
    rb = rb - rb.mean(-1, keepdims=True)
    denominator = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(-1) / np.where(denominator > 0, denominator, 1), np.nan)


def ladder_rho_interval(correct: np.ndarray, quality: np.ndarray, boot: Bootstrap = Bootstrap(),
                        generator: np.random.Generator | None = None) -> dict[str, float]:
    """rho(accuracy, quality) across rungs with its paired percentile interval.

    correct ``(R, n_acc)``: 1 where rung r classified accuracy image i right; quality ``(R, n_pt)``:
    per-scene quality at each rung. A resample whose rung qualities are all equal has no rank order;
    it counts as rho = 0 (quality does not follow accuracy) rather than being dropped.
    """
    correct, quality = np.asarray(correct, np.float64), np.asarray(quality, np.float64)
    generator = generator or boot.generator()
    acc_draw = resample_indices(generator, correct.shape[1], boot.resamples)  # (B, n_acc)
    pt_draw = resample_indices(generator, quality.shape[1], boot.resamples)  # (B, n_pt)
    accuracy = correct[:, acc_draw].mean(-1).T  # (B, R)
    rates = quality[:, pt_draw].mean(-1).T  # (B, R)
    rhos = np.nan_to_num(spearman_rows(accuracy, rates), nan=0.0)  # (B,)
    low, high = percentile_interval(rhos, boot.confidence)
    value = float(spearman_rows(correct.mean(1), quality.mean(1)))
    return {"value": value, "low": low, "high": high}


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


def verdict(low: float, high: float, threshold: float) -> str:
    """``flagged`` (interval below the threshold), ``pass`` (at or above it), ``inconclusive`` (straddles)."""
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    if high < threshold:
        return "flagged"
    if low >= threshold:
        return "pass"
    return "inconclusive"


__all__ = ["Bootstrap", "DEFAULT_RESAMPLES", "DEFAULT_CONFIDENCE", "resample_indices", "percentile_interval",
           "mean_interval", "average_ranks_rows", "spearman_rows", "ladder_rho_interval", "difference_interval",
           "verdict"]
