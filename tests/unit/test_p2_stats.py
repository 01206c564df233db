"""P2's statistics (``faithclip.audit.p2stats``) and verdict rule (``faithclip.audit.p2.p2_verdicts``).

Oracles: a literal least-squares fit with scene and rung dummy columns (numpy ``lstsq``), explicit
duplication of resampled scenes, scipy's binomial test, values worked out by hand, and fixtures whose answer
is known by construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from faithclip.audit.p2 import p2_verdicts
from faithclip.audit.p2stats import (
    average_scene_correlation,
    cell_ranks,
    draw_counts,
    holm,
    mcnemar_exact,
    percentile,
    permutation_within,
    resampled_r,
    scene_sums,
    stratified_difference,
    stratified_permutation,
    within_correlation,
    within_test,
)

scipy_stats = pytest.importorskip("scipy.stats")


def _panel(seed: int, r: float, shape=(2, 12, 5)) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    z = g.standard_normal(shape)
    x = g.standard_normal((1, shape[1], 1)) + np.linspace(0, -2, shape[2]) + z
    y = g.standard_normal((1, shape[1], 1)) + r * z + math.sqrt(1 - r * r) * g.standard_normal(shape)
    return x, y


def _dummy_residuals(values: np.ndarray) -> np.ndarray:
    """Slow literal oracle: per ladder, the residuals of ``values`` regressed on scene and rung dummy columns
    (numpy least squares). ``(L, S, V)``."""
    ladders, scenes, rungs = values.shape
    rows = []
    for s in range(scenes):
        for v in range(rungs):
            row = np.zeros(scenes + rungs)
            row[s], row[scenes + v] = 1.0, 1.0
            rows.append(row)
    design = np.array(rows)
    out = np.empty_like(values)
    for l in range(ladders):
        flat = values[l].reshape(-1)
        out[l] = (flat - design @ np.linalg.lstsq(design, flat, rcond=None)[0]).reshape(scenes, rungs)
    return out


def _dummy_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """beta = <res_x, res_y> / <res_x, res_x>, r = the correlation of the residuals, pooled over ladders."""
    res_x, res_y = _dummy_residuals(x), _dummy_residuals(y)
    cross, xx, yy = (res_x * res_y).sum(), (res_x * res_x).sum(), (res_y * res_y).sum()
    return cross / math.sqrt(xx * yy), cross / xx


def _literal_average(res_x: np.ndarray, res_y: np.ndarray, ladders: list[int], scene_weights: np.ndarray) -> float:
    """Per scene, Pearson's r (numpy corrcoef) of its residuals over the listed ladders (repeats allowed) and
    every rung; the scene-weighted mean of them. Residuals have mean 0 within a scene and ladder, so
    corrcoef's own centring changes nothing. A scene whose x residuals are all 0 has no r and is left out (on
    ranks: a scene whose rank is the same at every rung of a single ladder); one whose y residuals are all 0 has
    r = 0 (the map does not move with the model there)."""
    values, weights = [], []
    for s in range(res_x.shape[1]):
        a = np.concatenate([res_x[l, s] for l in ladders])
        b = np.concatenate([res_y[l, s] for l in ladders])
        if np.abs(a).max() < 1e-9:
            continue
        values.append(np.corrcoef(a, b)[0, 1] if np.abs(b).max() > 1e-9 else 0.0)
        weights.append(scene_weights[s])
    return float(np.average(values, weights=weights))


def test_the_estimand_is_the_average_scene_of_the_dummy_variable_residuals():
    x, y = _panel(9, 0.4)
    r, undefined = average_scene_correlation(x, y)
    expected = _literal_average(_dummy_residuals(x), _dummy_residuals(y), [0, 1], np.ones(12))
    assert undefined == 0
    assert r == pytest.approx(expected, rel=1e-9, abs=1e-12)  # lstsq vs centring: rounding only
    assert within_test(x, y, 0.1, 50, 50, association="linear").r == r
    # the default scale: the same estimand on each rung's ranks among the scenes
    assert within_test(x, y, 0.1, 50, 50).r == average_scene_correlation(cell_ranks(x), cell_ranks(y))[0]


def test_a_scene_whose_model_measure_does_not_move_is_left_out_and_counted():
    x, y = _panel(10, 0.4)
    # scene 3 moves exactly with the other scenes' rung means: its two-way residual is 0, so it has no r_s
    x[:, 3] = 7.0 + np.delete(x, 3, axis=1).mean(1)
    r, undefined = average_scene_correlation(x, y)
    keep = [s for s in range(12) if s != 3]
    expected = _literal_average(_dummy_residuals(x)[:, keep], _dummy_residuals(y)[:, keep], [0, 1], np.ones(11))
    assert undefined == 1 and r == pytest.approx(expected, rel=1e-9)


def test_a_resample_equals_explicit_duplication_of_ladders_and_scenes():
    x, y = _panel(2, 0.5, (3, 12, 5))
    ladder_counts = np.array([[2.0, 0.0, 1.0]])
    scene_counts = np.array([[2, 0, 1, 1, 3, 0, 1, 1, 0, 1, 1, 1]], dtype=float)
    ours = resampled_r(scene_sums(x, y), ladder_counts, scene_counts)[0]
    literal = _literal_average(_dummy_residuals(x), _dummy_residuals(y), [0, 0, 2], scene_counts[0])
    assert ours == pytest.approx(literal, rel=1e-9)


def test_each_permutation_is_the_estimand_on_scenes_paired_with_another_scenes_model():
    x, y = _panel(11, 0.3, (2, 10, 4))
    drawn = permutation_within(x, y, 5, np.random.default_rng(0))
    orders = np.argsort(np.random.default_rng(0).random((5, 10)), axis=1)  # the same draws, replayed
    for k in range(5):
        # scene s gets the model measure of scene orders[k, s]; centring commutes with permuting scenes
        assert drawn[k] == pytest.approx(average_scene_correlation(x[:, orders[k]], y)[0], rel=1e-9)


def test_within_correlation_equals_the_dummy_variable_regression():
    x, y = _panel(0, 0.4)
    r, beta = within_correlation(x, y)
    r_fit, beta_fit = _dummy_fit(x, y)
    # two float paths (lstsq vs centring) of the same exact quantity: rounding-level agreement
    assert r == pytest.approx(r_fit, rel=1e-9, abs=1e-12)
    assert beta == pytest.approx(beta_fit, rel=1e-9, abs=1e-12)


def test_scene_and_rung_effects_do_not_move_r():
    x, y = _panel(1, 0.3)
    shifted = y + 5 * np.arange(12)[None, :, None] - 3 * np.arange(5)[None, None, :]  # pure scene + rung effects
    assert within_correlation(x, shifted)[0] == pytest.approx(within_correlation(x, y)[0], rel=1e-9)
    # and y that is ONLY scene + rung effects has no within association at all: r = 0 by definition
    assert within_correlation(x, shifted - y)[0] == 0.0


def test_draw_counts_and_percentile():
    counts = draw_counts(np.random.default_rng(0), 7, 500)
    assert counts.shape == (500, 7) and (counts.sum(1) == 7).all()
    samples = np.arange(1001) / 1000
    assert percentile(samples, 0.025) == pytest.approx(np.quantile(samples, 0.025))
    rng = np.random.default_rng(3).random(97)
    assert percentile(rng, 0.9) == pytest.approx(np.quantile(rng, 0.9), rel=1e-12)


def test_permutation_p_value_extremes():
    x, _ = _panel(3, 0.0, (1, 30, 4))
    close = within_test(x, x + 1e-3 * np.random.default_rng(0).standard_normal(x.shape), 0.1)
    assert close.p_tracks == pytest.approx(1 / 2001) and close.p_sharp == pytest.approx(1 / 2001)
    opposite = within_test(x, -x, 0.1)
    assert opposite.p_tracks == 1.0 and opposite.p_sharp == 1.0
    perm = permutation_within(x, x, 200, np.random.default_rng(0))
    assert perm.max() <= 1 + 1e-12  # the identity permutation gives r = 1, nothing above it


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.5, math.nan, 0.2])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.5) and adjusted[2] == pytest.approx(0.4)


@pytest.mark.parametrize("b, c", [(0, 0), (3, 12), (10, 10), (1, 9), (25, 40), (0, 7)])
def test_mcnemar_exact_matches_scipy_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_stratified_difference_removes_a_confounding_stratum():
    # stratum A: always right, values 1; stratum B: always wrong, values 0 -- plus one mixed stratum C where
    # right and wrong have the same values: naive right - wrong = large, within strata = 0 exactly
    values = np.array([1, 1, 1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    right = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    strata = np.array(list("AAABBBCCCC"))
    assert values[right].mean() - values[~right].mean() > 0.5
    assert stratified_difference(values, right, strata) == (0.0, 1)
    result = stratified_permutation(values, right, strata, permutations=200)
    assert result["difference"] == 0.0 and result["p_greater"] == 1.0 and result["p_less"] == 1.0


def test_stratified_weights_by_hand():
    # stratum A: right [1, 1], wrong [0] -> diff 1, weight 2*1/3; stratum B: right [0], wrong [1] -> diff -1,
    # weight 1*1/2. (2/3 - 1/2) / (2/3 + 1/2) = (1/6) / (7/6) = 1/7
    values = np.array([1, 1, 0, 0, 1.0])
    right = np.array([1, 1, 0, 1, 0], dtype=bool)
    strata = np.array(list("AAABB"))
    assert stratified_difference(values, right, strata)[0] == pytest.approx(1 / 7)


# ---- the verdict rule: known-answer controls on data ----------------------------------------------------
def _tests(pairs: dict[str, tuple[np.ndarray, np.ndarray]]):
    return {name: within_test(x, y, 0.1, seed=i) for i, (name, (x, y)) in enumerate(pairs.items())}


def test_maps_that_do_not_move_with_the_model_never_track():
    x, _ = _panel(4, 0.0, (2, 64, 10))
    reused = np.broadcast_to(np.random.default_rng(1).random((1, 64, 1)), x.shape).copy()  # the same map every rung
    result = p2_verdicts(_tests({"reused": (x, reused)}))["reused"]
    assert result["r"] == 0.0 and result["low"] == 0.0 and result["high"] == 0.0
    assert result["verdict"] == "does not track"


def test_tracking_maps_track_and_small_designs_get_no_verdict():
    x, y = _panel(5, 0.6, (2, 64, 10))
    assert p2_verdicts(_tests({"m": (x, y)}))["m"]["verdict"] == "tracks"
    small = p2_verdicts(_tests({"m": (x[:1, :12], y[:1, :12])}))["m"]
    assert small["verdict"] == "inconclusive" and "below the smallest design" in small["reason"]


def test_constant_model_gives_no_verdict():
    x = np.broadcast_to(np.arange(48.0)[None, :, None], (3, 48, 10)).copy()  # no within variation in x
    _, y = _panel(6, 0.0, (3, 48, 10))
    result = p2_verdicts(_tests({"m": (x, y)}))["m"]
    assert math.isnan(result["r"]) and result["verdict"] == "inconclusive"


def test_holm_is_applied_across_the_methods_of_a_run():
    x, y = _panel(7, 0.6, (3, 48, 10))
    tests = _tests({"a": (x, y), "b": (x, y + 0.0)})
    result = p2_verdicts(tests)
    raw = [tests["a"].p_tracks, tests["b"].p_tracks, tests["a"].p_below, tests["b"].p_below]
    assert [result["a"]["p_tracks_holm"], result["b"]["p_tracks_holm"]] == holm(raw)[:2]


def test_check_cards_get_holm_across_the_methods_of_a_run():
    from dataclasses import asdict

    from faithclip.audit.check import holm_across_cards
    from faithclip.audit.p2 import P2Design

    x, y = _panel(8, 0.25, (2, 64, 6))
    design = asdict(P2Design())
    cards = []
    for name, values in (("a", y), ("b", np.broadcast_to(y[:, :, :1], y.shape).copy())):
        alone = p2_verdicts({name: within_test(x, values, 0.1, 500, 500)})  # each card judged on its own
        check = {
            "check": "P2 ladder",
            "verdict": {"tracks": "pass", "does not track": "fail"}.get(alone[name]["verdict"], "inconclusive"),
            "evidence": "",
            "details": {"design": design, "primary": {"methods": alone}},
        }
        cards.append({"method": name, "checks": [check], "failed": check["verdict"] == "fail"})
    raw = [
        cards[0]["checks"][0]["details"]["primary"]["methods"]["a"]["p_tracks"],
        cards[1]["checks"][0]["details"]["primary"]["methods"]["b"]["p_tracks"],
        cards[0]["checks"][0]["details"]["primary"]["methods"]["a"]["p_below"],
        cards[1]["checks"][0]["details"]["primary"]["methods"]["b"]["p_below"],
    ]
    holm_across_cards(cards)
    entry = cards[0]["checks"][0]["details"]["primary"]["methods"]["a"]
    assert entry["p_tracks_holm"] == pytest.approx(holm(raw)[0])
    assert cards[1]["checks"][0]["verdict"] == "fail" and cards[1]["failed"]  # constant maps: r = 0 exactly


# --- the grid as one design (faithclip.audit.p2_replicate --pooled) ---


def _grid(scene_seeds=(2, 3, 4), ladder_seeds=(0, 3, 6), ladders=2, scenes=12, rungs=5, r=0.4) -> dict:
    """Runs shaped as p2_replicate keeps them; each scene set has its own rung trend (its own scan), so a
    pooled analysis that centred all sets together would differ from one that centres each set."""
    runs = {}
    for s in scene_seeds:
        trend = np.linspace(0, -2 - 3 * (s - scene_seeds[0]), rungs)  # set-specific rung effects of x and y
        for l in ladder_seeds:
            x, y = _panel(100 * s + l, r, (ladders, scenes, rungs))
            x, y = x + trend, y + 2 * trend
            design = {"scenes": scenes, "ladders": ladders, "rungs": rungs, "resamples": 200, "permutations": 50}
            runs[(s, l)] = {
                "design": {**design, "scene_seed": s, "ladder_seed": l},
                "per_scene": {
                    "model": {"reliance": x.tolist(), "effect": x.tolist(), "margin": (-x).tolist()},
                    "maps": {"m": {"share": y.tolist(), "pointing": (y > 0).astype(float).tolist()}},
                },
            }
    return runs


@pytest.mark.parametrize("association", ["ranks", "linear"])
def test_pooled_r_is_the_average_scene_of_each_sets_own_residuals(association):
    from faithclip.audit.p2_replicate import pooled_statistics

    runs = _grid()
    for run in runs.values():
        run["design"]["association"] = association
    scaled = cell_ranks if association == "ranks" else (lambda values: values)  # each set ranked on its own
    expected, naive_x, naive_y = [], [], []
    for s in (2, 3, 4):
        x = np.concatenate([np.asarray(runs[(s, l)]["per_scene"]["model"]["reliance"]) for l in (0, 3, 6)])
        y = np.concatenate([np.asarray(runs[(s, l)]["per_scene"]["maps"]["m"]["share"]) for l in (0, 3, 6)])
        res_x, res_y = _dummy_residuals(scaled(x)), _dummy_residuals(scaled(y))
        expected += [_literal_average(res_x[:, [k]], res_y[:, [k]], list(range(6)), np.ones(1)) for k in range(12)]
        naive_x.append(x)
        naive_y.append(y)
    result = pooled_statistics(runs, ["m"])
    entry = result["primary"]["methods"]["m"]
    assert entry["scenes"] == 36 and entry["ladders"] == 6 and result["ladder_seeds"] == [0, 1, 3, 4, 6, 7]
    assert entry["r"] == pytest.approx(float(np.mean(expected)), rel=1e-9)
    # the fixture can tell: scaling and centring the stacked sets together (one rung effect, or one ranking of
    # all 36 scenes, for all sets) gives another r
    naive_x, naive_y = scaled(np.concatenate(naive_x, axis=1)), scaled(np.concatenate(naive_y, axis=1))
    naive, _ = average_scene_correlation(naive_x, naive_y)
    assert abs(naive - entry["r"]) > 0.01


def test_pooled_refuses_overlapping_ladders_and_missing_cells(tmp_path, capsys):
    from faithclip.audit.p2_replicate import main, pooled_statistics

    with pytest.raises(ValueError, match="overlap"):
        pooled_statistics(_grid(ladder_seeds=(0, 1)), ["m"])
    runs = _grid()
    del runs[(3, 6)]
    with pytest.raises(ValueError, match="every"):
        pooled_statistics(runs, ["m"])
    # on the command line: one line and exit 2, before any model is loaded
    assert main(["--ladder-seeds", "0,1", "--pooled", "--model", "no-such-model"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_pooled_table_from_kept_runs(tmp_path, capsys):
    import json

    from faithclip.audit.p2_replicate import main, run_name

    for (s, l), run in _grid().items():
        (tmp_path / run_name(s, l)).write_text(json.dumps({**run, "model": "toy", "methods": ["m"], "seconds": 1.0}))
    assert main(["--load", str(tmp_path), "--methods", "m", "--pooled"]) == 0
    out = capsys.readouterr().out
    assert "pooled: the grid as one design, 36 scenes" in out and "| m | +0." in out


def _keep(folder, runs, methods):
    """Write ``runs`` as p2_replicate --save keeps them, holding only ``methods``."""
    import json

    from faithclip.audit.p2_replicate import run_name

    folder.mkdir(exist_ok=True)
    for (s, l), run in runs.items():
        maps = {m: run["per_scene"]["maps"][m] for m in methods}
        kept = {
            **run,
            "model": "toy",
            "methods": list(methods),
            "seconds": 1.0,
            "ladders": [{"seed": l + k, "alphas": [0.0, 0.1 * (k + 1)]} for k in range(2)],
            "contrast": {m: [] for m in methods},
            "per_scene": {"model": run["per_scene"]["model"], "maps": maps},
        }
        (folder / run_name(s, l)).write_text(json.dumps(kept))


def test_runs_kept_in_two_folders_join_into_one_grid(tmp_path, capsys):
    from faithclip.audit.p2_replicate import main

    runs = _grid()
    for run in runs.values():  # a second method, whose maps differ from the first's
        share = np.asarray(run["per_scene"]["maps"]["m"]["share"])
        run["per_scene"]["maps"]["n"] = {"share": (-share).tolist(), "pointing": (share < 0).astype(float).tolist()}
    _keep(tmp_path / "both", runs, ["m", "n"])
    _keep(tmp_path / "a", runs, ["m"])
    _keep(tmp_path / "b", runs, ["n"])
    assert main(["--load", str(tmp_path / "both"), "--methods", "m,n", "--pooled"]) == 0
    together = capsys.readouterr().out
    assert main(["--load", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--methods", "m,n", "--pooled"]) == 0
    joined = capsys.readouterr().out
    strip = lambda text: text.rsplit("(runs took", 1)[0]  # noqa: E731 -- the last line times the command
    assert strip(joined) == strip(together) and "| n | -0." in joined
    # a method that no folder measured, or runs that are not the same measurement: one line, exit 2
    assert main(["--load", str(tmp_path / "a"), "--methods", "m,n"]) == 2
    assert "measured n" in capsys.readouterr().err
    shifted = {cell: {**run, "per_scene": {**run["per_scene"], "model": {}}} for cell, run in runs.items()}
    for cell, run in shifted.items():
        run["per_scene"]["model"] = {
            k: (np.asarray(v) + 0.01).tolist() for k, v in runs[cell]["per_scene"]["model"].items()
        }
    _keep(tmp_path / "other", shifted, ["n"])
    assert main(["--load", f"{tmp_path / 'a'},{tmp_path / 'other'}", "--methods", "m,n"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'reliance' differs" in err


def test_default_methods_are_those_the_family_runs():
    from faithclip.audit.p2_replicate import DEFAULT_METHODS, default_methods

    assert default_methods("clip") == list(DEFAULT_METHODS)
    vit, siglip = default_methods("vit"), default_methods("siglip")
    assert "clip_surgery" not in vit and "grad_eclip_official" in vit and len(vit) == len(DEFAULT_METHODS) - 1
    assert "clip_surgery" not in siglip and "grad_eclip_official" not in siglip and "game" in siglip


def test_cell_ranks_are_scipys_average_ranks_per_ladder_and_rung():
    g = np.random.default_rng(3)
    values = g.integers(0, 4, size=(2, 9, 3)).astype(float)  # many ties
    ranks = cell_ranks(values)
    for l in range(2):
        for v in range(3):
            assert np.array_equal(ranks[l, :, v], scipy_stats.rankdata(values[l, :, v], method="average"))


def _saturating_oracle(scenes=64, ladders=2, rungs=6, seed=5):
    """A model whose effect on each scene's object shrinks along the ladder at a scene-specific rate, and a map
    whose share is an increasing, saturating function of that effect: faithful by construction."""
    g = np.random.default_rng(seed)
    base = g.lognormal(0.0, 0.6, size=(1, scenes, 1))
    rate = g.uniform(0.5, 2.0, size=(ladders, scenes, 1))
    effect = base * np.exp(-rate * np.linspace(0, 3, rungs)[None, None, :])  # (L, S, V), all > 0
    share = effect / (effect + 0.1 * np.median(effect))
    return effect, share


def test_a_map_that_is_an_increasing_function_of_the_effect_tracks():
    from faithclip.audit.p2 import P2Design, p2_statistics

    effect, share = _saturating_oracle()
    model = {"reliance": effect, "effect": effect, "margin": effect, "competent": (effect > 0).astype(float)}
    maps = {"oracle": {"share": share, "pointing": (share > 0.5).astype(float)}}
    ranks = p2_statistics(model, maps, P2Design(resamples=300, permutations=50))["primary"]["methods"]["oracle"]
    assert ranks["r"] == pytest.approx(1.0, abs=1e-12) and ranks["verdict"] == "tracks"
    # the raw-value scale measures linear association only: on it this faithful map is called `does not track`
    # (r -0.33: the scenes whose effect is large are saturated, so their share moves least) -- why ranks are
    # the default
    linear = p2_statistics(model, maps, P2Design(resamples=300, permutations=50, association="linear"))
    entry = linear["primary"]["methods"]["oracle"]
    assert entry["r"] < 0 and entry["verdict"] == "does not track"


def test_runs_kept_before_and_after_the_scale_existed_join(tmp_path, capsys):
    import json

    from faithclip.audit.p2_replicate import join_runs, run_name

    runs = _grid()
    _keep(tmp_path / "a", runs, ["m"])
    path = tmp_path / "a" / run_name(2, 0)
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(old))
    new["design"]["association"] = "ranks"
    new["methods"], new["per_scene"]["maps"] = ["n"], {"n": old["per_scene"]["maps"]["m"]}
    new["contrast"] = {"n": []}
    assert join_runs([old, new])["methods"] == ["m", "n"]
    other = json.loads(json.dumps(new))
    other["design"]["scenes"] += 1
    with pytest.raises(ValueError, match="design differs"):
        join_runs([old, other])


def test_the_oracle_tool_tracks_on_ranks_and_its_share_is_the_formula(tmp_path, capsys, monkeypatch):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("p2_oracle", root / "tools" / "p2_oracle.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    effect = np.array([-1.0, 0.0, 1.0, 3.0])
    # c = 0.1 x median |effect| = 0.1 x 1.0; share = e+ / (e+ + c), worked by hand
    assert np.allclose(tool.oracle_share(effect, 0.1), [0.0, 0.0, 1 / 1.1, 3 / 3.1])
    effect, _ = _saturating_oracle()
    run = {
        "model": "toy",
        "design": {"scenes": 64, "ladders": 2, "rungs": 6, "resamples": 200, "permutations": 20},
        "per_scene": {"model": {"reliance": effect.tolist(), "margin": effect.tolist()}},
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    monkeypatch.setattr(sys, "argv", ["p2_oracle.py", str(tmp_path / "run.json")])
    tool.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if "| toy |" in line]
    assert "| ranks | +1.00 [+1.00, +1.00] | tracks |" in rows[0] and "| linear |" in rows[1]


def test_variance_components_by_hand_and_without_residual():
    from faithclip.audit.p2stats import variance_components

    # by hand: grand 3; row deviations -1.5, +1.5; column deviations -1, +1; residuals +-0.5
    # MS_set = 2 * 4.5 = 9, MS_ladder = 2 * 2 = 4, MS_residual = 1 -> (9 - 1) / 2, (4 - 1) / 2, 1
    assert variance_components(np.array([[1.0, 2.0], [3.0, 6.0]])) == pytest.approx((4.0, 1.5, 1.0))
    # a table that is exactly set + ladder: the components are the sample variances of the two parts
    sets, ladders = np.array([0.3, -0.1, 0.5]), np.array([0.2, 0.0, -0.4, 0.1])
    v_set, v_ladder, v_residual = variance_components(sets[:, None] + ladders[None, :])
    assert (v_set, v_ladder) == pytest.approx((np.var(sets, ddof=1), np.var(ladders, ddof=1)))
    assert v_residual == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="at least 2"):
        variance_components(np.ones((1, 4)))


def test_variance_components_recover_the_variances_a_large_table_was_drawn_with():
    from faithclip.audit.p2stats import variance_components

    g = np.random.default_rng(0)
    table = 0.3 * g.standard_normal((300, 1)) + 0.2 * g.standard_normal((1, 300)) + 0.1 * g.standard_normal((300, 300))
    assert np.sqrt(variance_components(table)) == pytest.approx((0.3, 0.2, 0.1), rel=0.1)


def test_ladder_table_is_each_scene_sets_r_on_each_single_ladder(tmp_path, capsys):
    from faithclip.audit.p2_replicate import ladder_table, load_runs, main

    runs = _grid()
    _keep(tmp_path, runs, ["m"])
    runs = load_runs([tmp_path], sorted(runs), None)
    table = ladder_table(runs, "m")
    assert table.shape == (3, 6)
    for i, s in enumerate((2, 3, 4)):
        for j, (l, k) in enumerate((l, k) for l in (0, 3, 6) for k in range(2)):
            x = np.asarray(runs[(s, l)]["per_scene"]["model"]["reliance"])[k : k + 1]
            y = np.asarray(runs[(s, l)]["per_scene"]["maps"]["m"]["share"])[k : k + 1]
            ranked = [scipy_stats.rankdata(v, axis=1) for v in (x, y)]  # among the scenes of each rung
            expected = _literal_average(*(_dummy_residuals(v) for v in ranked), [0], np.ones(x.shape[1]))
            assert table[i, j] == pytest.approx(expected, rel=1e-9)
    assert main(["--load", str(tmp_path), "--components"]) == 0
    out = capsys.readouterr().out
    assert "variance components of the per-ladder r" in out and "| m | " in out and "| mean of the variances |" in out
    # one scene set has no scene-set component: one line on stderr, exit 2, and no table printed before it
    assert main(["--load", str(tmp_path), "--scene-seeds", "2", "--components"]) == 2
    refused = capsys.readouterr()
    assert refused.out == "" and refused.err.count("\n") == 1
    del runs[(3, 6)]
    with pytest.raises(ValueError, match="every"):
        ladder_table(runs, "m")


def test_a_ladder_shift_moves_every_scenes_association_on_that_ladder():
    from faithclip.audit.p2_simulate import Scenario, population, synthetic

    g = np.random.default_rng(1)
    scenario = Scenario("scenes differ r = 0", 0.0, "scenes differ")
    x_level, y_level, r = population(scenario, 400, g)
    flat = (x_level, y_level, np.zeros_like(r))  # every scene unassociated; the ladders then shift it
    x, y = synthetic(scenario, 2, 400, 6, g, flat, np.array([0.8, -0.8]))
    per_ladder = [average_scene_correlation(x[k : k + 1], y[k : k + 1])[0] for k in range(2)]
    assert per_ladder == pytest.approx([0.8, -0.8], abs=0.05)
    # the scene set is the one handed in: its levels are the scenes' means of x over ladders and rungs
    assert np.corrcoef(x.mean((0, 2)), x_level.ravel())[0, 1] > 0.9


def test_grid_agreement_rates_are_consistent_and_a_strong_association_tracks_everywhere():
    from faithclip.audit.p2 import P2Design
    from faithclip.audit.p2_simulate import grid_agreement

    design = P2Design(resamples=200, permutations=20)
    strong = grid_agreement(0.6, (2, 48, 4), 2, 2, design, (2, 2))
    assert strong["same"] == strong["all tracks"] == strong["tracks"] == 1.0
    for r in (0.0, 0.1):
        rates = grid_agreement(r, (2, 24, 4), 3, 2, design, (2, 2))
        assert rates["same"] == pytest.approx(
            sum(rates[f"all {v}"] for v in ("tracks", "does not track", "inconclusive"))
        )
        assert rates["tracks"] + rates["does not track"] + rates["inconclusive"] == pytest.approx(1.0)


def test_a_ladder_seed_equal_to_the_models_construction_seed_recreates_its_initial_weights():
    """tools/ladder_init.py: a model built after torch.manual_seed(5) and then moved (its "training") lies at
    exactly the move's distance from its re-initialisation at seed 5, far nearer than another seed's; and
    degrade's copy at seed 5 (alpha 1) is the initial model itself."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    import transformers

    from conftest import tiny_config
    from faithclip.audit.ladder import degrade
    from faithclip.models.loading import from_hf

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("ladder_init", root / "tools" / "ladder_init.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    torch.manual_seed(5)
    initial = transformers.CLIPModel(tiny_config()).eval()
    trained = transformers.CLIPModel(tiny_config()).eval()  # stands for the trained weights: another draw
    trained.load_state_dict(initial.state_dict())
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01)
    distances = tool.init_distances(SimpleNamespace(model=trained), [5, 6])
    assert distances[6] > 5 * distances[5] > 0
    # the distance to the seed-5 copy is exactly the training move: 0.01 in every moved entry
    moved = sum(p.numel() for n, p in trained.named_parameters() if n not in ("logit_scale", "logit_bias"))
    assert distances[5] == pytest.approx(0.01 * moved**0.5, rel=1e-4)
    reinitialised = degrade(from_hf(trained), 1.0, seed=5).model.state_dict()  # alpha 1: all the copy
    for name, value in initial.state_dict().items():
        if name not in ("logit_scale", "logit_bias") and value.is_floating_point():
            assert torch.allclose(reinitialised[name], value, atol=1e-6), name
    # reinit="spawned": seed 5 is an independent draw, as far from the model as another seed's copy
    spawned = tool.init_distances(SimpleNamespace(model=trained), [5, 6], reinit="spawned")
    assert 0.8 < spawned[5] / distances[6] < 1.25 and 0.8 < spawned[6] / distances[6] < 1.25
    assert spawned[5] != spawned[6]


def test_reinit_seed_is_the_seed_or_a_spawned_one_that_small_seeds_do_not_meet():
    from faithclip.audit.ladder import reinit_seed

    assert [reinit_seed(s) for s in range(5)] == list(range(5))
    spawned = [reinit_seed(s, "spawned") for s in range(1000)]
    assert len(set(spawned)) == 1000 and min(spawned) > 10**6 and max(spawned) < 2**63
    assert spawned[:3] == [reinit_seed(s, "spawned") for s in range(3)]  # a function of the seed alone
    with pytest.raises(ValueError, match="reinit must be one of seed, spawned"):
        reinit_seed(0, "fresh")


def test_a_run_kept_before_reliance_loads_only_with_the_former_pair(tmp_path, capsys):
    """--load of a run without ``reliance`` is refused in one line naming the tool; --primary effect restates it
    with the former pair, whose table names its x; the two pairs of one run differ only in the primary x."""
    from faithclip.audit.p2_replicate import main

    runs = _grid(scene_seeds=(2,), ladder_seeds=(0,))
    for run in runs.values():
        run["per_scene"]["model"]["effect"] = (-np.asarray(run["per_scene"]["model"]["reliance"])).tolist()
    _keep(tmp_path / "new", runs, ["m"])
    for run in runs.values():
        del run["per_scene"]["model"]["reliance"]
    _keep(tmp_path / "old", runs, ["m"])
    assert main(["--load", str(tmp_path / "old"), "--scene-seeds", "2", "--ladder-seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tools/p2_reliance.py" in err and "--primary effect" in err
    common = ["--scene-seeds", "2", "--ladder-seeds", "0", "--primary", "effect"]
    assert main(["--load", str(tmp_path / "old"), *common]) == 0
    former = capsys.readouterr().out
    assert main(["--load", str(tmp_path / "new"), "--scene-seeds", "2", "--ladder-seeds", "0"]) == 0
    current = capsys.readouterr().out
    assert "primary: x = effect, y = share" in former and "primary: x = reliance, y = share" in current
    r_former = float(former.split("| m | ")[1].split(" [")[0])
    r_current = float(current.split("| m | ")[1].split(" [")[0])
    assert r_former == pytest.approx(-r_current, abs=0.011)  # effect = -reliance: the sign flips (2-digit print)
