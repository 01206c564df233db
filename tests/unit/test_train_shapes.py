"""Training the shapes CLIP, and the shipped model's held-out accuracy.

The shipped model is measured with plain transformers calls (``CLIPModel.from_pretrained``,
``AutoTokenizer``, ``AutoImageProcessor`` on PIL images) on scenes from a seed never used in
training; nothing from ``faithclip.shapes.train_clip`` takes part in that measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

import faithclip
from faithclip.errors import FaithclipError
from faithclip.shapes.train_clip import (
    ShapesRecipe,
    multi_positive_infonce,
    positive_matrix,
    train_shapes,
)
from faithclip.shapes.world import ShapesWorld

SHIPPED = Path(faithclip.__file__).parent / "models" / "shipped" / "shapes-clip"
TEST_SEED = 777_777  # a sample seed distinct from training (0, 1, 2, ...) and from HELD_OUT_SEED
TINY = ShapesRecipe(
    image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
    text_layers=1, text_heads=2, projection_dim=16, batch_size=32, learning_rate=3e-3,
    warmup_fraction=0.0, single_only_fraction=1.0, eval_every_seconds=1e9, eval_scenes=30,
)  # fmt: skip


def test_positive_matrix_marks_captions_whose_object_is_present():
    scene_labels = torch.tensor([[3, 7, -1], [7, -1, -1], [5, -1, -1]])
    caption_labels = torch.tensor([7, 7, 5])
    expected = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert torch.equal(positive_matrix(scene_labels, caption_labels), expected)


def test_multi_positive_infonce_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    positives = torch.tensor([[True, False], [True, True]])
    row0 = -np.log(np.exp(2) / (np.exp(2) + 1))
    row1 = -np.log(0.5)  # targets 1/2, 1/2 against softmax 1/2, 1/2
    col0 = -0.5 * (np.log(np.exp(2) / (np.exp(2) + np.e)) + np.log(np.e / (np.exp(2) + np.e)))
    col1 = -np.log(np.e / (1 + np.e))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert float(multi_positive_infonce(logits, positives)) == pytest.approx(expected, rel=1e-6)


def test_short_training_lowers_the_loss_and_saves_a_loadable_directory(tmp_path):
    out = tmp_path / "tiny-clip"
    metrics = train_shapes(out, minutes=1.0, seed=0, recipe=TINY, max_steps=40)
    assert metrics["steps"] == 40
    assert metrics["final_loss"] < metrics["first_loss"] - 0.2
    model = CLIPModel.from_pretrained(out)
    assert model.config.vision_config.image_size == 32
    assert AutoTokenizer.from_pretrained(out).model_max_length == TINY.max_length
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["seed"] == 0 and record["metrics"]["steps"] == 40
    assert not [p.name for p in tmp_path.iterdir() if p.name != "tiny-clip"]  # no partial leftovers


@pytest.mark.parametrize("minutes", [0, -1.0, float("nan")])
def test_non_positive_minutes_is_a_clear_error(tmp_path, minutes):
    with pytest.raises(FaithclipError, match="minutes must be a positive number"):
        train_shapes(tmp_path / "m", minutes=minutes, recipe=TINY)
    assert not (tmp_path / "m").exists()


def test_unwritable_out_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(FaithclipError, match="choose a writable --out"):
        train_shapes(blocker / "model", minutes=0.1, recipe=TINY)
    with pytest.raises(FaithclipError, match="is a file"):
        train_shapes(blocker, minutes=0.1, recipe=TINY)


def test_cli_reports_bad_minutes_without_traceback(tmp_path, capsys):
    from faithclip.cli.main import main

    assert main(["train-shapes", "--minutes", "0", "--out", str(tmp_path / "m")]) == 2
    assert "--minutes: must be a positive number" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shipped():
    model = CLIPModel.from_pretrained(SHIPPED).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED)
    processor = AutoImageProcessor.from_pretrained(SHIPPED)
    world = ShapesWorld(
        model.config.vision_config.image_size, seed=json.loads((SHIPPED / "TRAINING.json").read_text())["seed"]
    )
    with torch.no_grad():
        tokens = tokenizer(list(world.prompts), padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)
    return model, processor, world, text / text.norm(dim=-1, keepdim=True)


def _scores(shipped, batch) -> np.ndarray:
    model, processor, _, text = shipped
    pixels = processor(images=[scene.image for scene in batch.scenes()], return_tensors="pt").pixel_values
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
    return (image / image.norm(dim=-1, keepdim=True) @ text.T).numpy()  # (N, classes)


def test_shipped_model_is_small_and_documented():
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size <= 15 * 2**20
    record = json.loads((SHIPPED / "TRAINING.json").read_text())
    assert {"command", "seed", "minutes_budget", "metrics"} <= set(record)


def test_shipped_model_zero_shot_top1_on_held_out_single_objects(shipped):
    world = shipped[2]
    batch = world.single_object_set(240, seed=TEST_SEED)
    accuracy = (_scores(shipped, batch).argmax(1) == batch.labels[:, 0]).mean()
    assert accuracy >= 0.95


def test_shipped_model_ranks_present_objects_above_absent_ones(shipped):
    world = shipped[2]
    batch = world.multi_object_set(240, seed=TEST_SEED + 1)
    scores = _scores(shipped, batch)
    ranked = []
    for row, labels in zip(scores, batch.labels):
        present = labels[labels >= 0]
        absent = np.setdiff1d(np.arange(world.num_classes), present)
        ranked.append(row[present].min() > row[absent].max())
    assert np.mean(ranked) >= 0.90
