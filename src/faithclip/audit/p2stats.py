"""P2's statistics, pure numpy: the within-scene association, its two-level bootstrap and permutation tests,
Holm's step-down adjustment, the exact McNemar test and the within-shape permutation test.

Data layout: one array ``(L, S, V)`` per quantity -- L ladders (re-initialisation seeds), S scenes (the SAME
scenes in every ladder and at every rung), V rungs (model variants) of each ladder.

**Within association.** Per ladder l, remove the scene and the variant means (two-way centring,
``y~ = y - mean_v y - mean_s y + mean y``, the least-squares fit of ``y = scene + variant + noise``), then

    r = sum_{l,s,v} x~ y~ / sqrt(sum x~^2 * sum y~^2)          (pooled over ladders)

the standardised slope of ``y = beta x + scene_l + variant_l + noise`` (``beta = sum x~ y~ / sum x~^2`` in
raw units). ``r`` is 0 by definition when ``y~`` is identically 0 (the map does not move with the model
inside a scene) and undefined (NaN) when ``x~`` is (the model does not change).

**Two-level bootstrap** (Davison & Hinkley 1997, sec. 3.8): per resample, ladders are drawn with replacement,
then scenes (one draw for all ladders: the scenes are shared); r is recomputed with the scene-weighted
variant means. Percentile interval.

**Scene-permutation test** of ``H0: x and y are unrelated within scenes``: the scenes' x-profiles (all
ladders and rungs of a scene move together) are permuted among scenes; the two-way centring of a row-permuted
array is the row-permuted centring, so only the cross product changes. One-sided p-value
``(1 + #{r_perm >= r}) / (1 + P)`` -- exact when scenes are exchangeable under H0.

**Bootstrap test of ``H0: r >= delta``** (the association reaches the minimum effect): ``p = (1 + #{r* >=
delta}) / (1 + B)``, the inversion of the one-sided percentile interval (approximate; its level is measured
by ``faithclip.audit.p2_simulate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WithinTest:
    r: float  # within-scene, within-variant correlation (standardised slope)
    beta: float  # slope in raw units (y per unit x)
    low: float  # percentile interval of r (two-level bootstrap)
    high: float
    p_tracks: float  # one-sided scene-permutation p-value of H0: r <= 0
    p_below: float  # one-sided bootstrap p-value of H0: r >= min_effect
    ladders: int
    scenes: int
    rungs: int


def as_panel(values: np.ndarray) -> np.ndarray:
    """``(L, S, V)`` float64; a ``(S, V)`` array is one ladder."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"expected (ladders, scenes, rungs) values, got shape {values.shape}")
    return values


def scene_centred(values: np.ndarray) -> np.ndarray:
    """``(L, S, V)`` minus each scene's mean over the rungs of its ladder."""
    return values - values.mean(axis=2, keepdims=True)


def two_way_centred(values: np.ndarray) -> np.ndarray:
    """``(L, S, V)`` with each ladder's scene and rung means removed (balanced two-way fixed effects)."""
    centred = scene_centred(values)
    return centred - centred.mean(axis=1, keepdims=True)


def _ratio(cross: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """r from sums of products; 0 where y has no within variation, NaN where x has none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cross / np.sqrt(xx * yy)
    r = np.where(yy <= 1e-24 * np.maximum(xx, 1.0), 0.0, r)
    return np.where(xx <= 1e-24, np.nan, r)


def within_correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(r, beta)`` of y on x within scenes and rungs, pooled over ladders."""
    xt, yt = two_way_centred(as_panel(x)), two_way_centred(as_panel(y))
    xx, yy, xy = (xt * xt).sum(), (yt * yt).sum(), (xt * yt).sum()
    beta = float(xy / xx) if xx > 1e-24 else math.nan
    return float(_ratio(np.asarray(xy), np.asarray(xx), np.asarray(yy))), beta


def _weighted_sums(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample and ladder: sum_s w_s sum_v (a - m_a)(b - m_b), m = scene-weighted rung means.

    a, b ``(L, S, V)`` scene-centred; weights ``(B, S)`` counts summing to S. Returns ``(B, L)``."""
    ladders, scenes, rungs = a.shape
    total = weights.sum(1, keepdims=True)  # (B, 1)
    products = weights @ (a * b).sum(2).T  # (B, S) @ (S, L) -> (B, L)
    flat_a = a.transpose(1, 0, 2).reshape(scenes, ladders * rungs)  # (S, L*V)
    flat_b = b.transpose(1, 0, 2).reshape(scenes, ladders * rungs)  # (S, L*V)
    sum_a = (weights @ flat_a).reshape(-1, ladders, rungs)  # (B, L, V)
    sum_b = sum_a if b is a else (weights @ flat_b).reshape(-1, ladders, rungs)  # (B, L, V)
    return products - (sum_a * sum_b).sum(-1) / total


def draw_counts(generator: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """``(B, n)`` float counts of n draws with replacement from ``range(n)``, one row per resample."""
    draws = generator.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]  # (B, n) row-offset
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def percentile(samples: np.ndarray, q: float) -> float:
    """The q-quantile of 1-D samples by linear interpolation between order statistics (numpy's default)."""
    ordered = np.sort(samples)
    h = (ordered.size - 1) * q
    below = int(math.floor(h))
    above = min(below + 1, ordered.size - 1)
    return float(ordered[below] + (h - below) * (ordered[above] - ordered[below]))


def bootstrap_within(x: np.ndarray, y: np.ndarray, resamples: int, generator: np.random.Generator) -> np.ndarray:
    """``(B,)`` r recomputed on two-level resamples (ladders, then scenes shared by all ladders)."""
    x, y = as_panel(x), as_panel(y)
    ladders, scenes = x.shape[:2]
    ladder_counts = draw_counts(generator, ladders, resamples)  # (B, L) how often each ladder was drawn
    scene_counts = draw_counts(generator, scenes, resamples)  # (B, S) how often each scene was drawn
    xs, ys = scene_centred(x), scene_centred(y)
    xy = (_weighted_sums(xs, ys, scene_counts) * ladder_counts).sum(1)  # (B,)
    xx = (_weighted_sums(xs, xs, scene_counts) * ladder_counts).sum(1)
    yy = (_weighted_sums(ys, ys, scene_counts) * ladder_counts).sum(1)
    return _ratio(xy, xx, yy)


def permutation_within(x: np.ndarray, y: np.ndarray, permutations: int, generator: np.random.Generator) -> np.ndarray:
    """``(P,)`` r with the scenes' x-profiles permuted among scenes (the same permutation in every ladder)."""
    xt, yt = two_way_centred(as_panel(x)), two_way_centred(as_panel(y))
    scenes = xt.shape[1]
    xs = xt.transpose(1, 0, 2).reshape(scenes, -1)  # (S, L*V)
    ys = yt.transpose(1, 0, 2).reshape(scenes, -1)  # (S, L*V)
    gram = xs @ ys.T  # (S, S): gram[i, j] = <x-profile of scene i, y-profile of scene j>
    orders = np.argsort(generator.random((permutations, scenes)), axis=1)  # (P, S) random permutations
    cross = gram[orders, np.arange(scenes)[None, :]].sum(1)  # (P,)
    return _ratio(cross, np.full(permutations, (xs * xs).sum()), np.full(permutations, (ys * ys).sum()))


def within_test(x: np.ndarray, y: np.ndarray, min_effect: float, resamples: int = 2000, permutations: int = 2000,
                confidence: float = 0.95, seed: int = 0) -> WithinTest:
    """The estimate, its two-level bootstrap interval, and the two one-sided p-values P2's verdict uses."""
    x, y = as_panel(x), as_panel(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same (ladders, scenes, rungs) shape, got {x.shape} and {y.shape}")
    r, beta = within_correlation(x, y)
    ladders, scenes, rungs = x.shape
    if math.isnan(r) or scenes < 2 or rungs < 2:
        return WithinTest(r, beta, math.nan, math.nan, math.nan, math.nan, ladders, scenes, rungs)
    generator = np.random.default_rng(seed)
    boot = bootstrap_within(x, y, resamples, generator)
    boot = boot[~np.isnan(boot)]
    tail = (1 - confidence) / 2
    low, high = (percentile(boot, tail), percentile(boot, 1 - tail)) if boot.size else (math.nan, math.nan)
    perm = permutation_within(x, y, permutations, generator)
    p_tracks = float((1 + np.sum(perm >= r - 1e-12)) / (1 + permutations))
    p_below = float((1 + np.sum(boot >= min_effect)) / (1 + boot.size)) if boot.size else math.nan
    return WithinTest(r, beta, low, high, p_tracks, p_below, ladders, scenes, rungs)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order; NaN stays NaN and is not counted."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    m, running = len(indexed), 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly with integer binomial coefficients."""
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(0, k + 1)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c: ``min(1, 2 P(X <= min(b, c)))``,
    ``X ~ Binomial(b + c, 1/2)`` (McNemar 1947; the conditional binomial form)."""
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * binomial_cdf(min(b, c), n))


def stratified_difference(values: np.ndarray, group: np.ndarray, strata: np.ndarray) -> tuple[float, int]:
    """Mean(group) - mean(not group) within each stratum, averaged with weights ``n1 n0 / n`` (strata lacking
    either group contribute nothing); and how many strata contribute."""
    total, weight, used = 0.0, 0.0, 0
    for stratum in np.unique(strata):
        inside = strata == stratum
        ones, zeros = values[inside & group], values[inside & ~group]
        if ones.size == 0 or zeros.size == 0:
            continue
        w = ones.size * zeros.size / (ones.size + zeros.size)
        total += w * (ones.mean() - zeros.mean())
        weight += w
        used += 1
    return (total / weight if weight else math.nan), used


def stratified_permutation(values: np.ndarray, group: np.ndarray, strata: np.ndarray, permutations: int = 2000,
                           seed: int = 0) -> dict[str, float]:
    """The within-stratum difference and its one-sided permutation p-values (group labels shuffled inside
    each stratum): ``p_greater`` for ``H0: difference <= 0``, ``p_less`` for ``H0: difference >= 0``."""
    values, group, strata = np.asarray(values, np.float64), np.asarray(group, bool), np.asarray(strata)
    observed, used = stratified_difference(values, group, strata)
    if math.isnan(observed):
        return {"difference": math.nan, "p_greater": math.nan, "p_less": math.nan, "strata": used}
    generator = np.random.default_rng(seed)
    shuffled = group.copy()
    draws = np.empty(permutations)
    members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    for k in range(permutations):
        for idx in members:
            shuffled[idx] = group[idx][generator.permutation(idx.size)]
        draws[k] = stratified_difference(values, shuffled, strata)[0]
    return {"difference": observed, "p_greater": float((1 + np.sum(draws >= observed - 1e-12)) / (1 + permutations)),
            "p_less": float((1 + np.sum(draws <= observed + 1e-12)) / (1 + permutations)), "strata": used}


__all__ = ["WithinTest", "as_panel", "two_way_centred", "within_correlation", "bootstrap_within", "permutation_within",
           "within_test", "draw_counts", "percentile", "holm", "binomial_cdf", "mcnemar_exact", "stratified_difference", "stratified_permutation"]
