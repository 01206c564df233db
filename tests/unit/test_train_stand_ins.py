"""The ViT and SigLIP stand-ins: their losses against literal forms of the formulas, a few-step training
that writes a loadable directory, the CLI's family choice, and the shipped directories.

The shipped models are read with plain transformers classes only (``from_pretrained``, ``AutoTokenizer``,
``AutoImageProcessor`` on PIL images), on scenes from a sample seed used neither in training nor for
the recorded figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    SiglipModel,
    ViTForImageClassification,
)

import faithclip
from faithclip.errors import FaithclipError
from faithclip.shapes.train_siglip import (
    SiglipRecipe,
    build_tokenizer,
    sigmoid_loss,
    text_ids,
    train_siglip,
)
from faithclip.shapes.train_vit import ViTRecipe, soft_target_cross_entropy, train_vit
from faithclip.shapes.training import present_classes
from faithclip.shapes.world import ShapesWorld

SHIPPED = Path(faithclip.__file__).parent / "models" / "shipped"
TEST_SEED = 555_555  # a sample seed distinct from training (0, 1, 2, ...), HELD_OUT_SEED and EVALUATE_SEED
TINY = {
    "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1, "vision_heads": 2, "vision_mlp": 64,
    "batch_size": 16, "warmup_fraction": 0.0, "single_only_fraction": 0.0, "ramp_fraction": 0.01,
    "eval_every_seconds": 1e9, "eval_scenes": 20,
}  # fmt: skip


# ---------------------------------------------------------------- losses against literal formulas
def test_sigmoid_loss_equals_the_pairwise_sum_written_out():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.5, -0.2], [0.3, -0.7, 4.0]])
    positives = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if positives[i, j] else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-z * float(logits[i, j]))))
    assert float(sigmoid_loss(logits, positives)) == pytest.approx(total / 9, rel=1e-6)


def test_sigmoid_loss_of_a_perfect_separation_is_near_zero():
    positives = torch.eye(4, dtype=torch.bool)
    logits = torch.where(positives, 30.0, -30.0)
    assert float(sigmoid_loss(logits, positives)) < 1e-10


def test_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    present = torch.tensor([[True, False, False], [True, True, False]])
    row0 = -math.log(math.e / (math.e + 2))
    denominator = 2 * math.exp(2) + 1
    row1 = -0.5 * (math.log(math.exp(2) / denominator) + math.log(math.exp(2) / denominator))
    assert float(soft_target_cross_entropy(logits, present)) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_soft_target_gradient_raises_every_present_logit():
    logits = torch.zeros(1, 5, requires_grad=True)
    soft_target_cross_entropy(logits, torch.tensor([[True, False, True, False, False]])).backward()
    assert (logits.grad[0, [0, 2]] < 0).all() and (logits.grad[0, [1, 3, 4]] > 0).all()


def test_present_classes_marks_each_scenes_objects():
    labels = np.array([[3, 1, -1], [0, -1, -1]])
    expected = torch.tensor([[False, True, False, True], [True, False, False, False]])
    assert torch.equal(present_classes(labels, 4), expected)


# ---------------------------------------------------------------- short trainings
def test_three_step_vit_training_writes_a_loadable_directory(tmp_path):
    out = tmp_path / "vit"
    metrics = train_vit(out, minutes=1.0, recipe=ViTRecipe(**TINY), max_steps=3, held_out_scenes=30)
    assert metrics["steps"] == 3 and metrics["cpu_minutes"] >= 0
    model = ViTForImageClassification.from_pretrained(out)
    world = ShapesWorld(32, seed=0)
    assert [model.config.id2label[c] for c in range(30)] == list(world.prompts)
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.size == {"height": 32, "width": 32} and list(processor.image_mean) == [0.5] * 3
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["steps"] == 3 and record["metrics_held_out"]["scenes"] == 30
    assert not [p.name for p in tmp_path.iterdir() if p.name != "vit"]  # no partial leftovers


def test_three_step_siglip_training_writes_a_loadable_directory(tmp_path):
    out = tmp_path / "siglip"
    recipe = SiglipRecipe(**TINY, text_width=32, text_layers=1, text_heads=2, text_mlp=64)
    metrics = train_siglip(out, minutes=1.0, recipe=recipe, max_steps=3, held_out_scenes=30)
    assert metrics["steps"] == 3
    model = SiglipModel.from_pretrained(out).eval()
    assert model.config.text_config.max_position_embeddings == 16
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    world = ShapesWorld(32, seed=0)
    batch = world.sample(4, seed=TEST_SEED)
    # The plain forward's logits are t * cos + b of the pooled, normalised embeddings.
    input_ids = tokenizer(list(world.prompts), padding="max_length", return_tensors="pt").input_ids
    pixels = processor(images=[scene.image for scene in batch.scenes()], return_tensors="pt").pixel_values
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels).logits_per_image  # (4, 30)
        image = model.get_image_features(pixel_values=pixels).pooler_output
        text = model.get_text_features(input_ids=input_ids).pooler_output
    cos = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    assert torch.allclose(logits, model.logit_scale.exp() * cos + model.logit_bias, atol=1e-5)


def test_siglip_starts_from_the_papers_scale_and_bias(tmp_path):
    from faithclip.shapes.train_siglip import build_model

    recipe = SiglipRecipe(**TINY, text_width=32, text_layers=1, text_heads=2, text_mlp=64)
    model = build_model(recipe, build_tokenizer(recipe))
    assert model.logit_scale.exp().item() == pytest.approx(10.0)
    assert model.logit_bias.item() == pytest.approx(-10.0)


def test_vit_initialisation_defaults_to_transformers_and_follows_the_recipe():
    from transformers import ViTConfig

    from faithclip.shapes.train_vit import build_model

    prompts = ShapesWorld().prompts
    # Every shipped ViT was initialised with ViTConfig's own default; the recipe's default must be it.
    assert ViTRecipe().initializer_range == ViTConfig().initializer_range
    assert build_model(ViTRecipe(), prompts).config.initializer_range == ViTConfig().initializer_range
    wide = build_model(ViTRecipe(initializer_range=0.08), prompts)
    assert wide.config.initializer_range == 0.08
    # A 128 x 128 weight holds 16,384 draws: their std is within a few per cent of the one asked for.
    queries = [weight for name, weight in wide.named_parameters() if name.endswith("q_proj.weight")]
    assert len(queries) == ViTRecipe().vision_layers
    assert all(weight.std().item() == pytest.approx(0.08, rel=0.05) for weight in queries)


def test_cli_records_the_initializer_range_and_refuses_it_outside_vit(tmp_path, capsys, monkeypatch):
    import faithclip.shapes.train_vit as train_vit_module
    from faithclip.cli.main import main

    seen = {}

    def fake_train(out, minutes, seed, recipe, command, mechanism):  # stands in for the trainer only
        seen.update(recipe=recipe, command=command)
        return {}

    monkeypatch.setattr(train_vit_module, "train_vit", fake_train)
    argv = ["train-shapes", "--family", "vit", "--minutes", "1", "--out", str(tmp_path / "m")]
    assert main([*argv, "--initializer-range", "0.08"]) == 0
    assert seen["recipe"].initializer_range == 0.08 and seen["command"].endswith("--initializer-range 0.08")
    assert main(argv) == 0
    assert seen["recipe"].initializer_range == 0.02 and "--initializer-range" not in seen["command"]
    capsys.readouterr()
    for family in ("clip", "siglip"):
        assert (
            main(["train-shapes", "--family", family, "--initializer-range", "0.08", "--out", str(tmp_path / "s")]) == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--initializer-range applies to --family vit only" in err[0]


@pytest.mark.parametrize("train", [train_vit, train_siglip])
def test_non_positive_minutes_is_a_clear_error(tmp_path, train):
    with pytest.raises(FaithclipError, match="minutes must be a positive number"):
        train(tmp_path / "m", minutes=0)
    assert not (tmp_path / "m").exists()


def test_cli_rejects_an_unknown_family_in_one_line(tmp_path, capsys):
    from faithclip.cli.main import main

    assert main(["train-shapes", "--family", "resnet", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'resnet'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("family", ["vit", "siglip"])
def test_cli_reports_bad_minutes_without_traceback(tmp_path, capsys, family):
    from faithclip.cli.main import main

    assert main(["train-shapes", "--family", family, "--minutes", "0", "--out", str(tmp_path / "m")]) == 2
    assert "--minutes: must be a positive number" in capsys.readouterr().err


# ---------------------------------------------------------------- the shipped directories
def _dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


@pytest.mark.parametrize("name", ["shapes-vit", "shapes-siglip"])
def test_shipped_directory_is_small_and_records_how_it_was_made(name):
    directory = SHIPPED / name
    assert _dir_size(directory) < 15 * 2**20
    record = json.loads((directory / "TRAINING.json").read_text())
    assert record["command"].startswith(f"faithclip train-shapes --family {name.split('-')[1]} ")
    assert record["cpu_minutes"] <= 20 and record["steps"] > 0
    assert {"zero_shot_top1", "multi_object_top1", "scenes", "sample_seeds"} <= set(record["metrics_held_out"])


def test_shipped_vit_has_the_recorded_sizes_and_labels():
    directory = SHIPPED / "shapes-vit"
    recipe = json.loads((directory / "TRAINING.json").read_text())["recipe"]
    config = ViTForImageClassification.from_pretrained(directory).config
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
            config.num_attention_heads, config.intermediate_size) == (
        recipe["image_size"], recipe["patch_size"], recipe["vision_width"], recipe["vision_layers"],
        recipe["vision_heads"], recipe["vision_mlp"])  # fmt: skip
    assert [config.id2label[c] for c in range(30)] == list(ShapesWorld().prompts)
    processor = AutoImageProcessor.from_pretrained(directory)
    assert processor.size == {"height": recipe["image_size"], "width": recipe["image_size"]}
    assert list(processor.image_mean) == recipe["image_mean"] and list(processor.image_std) == recipe["image_std"]


def test_shipped_siglip_has_the_recorded_sizes():
    directory = SHIPPED / "shapes-siglip"
    recipe = json.loads((directory / "TRAINING.json").read_text())["recipe"]
    config = SiglipModel.from_pretrained(directory).config
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers,
            vision.num_attention_heads, vision.intermediate_size) == (
        recipe["image_size"], recipe["patch_size"], recipe["vision_width"], recipe["vision_layers"],
        recipe["vision_heads"], recipe["vision_mlp"])  # fmt: skip
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.max_position_embeddings) == (
        recipe["text_width"],
        recipe["text_layers"],
        recipe["text_heads"],
        recipe["max_length"],
    )
    processor = AutoImageProcessor.from_pretrained(directory)
    assert processor.size == {"height": recipe["image_size"], "width": recipe["image_size"]}
    assert list(processor.image_mean) == recipe["image_mean"] and list(processor.image_std) == recipe["image_std"]


def test_shipped_siglip_tokenizer_pads_to_the_trained_layout():
    directory = SHIPPED / "shapes-siglip"
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompts = list(ShapesWorld().prompts)
    trained = text_ids(build_tokenizer(SiglipRecipe()), prompts, 16)  # what training fed the text tower
    for call in ({"padding": "max_length"}, {"padding": "max_length", "max_length": 16}):
        ids = tokenizer(prompts, return_tensors="pt", **call).input_ids
        assert torch.equal(ids, trained)
    assert tokenizer.model_max_length == 16 and tokenizer.padding_side == "right"
    assert (trained[:, -1] == tokenizer.pad_token_id).all()  # the pooled last position is padding
    assert (trained == tokenizer.eos_token_id).sum(1).eq(1).all()


def _held_out_single_objects(world: ShapesWorld, n: int = 150):
    batch = world.single_object_set(n, seed=TEST_SEED)
    return batch, [scene.image for scene in batch.scenes()]


def test_shipped_vit_classifies_held_out_single_objects():
    directory = SHIPPED / "shapes-vit"
    model = ViTForImageClassification.from_pretrained(directory).eval()
    processor = AutoImageProcessor.from_pretrained(directory)
    batch, images = _held_out_single_objects(ShapesWorld(model.config.image_size, seed=0))
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    assert (logits.argmax(1).numpy() == batch.labels[:, 0]).mean() >= 0.95


def test_shipped_siglip_zero_shot_on_held_out_single_objects():
    directory = SHIPPED / "shapes-siglip"
    model = SiglipModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    processor = AutoImageProcessor.from_pretrained(directory)
    world = ShapesWorld(model.config.vision_config.image_size, seed=0)
    batch, images = _held_out_single_objects(world)
    input_ids = tokenizer(list(world.prompts), padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=input_ids, **processor(images=images, return_tensors="pt")).logits_per_image
    assert (logits.argmax(1).numpy() == batch.labels[:, 0]).mean() >= 0.95
