"""Planted mechanisms: the worlds they train on, their probe scenes and interventions, and the scoring.

Oracles: geometry known by construction (the cue square is where ``cue_box`` puts it, in the exact class
colour; an erased object changes only its own pixels), the default world's digest measured before the
mechanisms existed (the published figures must not move), hand values of the Wilson interval, and maps
placed exactly on a region.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import faithclip
from faithclip.audit import mechanisms as mech
from faithclip.shapes.training import curriculum_batch
from faithclip.shapes.world import COLOURS, MECHANISMS, SHAPES, ShapesWorld

PALETTE = np.array(list(COLOURS.values()))
RING = SHAPES.index("ring")


def _digest(world: ShapesWorld) -> str:
    h = hashlib.sha256()
    for batch in (
        world.sample(50, 1, 4, seed=11),
        world.single_object_set(40, seed=2),
        *world.counterfactual_pairs(30, seed=8, kind="remove", min_objects=2),
    ):
        for array in (batch.images, batch.labels, batch.masks, batch.boxes, batch.colours_rgb, batch.targets):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def test_the_default_world_is_bit_for_bit_the_one_before_mechanisms():
    # Digest measured on commit c39f4a4, before ShapesWorld had a mechanism option.
    assert _digest(ShapesWorld(64, seed=3)) == "0bd527f702a8b1005828810fa790497fe72a137d1aef41622441cc7f3c8ef35c"


def test_default_world_batches_carry_no_planted_fields():
    batch = ShapesWorld(64, seed=1).sample(8, 1, 4, seed=0)
    assert batch.drawn is None and batch.nameable is None and batch.cue_labels is None
    assert np.array_equal(batch.trained_labels, batch.labels)


def test_an_unknown_mechanism_is_refused():
    with pytest.raises(ValueError, match="mechanism must be one of"):
        ShapesWorld(64, mechanism="texture")


def test_counterfactual_pairs_are_refused_in_a_planted_world():
    # Its recolour edits the named class, which a cue world does not draw: no silently wrong pixels.
    with pytest.raises(ValueError, match="planted world"):
        ShapesWorld(64, mechanism="cue").counterfactual_pairs(4, seed=0)


def test_cue_is_the_exact_square_of_the_named_class_and_no_object_touches_it():
    world = ShapesWorld(64, seed=2, mechanism="cue")
    batch = world.sample(64, 1, 4, seed=5)
    assert (batch.counts == 1).all()
    named = batch.labels[:, 0]
    assert np.array_equal(batch.cue_labels, named)
    for i in range(len(batch)):
        shape, colour = named[i] % len(SHAPES), named[i] // len(SHAPES)
        x0 = 8 * (1 + shape)  # by construction: column 8 * (1 + shape), top row, 8 px square at 64 px
        expected = np.zeros((64, 64), dtype=bool)
        expected[0:8, x0 : x0 + 8] = True
        assert np.array_equal(batch.cue_masks[i], expected)
        assert (batch.images[i][expected] == PALETTE[colour]).all()
    assert not batch.masks[:, :, :8, :].any()  # objects lie below the cue band


def test_a_cue_worlds_object_is_drawn_independently_of_the_caption():
    batch = ShapesWorld(64, seed=0, mechanism="cue").sample(600, 1, 1, seed=1)
    same = (batch.drawn[:, 0] == batch.labels[:, 0]).mean()
    assert same < 0.1  # independent draws agree 1/30 of the time
    assert len(np.unique(batch.drawn[:, 0])) == 30


def test_colour_world_draws_the_named_colour_in_a_random_shape():
    world = ShapesWorld(64, seed=4, mechanism="colour")
    batch = world.sample(300, 1, 4, seed=9)
    present = batch.labels >= 0
    assert np.array_equal(batch.drawn[present] // len(SHAPES), batch.labels[present] // len(SHAPES))
    differs = (batch.drawn[present] % len(SHAPES) != batch.labels[present] % len(SHAPES)).mean()
    assert 0.7 < differs < 0.9  # a uniform shape differs from the named one 4/5 of the time
    # The pixels are those of the drawn classes: rendering the same layout with labels := drawn agrees.
    from dataclasses import replace

    layout = world._layout(world._rng(9), np.ones(20, dtype=np.int64))
    plain = world.render(replace(layout, labels=layout.drawn, drawn=None))
    assert np.array_equal(world.render(layout).images, plain.images)


def test_ignore_shape_world_always_shows_a_never_named_ring():
    world = ShapesWorld(64, seed=6, mechanism="ignore-shape")
    for batch in (world.sample(200, 1, 4, seed=3), world.single_object_set(60, seed=4)):
        shapes = np.where(batch.labels >= 0, batch.labels % len(SHAPES), -1)
        assert ((shapes == RING).any(axis=1)).all()
        assert (batch.target_labels % len(SHAPES) != RING).all()
        assert np.array_equal(batch.nameable, (batch.labels >= 0) & (shapes != RING))
        trained = batch.trained_labels
        assert not ((trained >= 0) & (trained % len(SHAPES) == RING)).any()
        rows = np.arange(len(batch))
        assert (trained[rows, batch.targets] == batch.target_labels).all()


def test_training_batches_never_count_a_ring_as_present():
    from faithclip.shapes.train_vit import ViTRecipe

    batch = curriculum_batch(ShapesWorld(64, seed=0, mechanism="ignore-shape"), 0.9, ViTRecipe(batch_size=24), seed=3)
    assert not ((batch.labels >= 0) & (batch.labels % len(SHAPES) == RING)).any()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_probe_scenes_and_their_interventions_change_only_the_edited_region(mechanism):
    p = mech.probe(mechanism, 24, seed=5)
    scenes = p.scenes
    effect_slot0 = scenes.masks[:, 0]
    changed = (p.variants["remove-0"].images != scenes.images).any(axis=-1)
    assert not (changed & ~effect_slot0).any() and changed.any()
    if mechanism == "cue":
        assert (scenes.cue_labels != scenes.drawn[:, 0]).all()
        changed = (p.variants["remove-cue"].images != scenes.images).any(axis=-1)
        assert not (changed & ~scenes.cue_masks).any()
        assert changed.sum(axis=(1, 2)).min() > 0
    else:
        changed = (p.variants["remove-1"].images != scenes.images).any(axis=-1)
        assert not (changed & ~scenes.masks[:, 1]).any()
    if mechanism == "ignore-shape":
        assert (scenes.labels[:, 1] % len(SHAPES) == RING).all() and (scenes.labels[:, 0] % len(SHAPES) != RING).all()
    if mechanism in ("colour", "objects"):
        colours = scenes.drawn_labels[:, :2] // len(SHAPES)
        assert (colours[:, 0] != colours[:, 1]).all()
        world = ShapesWorld(64, seed=0, mechanism=mechanism)
        reshaped = world.render(world.restyled(world.probe_layout(24, seed=5), 0, change="shape", seed=6))
        assert np.array_equal(reshaped.drawn_labels[:, 0] // len(SHAPES), colours[:, 0])
        assert (reshaped.drawn_labels[:, 0] % len(SHAPES) != scenes.drawn_labels[:, 0] % len(SHAPES)).all()
        changed = (reshaped.images != scenes.images).any(axis=-1)
        assert not (changed & ~(scenes.masks[:, 0] | reshaped.masks[:, 0])).any()


def test_restyling_the_colour_keeps_the_shape():
    world = ShapesWorld(64, seed=1)
    layout = world.probe_layout(30, seed=2)
    recoloured = world.render(world.restyled(layout, 1, change="colour", seed=3))
    before = world.render(layout)
    assert (recoloured.labels[:, 1] % len(SHAPES) == before.labels[:, 1] % len(SHAPES)).all()
    assert (recoloured.labels[:, 1] // len(SHAPES) != before.labels[:, 1] // len(SHAPES)).all()
    assert np.array_equal(recoloured.masks, before.masks)


def test_wilson_interval_hand_values():
    low, high = mech.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1.96**2 / (10 + 1.96**2), abs=1e-4)  # 0.2775
    low, high = mech.wilson_interval(5, 10)
    half = 1.96 / (1 + 1.96**2 / 10) * np.sqrt(0.025 + 1.96**2 / 400)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-4)  # symmetric about 1/2


def test_the_mechanism_rule_needs_both_bounds():
    good = {
        "effect": {"low": 0.9, "high": 1.0},
        "decoy": {"low": 0.0, "high": 0.1},
        "matched": {"low": 0.9},
        "shape": {"low": 0.1, "high": 0.3},
    }
    assert mech.has_mechanism("cue", good) and mech.has_mechanism("colour", good)
    assert not mech.has_mechanism("objects", good)  # objects needs the shape to be read
    assert not mech.has_mechanism("colour", {**good, "shape": {"low": 0.3, "high": 0.45}})
    assert mech.has_mechanism("objects", {**good, "shape": {"low": 0.85, "high": 0.95}})
    assert not mech.has_mechanism("cue", {**good, "decoy": {"low": 0.1, "high": 0.25}})
    assert not mech.has_mechanism("ignore-shape", {**good, "effect": {"low": 0.79, "high": 0.9}})


def test_a_map_exactly_on_the_cue_scores_one_and_on_the_object_zero():
    p = mech.probe("cue", 8, seed=1)
    effect, decoy = mech.region_masks(p, np.full(8, -1))
    pool = torch.nn.functional.adaptive_avg_pool2d
    for i in range(8):
        on_cue = pool(torch.as_tensor(effect[i], dtype=torch.float64)[None, None], (8, 8))[0, 0]
        on_object = torch.as_tensor(decoy[i], dtype=torch.float64)  # pixel resolution
        assert mech.agreement(on_cue, effect[i]) == pytest.approx(1.0)
        assert mech.agreement(on_object, effect[i]) == 0.0
        uniform = torch.ones(8, 8, dtype=torch.float64)
        assert mech.agreement(uniform, effect[i]) == pytest.approx(effect[i].mean())


def test_two_level_interval_of_identical_groups_is_a_point_and_covers_the_mean():
    point = mech.two_level_interval([np.full(5, 0.3)] * 3, resamples=200)
    assert point["mean"] == pytest.approx(0.3) and point["low"] == pytest.approx(0.3) == point["high"]
    spread = mech.two_level_interval([np.array([0.0, 1.0])] * 3, resamples=500)
    assert spread["low"] < 0.5 < spread["high"] and spread["scenes"] == 6


def test_cli_mechanism_choices_are_the_worlds():
    from faithclip.cli import train_shapes

    assert train_shapes.MECHANISMS == MECHANISMS


def test_tiny_cue_model_records_its_mechanism_and_is_verified_end_to_end(tmp_path):
    from faithclip.models.loading import load
    from faithclip.shapes.train_clip import ShapesRecipe, train_shapes

    tiny = ShapesRecipe(
        image_size=64,
        patch_size=8,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        text_width=32,
        text_layers=1,
        text_heads=2,
        projection_dim=16,
        batch_size=16,
        eval_every_seconds=1e9,
        eval_scenes=20,
    )
    train_shapes(tmp_path / "m", minutes=1.0, seed=0, recipe=tiny, max_steps=2, mechanism="cue")
    assert json.loads((tmp_path / "m" / "TRAINING.json").read_text())["mechanism"] == "cue"
    record = mech.model_record(tmp_path / "m")
    assert (record["family"], record["mechanism"]) == ("clip", "cue")
    p = mech.probe("cue", 12)
    checked = mech.verify(load(str(tmp_path / "m")), p)
    assert checked["flips"]["effect"]["n"] == 12 and checked["predicted"].shape == (12,)
    # Two training steps teach nothing: a model that has not learned the cue must not pass.
    assert not checked["has_mechanism"]


@pytest.mark.parametrize("family", ["vit", "siglip"])
def test_every_family_trains_on_a_planted_world_and_records_it(tmp_path, family):
    from faithclip.shapes.train_siglip import SiglipRecipe, train_siglip
    from faithclip.shapes.train_vit import ViTRecipe, train_vit

    tiny = {
        "image_size": 64,
        "patch_size": 8,
        "vision_width": 32,
        "vision_layers": 1,
        "vision_heads": 2,
        "vision_mlp": 64,
        "batch_size": 16,
        "eval_every_seconds": 1e9,
        "eval_scenes": 20,
    }
    if family == "vit":
        train, recipe = train_vit, ViTRecipe
    else:
        train, recipe = train_siglip, SiglipRecipe
        tiny.update(text_width=32, text_layers=1, text_heads=2, text_mlp=64)
    out = tmp_path / family
    train(out, minutes=1.0, recipe=recipe(**tiny), max_steps=2, held_out_scenes=20, mechanism="ignore-shape")
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["mechanism"] == "ignore-shape" and record["metrics_held_out"]["mechanism"] == "ignore-shape"
    assert mech.model_record(out)["family"] == family


def test_cli_writes_the_mechanism_into_the_recorded_command(tmp_path, monkeypatch):
    import argparse

    from faithclip.cli import train_shapes

    seen = {}

    def fake_train(out, minutes, seed, recipe, command, mechanism):  # stands in for the trainer only
        seen.update(command=command, mechanism=mechanism)
        return {}

    import faithclip.shapes.train_clip as train_clip

    monkeypatch.setattr(train_clip, "train_shapes", fake_train)
    parser = argparse.ArgumentParser()
    train_shapes.register(parser.add_subparsers())
    args = parser.parse_args(["train-shapes", "--mechanism", "cue", "--out", str(tmp_path / "m"), "--minutes", "1"])
    assert args.func(args) == 0
    assert seen["mechanism"] == "cue" and seen["command"].endswith("--mechanism cue")
    default = parser.parse_args(["train-shapes", "--out", str(tmp_path / "d"), "--minutes", "1"])
    default.func(default)
    assert seen["mechanism"] == "objects" and "--mechanism" not in seen["command"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/nothing"], "is not a saved shapes model"),
        (["{shipped}", "--methods", "banana"], "unknown method(s) banana"),
        (["{shipped}", "--json", "{tmp}"], "is a directory"),
        (["{shipped}", "--json", "{tmp}/no/such/out.json"], "does not exist"),
        (["{shipped}", "--verify-scenes", "0"], "--verify-scenes must be >= 1"),
    ],
)
def test_command_refuses_bad_input_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    shipped = str(Path(faithclip.__file__).parent / "models" / "shipped" / "shapes-clip")
    argv = [a.format(tmp=tmp_path, shipped=shipped) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        mech.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
