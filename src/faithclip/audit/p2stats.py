"""P2's statistics, pure numpy: the within-scene association, its two-level bootstrap and permutation tests,
Holm's step-down adjustment, the exact McNemar test and the within-shape permutation test.

Data layout: one array ``(L, S, V)`` per quantity -- L ladders (re-initialisation seeds), S scenes (the SAME
scenes in every ladder and at every rung), V rungs (model variants) of each ladder.

**Association scale** (``association``). ``"ranks"`` (the default): each quantity is first replaced by its
average rank among the S scenes at the same ladder and rung, ``R(x)_{l,s,v} = rank of x_{l,s,v} among x_{l,1..S,v}``
(ties: average ranks). A scene's r_s then asks whether its STANDING among the scenes in the model's measure
and in the map's move together across ladders and rungs; it is unchanged by any increasing transformation of
x or y that is common to the scenes of a rung, so a map whose share is an increasing function of the model's
effect gets r = 1 whatever the function (``tests/unit/test_p2_stats.py``). ``"linear"``: the raw values, the
form ``y = beta x + scene + variant + noise`` that issue 20 proposed; it measures LINEAR association only, and a
map whose share is a saturating increasing function of the effect (share = e / (e + c), c a tenth of the
median effect) gets r +0.08 and +0.07 on kept shapes-clip and shapes-vit runs (docs/p2.md), below the
minimum effect, and a fixture built that way gets ``does not track``: so ``"linear"`` can fail a perfectly
faithful map. Both then go through the steps below.

**Within association.** Per ladder l, remove the scene and the variant means (two-way centring,
``y~ = y - mean_v y - mean_s y + mean y``, the least-squares fit of ``y = scene + variant + noise``). The
estimand is the AVERAGE SCENE's within association,

    r_s = sum_{l,v} x~ y~ / sqrt(sum_{l,v} x~^2 * sum_{l,v} y~^2)      (scene s, all its ladders and rungs)
    r   = mean over scenes of r_s

each scene weighted equally. ``r_s`` is 0 when ``y~`` is identically 0 in scene s (the map does not move with
the model there) and undefined when ``x~`` is (the model's measure does not change in that scene): such scenes
are left out and counted (``WithinTest.undefined``). The pooled correlation ``sum x~ y~ / sqrt(sum x~^2 sum
y~^2)`` over all scenes (the standardised slope of ``y = beta x + scene_l + variant_l + noise``) is reported
beside it (``r_pooled``, ``beta``) but is not the estimand: it weights scenes by their variation in x, and on
shapes-clip a few scenes carried most of that weight, so 32-scene samples of it disagreed beyond its own
bootstrap interval (docs/p2.md, "Why the average scene").

**Two-level bootstrap** (Davison & Hinkley 1997, sec. 3.8): per resample, ladders are drawn with replacement
(each scene's r_s recomputed from the drawn ladders' sums), then scenes (one draw for all ladders: the scenes
are shared); the rung means are those of the full sample. Percentile interval of r.

**Bootstrap tests** of ``H0: r <= 0`` (``p_tracks = (1 + #{r* <= 0}) / (1 + B)``) and of ``H0: r >= delta``,
the association reaches the minimum effect (``p_below = (1 + #{r* >= delta}) / (1 + B)``): inversions of the
one-sided percentile interval (approximate; their levels are measured by ``faithclip.audit.p2_simulate``).

**Scene-permutation test** (descriptive, ``p_sharp``) of the SHARP null ``x and y are unrelated within every
scene``: the scenes' x-profiles (all ladders and rungs of a scene move together) are permuted among scenes and
r recomputed from the pairs (x-profile of scene pi(s), y-profile of scene s); ``(1 + #{r_perm >= r}) / (1 +
P)``, exact when scenes are exchangeable. It is not the verdict's test: when scenes differ in their
association and the average is 0, it rejects far more often than its level (0.17-0.18 at 5 % in simulation),
because it tests "no scene associated", not "the average scene is not associated".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WithinTest:
    r: float  # the average scene's within-scene, within-variant correlation (the estimand)
    beta: float  # pooled slope in raw units (y per unit x), descriptive
    low: float  # percentile interval of r (two-level bootstrap)
    high: float
    p_tracks: float  # one-sided bootstrap p-value of H0: r <= 0
    p_below: float  # one-sided bootstrap p-value of H0: r >= min_effect
    ladders: int
    scenes: int
    rungs: int
    r_pooled: float = math.nan  # the pooled correlation over all scenes, descriptive
    undefined: int = 0  # scenes left out: the model's measure does not vary within them
    p_sharp: float = math.nan  # scene-permutation p-value of the sharp null (no scene associated), descriptive


def as_panel(values: np.ndarray) -> np.ndarray:
    """``(L, S, V)`` float64; a ``(S, V)`` array is one ladder."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"expected (ladders, scenes, rungs) values, got shape {values.shape}")
    return values


ASSOCIATIONS = ("ranks", "linear")


def cell_ranks(values: np.ndarray) -> np.ndarray:
    """``(L, S, V)``: each value's average rank (1..S, ties averaged) among the scenes of its ladder and rung."""
    values = as_panel(values)
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    ladders, scenes, rungs = values.shape
    ranks = np.empty_like(values)
    for l in range(ladders):
        for v in range(rungs):
            column = ordered[l, :, v]
            # runs of equal values share the mean of their positions (1-based)
            starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
            ends = np.r_[starts[1:], scenes]
            average = np.repeat((starts + ends + 1) / 2.0, ends - starts)
            ranks[l, order[l, :, v], v] = average
    return ranks


def association_scale(values: np.ndarray, association: str) -> np.ndarray:
    """The values on the scale the association is measured on (``association``: ``ranks`` or ``linear``)."""
    if association == "ranks":
        return cell_ranks(values)
    if association == "linear":
        return as_panel(values)
    raise ValueError(f"association must be one of {', '.join(ASSOCIATIONS)}, got {association!r}")


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


def scene_sums(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ladder and scene ``(L, S)``: sum over rungs of x~ y~, x~^2 and y~^2 (two-way centred)."""
    xt, yt = two_way_centred(as_panel(x)), two_way_centred(as_panel(y))
    return (xt * yt).sum(2), (xt * xt).sum(2), (yt * yt).sum(2)


def scene_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(S,)`` r_s, each scene's within correlation over all its ladders and rungs; NaN where x~ is 0."""
    xy, xx, yy = scene_sums(x, y)
    return _ratio(xy.sum(0), xx.sum(0), yy.sum(0))


def average_scene_correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """``(r, undefined)``: the mean of the defined r_s and the number of scenes left out."""
    r_s = scene_correlations(x, y)
    defined = ~np.isnan(r_s)
    return (float(r_s[defined].mean()) if defined.any() else math.nan), int((~defined).sum())


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
    sums = scene_sums(x, y)  # (L, S) each
    ladders, scenes = sums[0].shape
    ladder_counts = draw_counts(generator, ladders, resamples)  # (B, L) how often each ladder was drawn
    scene_counts = draw_counts(generator, scenes, resamples)  # (B, S) how often each scene was drawn
    return resampled_r(sums, ladder_counts, scene_counts)


def resampled_r(
    sums: tuple[np.ndarray, np.ndarray, np.ndarray], ladder_counts: np.ndarray, scene_counts: np.ndarray
) -> np.ndarray:
    """``(B,)`` r of resamples given as counts: each scene's r_s from its drawn ladders' sums, then the
    scene-count-weighted mean over the scenes whose r_s is defined."""
    xy, xx, yy = sums
    r_s = _ratio(ladder_counts @ xy, ladder_counts @ xx, ladder_counts @ yy)  # (B, S) per scene, drawn ladders
    defined = ~np.isnan(r_s)
    weights = scene_counts * defined
    total = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * np.where(defined, r_s, 0.0)).sum(1) / total, np.nan)


def permutation_within(x: np.ndarray, y: np.ndarray, permutations: int, generator: np.random.Generator) -> np.ndarray:
    """``(P,)`` r with the scenes' x-profiles permuted among the defined scenes (one permutation for every
    ladder): the pair (x-profile of scene pi(s), y-profile of scene s) gives r_s, and r is their mean."""
    xt, yt = two_way_centred(as_panel(x)), two_way_centred(as_panel(y))
    scenes = xt.shape[1]
    xs = xt.transpose(1, 0, 2).reshape(scenes, -1)  # (S, L*V)
    ys = yt.transpose(1, 0, 2).reshape(scenes, -1)  # (S, L*V)
    xx, yy = (xs * xs).sum(1), (ys * ys).sum(1)
    keep = xx > 1e-24  # scenes whose x varies: the others have no r_s
    xs, ys, xx, yy = xs[keep], ys[keep], xx[keep], yy[keep]
    n = int(keep.sum())
    if n == 0:
        return np.full(permutations, np.nan)
    # pair[i, j] = r of (x-profile of scene i, y-profile of scene j)
    pair = _ratio(xs @ ys.T, np.broadcast_to(xx[:, None], (n, n)), np.broadcast_to(yy[None, :], (n, n)))
    orders = np.argsort(generator.random((permutations, n)), axis=1)  # (P, n) random permutations
    return pair[orders, np.arange(n)[None, :]].mean(1)


def within_test(
    x: np.ndarray,
    y: np.ndarray,
    min_effect: float,
    resamples: int = 2000,
    permutations: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    association: str = "ranks",
) -> WithinTest:
    """The estimate, its two-level bootstrap interval, and the two one-sided p-values P2's verdict uses, on the
    ``association`` scale (module docstring). The bootstrap resamples the scaled values: ranks are taken once,
    on the full sample."""
    x, y = as_panel(x), as_panel(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same (ladders, scenes, rungs) shape, got {x.shape} and {y.shape}")
    x, y = association_scale(x, association), association_scale(y, association)
    r, undefined = average_scene_correlation(x, y)
    r_pooled, beta = within_correlation(x, y)
    ladders, scenes, rungs = x.shape
    if math.isnan(r) or scenes - undefined < 2 or rungs < 2:
        return WithinTest(r, beta, math.nan, math.nan, math.nan, math.nan, ladders, scenes, rungs, r_pooled, undefined)
    generator = np.random.default_rng(seed)
    boot = bootstrap_within(x, y, resamples, generator)
    boot = boot[~np.isnan(boot)]
    tail = (1 - confidence) / 2
    low, high = (percentile(boot, tail), percentile(boot, 1 - tail)) if boot.size else (math.nan, math.nan)
    perm = permutation_within(x, y, permutations, generator)
    p_sharp = float((1 + np.sum(perm >= r - 1e-12)) / (1 + permutations))
    p_tracks = float((1 + np.sum(boot <= 0.0)) / (1 + boot.size)) if boot.size else math.nan
    p_below = float((1 + np.sum(boot >= min_effect)) / (1 + boot.size)) if boot.size else math.nan
    return WithinTest(r, beta, low, high, p_tracks, p_below, ladders, scenes, rungs, r_pooled, undefined, p_sharp)


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
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1)))


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


def stratified_permutation(
    values: np.ndarray, group: np.ndarray, strata: np.ndarray, permutations: int = 2000, seed: int = 0
) -> dict[str, float]:
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
    return {
        "difference": observed,
        "p_greater": float((1 + np.sum(draws >= observed - 1e-12)) / (1 + permutations)),
        "p_less": float((1 + np.sum(draws <= observed + 1e-12)) / (1 + permutations)),
        "strata": used,
    }


def variance_components(table: np.ndarray) -> tuple[float, float, float]:
    """``(set, ladder, residual)`` variance components of a crossed table ``(K, J)`` of one value per scene set
    (row) and ladder (column), by the method of moments of the two-way random-effects ANOVA without replication
    (``value = mean + set_k + ladder_j + residual_kj``):

        MS_set = J sum_k (row mean_k - grand)^2 / (K - 1)      E = J var_set + var_residual
        MS_ladder = K sum_j (column mean_j - grand)^2 / (J - 1)   E = K var_ladder + var_residual
        MS_residual = sum (value - row mean - column mean + grand)^2 / ((K - 1)(J - 1))

    so ``var_set = (MS_set - MS_residual) / J``, ``var_ladder = (MS_ladder - MS_residual) / K`` and
    ``var_residual = MS_residual``. The first two are unbiased and can be negative in a sample."""
    table = np.asarray(table, dtype=np.float64)
    rows, columns = table.shape
    if rows < 2 or columns < 2:
        raise ValueError(f"variance components need at least 2 scene sets and 2 ladders, got {table.shape}")
    grand = table.mean()
    row = table.mean(1) - grand
    column = table.mean(0) - grand
    residual = table - grand - row[:, None] - column[None, :]
    ms_set = columns * float((row**2).sum()) / (rows - 1)
    ms_ladder = rows * float((column**2).sum()) / (columns - 1)
    ms_residual = float((residual**2).sum()) / ((rows - 1) * (columns - 1))
    return (ms_set - ms_residual) / columns, (ms_ladder - ms_residual) / rows, ms_residual


__all__ = [
    "WithinTest",
    "as_panel",
    "two_way_centred",
    "within_correlation",
    "scene_sums",
    "scene_correlations",
    "average_scene_correlation",
    "resampled_r",
    "bootstrap_within",
    "permutation_within",
    "within_test",
    "draw_counts",
    "percentile",
    "holm",
    "binomial_cdf",
    "mcnemar_exact",
    "stratified_difference",
    "stratified_permutation",
    "variance_components",
]
