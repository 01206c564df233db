"""``python -m faithclip.stand_ins``: its accuracy is the model's own (checked against plain transformers
calls) and its pointing rates are the pointing game on the scenes it names."""

from __future__ import annotations

import pytest
import torch

import faithclip
from faithclip.shapes.world import ShapesWorld
from faithclip.stand_ins import HELD_OUT_SEED, class_names, main, stand_in_figures


def test_class_names_follow_the_worlds_class_order():
    prompts = ShapesWorld(image_size=64).prompts
    assert class_names(faithclip.load("shapes-clip")) == list(prompts)
    vit = faithclip.load("shapes-vit")
    assert class_names(vit) == [vit.model.config.id2label[i] for i in range(30)] == list(prompts)


@pytest.mark.parametrize("name", ["shapes-vit", "shapes-siglip"])
def test_accuracy_is_the_models_own_top1(name):
    handle = faithclip.load(name)
    figures = stand_in_figures(handle, scenes=30, pointing_scenes=3)
    batch = ShapesWorld(image_size=64, seed=0).single_object_set(30, seed=HELD_OUT_SEED)
    pixels = torch.stack([handle.preprocess.normalize(image) for image in batch.images])
    with torch.no_grad():  # the model's own forward, called as transformers documents it
        if name == "shapes-vit":
            logits = handle.model(pixel_values=pixels).logits  # (30, 30)
        else:
            ids = handle.tokenizer(
                list(ShapesWorld(image_size=64).prompts), padding="max_length", max_length=16, return_tensors="pt"
            )["input_ids"]
            logits = handle.model(input_ids=ids, pixel_values=pixels).logits_per_image  # (30, 30)
    expected = float((logits.argmax(-1).numpy() == batch.target_labels).mean())
    assert figures["accuracy"]["value"] == pytest.approx(expected)
    assert figures["accuracy"]["low"] <= expected <= figures["accuracy"]["high"]


def test_pointing_rates_are_hits_over_scenes():
    figures = stand_in_figures(faithclip.load("shapes-clip"), scenes=3, pointing_scenes=5)
    for entry in figures["pointing"].values():
        assert entry["value"] * 5 == pytest.approx(round(entry["value"] * 5))  # a count of 5 scenes
    assert set(figures["pointing"]) == {"attention_eclip", "self_attention", "occlusion", "random"}


def test_bad_counts_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--scenes", "0"])
    assert caught.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert main(["--model", "shapes_clip", "--scenes", "1", "--pointing-scenes", "1"]) == 2
    assert "Did you mean" in capsys.readouterr().err
