"""Known-answer controls of P2's test on the shipped shapes model, and its measures worked by hand.

Maps that cannot track the model they are handed (the trained model's map reused on every rung, a fixed
centre blob, random maps) must never get ``tracks``; a method that measures the handed model by intervention
(occlusion whose windows restore the scene's background) must never get ``does not track``, and the model's own object-erasure map (occlusion with the
scene's objects as segments and its background as baseline) gets r = 1 and ``tracks``. The design is tiny for speed, so the size gate is lifted
(``min_scenes=0``): the rule itself is what is tested here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faithclip.audit.p2 import RELIANCE_OPTIONS, P2Design, headline_contrast, mass_share, p2_statistics, p2_test
from faithclip.audit.p2_simulate import SCENARIOS, simulate
from faithclip.audit.p2_simulate import main as simulate_main
from faithclip.methods.context import Context, MapResult
from faithclip.models.loading import shipped_models
from faithclip.registry import METHODS, MethodSpec

needs_shapes = pytest.mark.skipif("shapes-clip" not in shipped_models(), reason="the shipped shapes model is absent")


def test_mass_share_by_hand():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # the top-left cell of a 2x2 map grid, a quarter of the image
    one_cell = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    assert mass_share(one_cell, mask) == 1.0
    assert mass_share(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), mask) == 0.25  # uniform: the mask's area
    assert mass_share(-torch.ones(2, 2), mask) == 0.25  # no positive mass: counted as uniform
    assert mass_share(torch.tensor([[1.0, -5.0], [3.0, 0.0]]), mask) == 0.25  # 1 of 4 positive units


@needs_shapes
def test_object_erasure_occlusion_drops_the_named_object_by_the_models_own_effect():
    """With the scene's objects as segments and its background as baseline (P2's harness values), occlusion's
    drop on the named object is the score change of erasing it: P2's ``effect``, on every scene whose named
    object no other object overlaps (there the two images are the same pixels)."""
    import faithclip
    from faithclip.audit.p2 import model_measures, scene_options, scene_pairs

    handle = faithclip.load("shapes-clip")
    pairs = scene_pairs(handle, 8, seed=1)
    effect = model_measures(handle, pairs)["effect"]
    scenes, checked = pairs.scenes, 0
    for index in range(len(scenes)):
        masks = scenes.masks[index][scenes.labels[index] >= 0]
        named = scenes.target_masks[index]
        if (masks.sum(0)[named] > 1).any():  # another object overlaps the named one
            continue
        text = handle.tokens([scenes.prompts[scenes.target_labels[index]]])
        target = handle.family.default_target()  # the score P2 measures
        ctx = Context(handle=handle, side="image", pixels=pairs.pixels[index : index + 1], text=text, target=target)
        given = scene_options({"segments": "objects", "baseline": "background"}, scenes, index)
        occluded = METHODS.get("occlusion").image(ctx, **given).maps[0, 0]  # (H, W): each object's drop
        assert float(occluded[torch.as_tensor(named)].mean()) == pytest.approx(effect[index], abs=1e-4)
        checked += 1
    assert checked >= 4


def test_headline_contrast_counts_discordant_pairs_by_hand():
    # one ladder, 6 scenes, 3 rungs; competence 1.0, 0.5, 0.0 -> the contrast rung for level 0.5 is rung 1
    competent = np.array([[[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]], dtype=float)
    pointing = np.array([[[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]]], dtype=float)
    row = headline_contrast(competent, pointing, 0.5)[0]
    assert row["rung"] == 1 and row["competence"] == [1.0, 0.5]
    assert (row["lost"], row["gained"]) == (2, 1)  # scenes 0, 1 lost the hit; scene 3 gained it
    assert row["p_mcnemar"] == pytest.approx(1.0)  # 2 * P(X <= 1 | n = 3) = 2 * 4/8, capped at 1


def test_simulated_maps_that_ignore_the_model_never_track():
    design = P2Design(resamples=200, permutations=200)
    rates = simulate(SCENARIOS[0], 2, 16, 4, replicates=5, methods=2, design=design)
    assert rates["tracks"] == 0.0 and rates["does not track"] == 1.0


def test_simulate_usage_error_is_one_line(capsys):
    assert simulate_main(["--sizes", "3y4"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _controls(trained):
    grad_eclip = METHODS.get("grad_eclip")
    cache = {}

    def reused(ctx: Context) -> MapResult:  # the TRAINED model's map, whatever model is handed
        key = ctx.pixels.double().sum().item()
        if key not in cache:
            own = Context(handle=trained, side="image", pixels=ctx.pixels, text=ctx.text, target=ctx.target)
            cache[key] = grad_eclip.image(own).maps.detach()
        return MapResult(maps=cache[key], scores=torch.zeros(1, 1))

    def centre(ctx: Context) -> MapResult:
        gh, gw = ctx.grid
        y, x = torch.meshgrid(torch.arange(gh) - (gh - 1) / 2, torch.arange(gw) - (gw - 1) / 2, indexing="ij")
        return MapResult(maps=torch.exp(-(y**2 + x**2) / 4.0)[None, None], scores=torch.zeros(1, 1))

    generator = torch.Generator().manual_seed(0)

    def random(ctx: Context) -> MapResult:
        return MapResult(maps=torch.rand((1, 1, *ctx.grid), generator=generator), scores=torch.zeros(1, 1))

    return [
        MethodSpec("reused_trained", "", image=reused),
        MethodSpec("centre_blob", "", image=centre),
        MethodSpec("random", "", image=random),
    ]


# The design's default seeds (0, 0) in the README's test command; the replication grid's nine cells (scene
# seeds 2, 3, 4 x ladder seeds 0, 3, 6, docs/p2.md) in the slow set: the controls' verdicts on every seed.
GRID = [(0, 0)] + [pytest.param(s, l, marks=pytest.mark.slow) for s in (2, 3, 4) for l in (0, 3, 6)]


@needs_shapes
@pytest.mark.parametrize("scene_seed, ladder_seed", GRID)
def test_known_answer_controls_on_the_shapes_model(scene_seed, ladder_seed):
    import faithclip

    handle = faithclip.load("shapes-clip")
    torch.set_num_threads(1)
    design = P2Design(
        scenes=12, ladders=2, rungs=3, resamples=300, permutations=300, scene_seed=scene_seed, ladder_seed=ladder_seed
    )
    # the model's own object-erasure map: occlusion with the scene's objects as segments and its background as
    # baseline, the map P2's reliance is the share of -- by construction r = 1
    erasure = MethodSpec("object_erasure", "", image=METHODS.get("occlusion").image)
    options = {
        "occlusion": {"window": 32, "stride": 32, "baseline": "background"},
        "object_erasure": dict(RELIANCE_OPTIONS),
    }
    result = p2_test(handle, _controls(handle) + ["occlusion", erasure], design, options=options)
    model = {k: np.asarray(v) for k, v in result["per_scene"]["model"].items()}
    maps = {m: {k: np.asarray(v) for k, v in values.items()} for m, values in result["per_scene"]["maps"].items()}
    ungated = p2_statistics(model, maps, design, min_scenes=0, min_ladders=0)
    for pair in ("primary", "secondary"):
        methods = ungated[pair]["methods"]
        for control in ("reused_trained", "centre_blob", "random"):
            assert methods[control]["verdict"] != "tracks", (pair, control)
        for constant in ("reused_trained", "centre_blob"):  # the same map on every rung: no within variation
            assert methods[constant]["r"] == 0.0 and methods[constant]["verdict"] == "does not track"
        print(scene_seed, ladder_seed, pair, {m: (round(e["r"], 3), e["verdict"]) for m, e in methods.items()})
    # occlusion measures the handed model's effect by intervention: the known answer of the PRIMARY pair (effect,
    # share). The secondary pair (margin, pointing) is plausibility, with no known answer: a faithful map of a
    # model whose margin falls may still point at the named object (on 8 of the 9 grid seeds occlusion gets
    # `does not track` there, docs/p2.md).
    assert ungated["primary"]["methods"]["occlusion"]["verdict"] != "does not track"
    exact = ungated["primary"]["methods"]["object_erasure"]
    assert exact["r"] == pytest.approx(1.0, abs=1e-12) and exact["verdict"] == "tracks"
    # the size gate: this tiny design is offered no verdict at all
    assert {e["verdict"] for e in result["primary"]["methods"].values()} == {"inconclusive"}
    # the ladder stops where competence on these scenes reaches chance, and every rung saw the same scenes
    for ladder in result["ladders"]:
        assert ladder["alphas"][0] == 0.0 and ladder["competence"][0] > ladder["competence"][-1]


@needs_shapes
def test_reliance_added_to_a_kept_run_is_the_one_measured_with_it(tmp_path):
    """tools/p2_reliance.py rebuilds a kept run's scenes and rungs: the reliance it adds is the one the run measured
    (to float rounding), and a run whose kept effect is not what the rungs give is refused."""
    import importlib.util
    import json
    from pathlib import Path

    import faithclip

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("p2_reliance", root / "tools" / "p2_reliance.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    handle = faithclip.load("shapes-clip")
    torch.set_num_threads(1)
    design = P2Design(scenes=6, ladders=2, rungs=3, resamples=50, permutations=50, scene_seed=1, ladder_seed=4)
    run = p2_test(handle, ["self_attention"], design)
    measured = np.asarray(run["per_scene"]["model"].pop("reliance"))
    path = tmp_path / "scenes1_ladders4.json"
    path.write_text(json.dumps(run))
    assert "reliance added" in tool.add_reliance(path, handle)
    added = np.asarray(json.loads(path.read_text())["per_scene"]["model"]["reliance"])
    assert np.allclose(added, measured, rtol=0, atol=1e-6)
    assert "holds reliance already" in tool.add_reliance(path, handle)
    run["per_scene"]["model"]["effect"][0][0][1] += 0.01  # a rung that is not what the kept run measured
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="effect differs from the kept run"):
        tool.add_reliance(path, handle)
