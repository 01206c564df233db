"""The shapes world: determinism and ground truth that holds by construction.

Oracles are independent of the generator's vectorised code: pixel values read back from the image,
per-object loops, and PIL's own conversion.
"""

from __future__ import annotations

import numpy as np
import pytest

from faithclip.shapes.world import COLOUR_NAMES, COLOURS, SHAPES, ShapesWorld

N = 120


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(image_size=64, seed=3)


@pytest.fixture(scope="module")
def batch(world):
    return world.sample(N, 1, 4, seed=11)


def test_same_seed_same_bytes_other_seed_differs(world, batch):
    again = ShapesWorld(image_size=64, seed=3).sample(N, 1, 4, seed=11)
    assert again.images.tobytes() == batch.images.tobytes()
    assert np.array_equal(again.masks, batch.masks) and np.array_equal(again.labels, batch.labels)
    other = world.sample(N, 1, 4, seed=12)
    assert other.images.tobytes() != batch.images.tobytes()
    other_world = ShapesWorld(image_size=64, seed=4).sample(N, 1, 4, seed=11)
    assert other_world.images.tobytes() != batch.images.tobytes()


def test_prompts_are_every_shape_colour_pair_in_fixed_order(world):
    expected = {f"a {colour} {shape}" for colour in COLOUR_NAMES for shape in SHAPES}
    assert set(world.prompts) == expected and len(world.prompts) == len(expected) >= 20
    assert len(SHAPES) >= 4 and len(COLOURS) >= 5
    assert ShapesWorld(seed=99).prompts == world.prompts


def test_object_counts_and_distinct_classes(batch):
    counts = (batch.labels >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4 and len(set(counts.tolist())) == 4
    for labels in batch.labels:
        present = labels[labels >= 0].tolist()
        assert len(present) == len(set(present))


def test_masks_hold_exactly_the_objects_colour_and_do_not_overlap(batch):
    for i in range(N):
        covered = np.zeros(batch.images.shape[1:3], dtype=int)
        for k in range(batch.labels.shape[1]):
            mask = batch.masks[i, k]
            if batch.labels[i, k] < 0:
                assert not mask.any()
                continue
            assert mask.sum() >= 30  # a visible object, not a speck
            pixels = batch.images[i][mask]  # (pixels, 3)
            assert (pixels == batch.colours_rgb[i, k]).all()
            base = np.array(COLOURS[COLOUR_NAMES[batch.labels[i, k] // len(SHAPES)]])
            assert np.abs(batch.colours_rgb[i, k].astype(int) - base).max() <= 12
            ys, xs = np.nonzero(mask)
            assert tuple(batch.boxes[i, k]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            covered += mask
        assert covered.max() <= 1


def test_captions_match_labels(batch):
    for i, scene in enumerate(batch.scenes()[:40]):
        for obj in scene.objects:
            colour = COLOUR_NAMES[obj.label // len(SHAPES)]
            shape = SHAPES[obj.label % len(SHAPES)]
            assert obj.caption == f"a {colour} {shape}" == scene.prompts[obj.label]
            assert (obj.colour, obj.shape) == (colour, shape)
        assert scene.caption == batch.captions[i] == scene.objects[scene.target].caption
        assert np.array_equal(scene.objects[scene.target].mask, batch.target_masks[i])


def test_scene_image_is_a_pil_view_of_the_pixels(batch):
    image = batch.scene(0).image
    assert image.mode == "RGB" and image.size == (64, 64)
    assert np.array_equal(np.asarray(image), batch.images[0])


def test_single_object_set_is_balanced(world):
    single = world.single_object_set(world.num_classes * 3, seed=5)
    assert ((single.labels >= 0).sum(1) == 1).all()
    assert np.bincount(single.labels[:, 0], minlength=world.num_classes).tolist() == [3] * world.num_classes


def test_multi_object_set_has_two_to_four_objects(world):
    multi = world.multi_object_set(60, seed=6)
    counts = (multi.labels >= 0).sum(1)
    assert counts.min() >= 2 and counts.max() <= 4
    assert (multi.target_labels >= 0).all() and multi.target_masks.any(axis=(1, 2)).all()


@pytest.mark.parametrize("kind", ["recolour", "remove"])
def test_counterfactual_pairs_differ_only_inside_the_changed_object(world, kind):
    before, after = world.counterfactual_pairs(60, seed=8, kind=kind)
    changed = np.any(before.images != after.images, axis=-1)  # (N, H, W)
    inside = before.target_masks
    assert not (changed & ~inside).any()
    assert changed.any(axis=(1, 2)).all()
    rows = np.arange(60)
    if kind == "remove":
        assert (after.labels[rows, before.targets] == -1).all()
    else:
        old, new = before.target_labels, after.target_labels
        assert (old % len(SHAPES) == new % len(SHAPES)).all() and (old != new).all()
        assert changed[inside].all()  # a new colour everywhere in the mask
        for labels in after.labels:
            present = labels[labels >= 0].tolist()
            assert len(present) == len(set(present))


def test_backgrounds_are_the_image_outside_every_object_and_what_erasing_restores(world):
    before, after = world.counterfactual_pairs(40, seed=9, kind="remove")
    assert before.backgrounds.shape == before.images.shape and before.backgrounds.dtype == np.uint8
    assert np.array_equal(before.backgrounds, after.backgrounds)
    covered = before.masks.any(axis=1)  # (N, H, W): some object's pixels
    assert np.array_equal(before.images[~covered], before.backgrounds[~covered])
    for row in range(40):  # where only the named object lies, erasing it shows the background
        others = np.delete(before.masks[row], before.targets[row], axis=0).any(axis=0)
        alone = before.target_masks[row] & ~others
        assert np.array_equal(after.images[row][alone], before.backgrounds[row][alone])


def test_other_image_sizes_scale(world):
    big = ShapesWorld(image_size=128, seed=1).sample(8, 1, 4, seed=2)
    assert big.images.shape == (8, 128, 128, 3) and big.masks.shape == (8, 4, 128, 128)
    assert big.masks.sum(axis=(2, 3)).max() > 4 * 120
