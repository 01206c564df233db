"""``faithclip evaluate`` and ``faithclip check`` on every family, end to end, with tiny random models of
ViT, DeiT, SigLIP and BLIP on a few shapes scenes.

Oracles: the evaluate's RISE deletion curve of one image recomputed literally from the transformers model's
own forward (the map in the record ranks the pixels, a stable numpy sort, the top ``m`` set to the
normalised zero, then ``softmax(logits)`` of a classifier over all its classes or ``sigmoid`` of SigLIP's
``logits_per_image``); BLIP's energy pointing game recomputed from its map and mask; for the check, a
callable that explains a forward with an edited weight (a departure by construction) fails P1 on every
family, while Attention-ECLIP on the model's own forward passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_family_vit import random_classifier
from test_siglip import tiny_siglip

from blip_fixtures import blip_tokenizer, random_blip
from faithclip.data.folders import open_data
from faithclip.evaluation import EvalConfig, EvaluationError, Evaluator
from faithclip.models.loading import from_hf
from tolerance import assert_rounding_close

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32  # the tiny models' input: the shapes scenes are rendered at it, so no resize or crop happens


def shapes_names() -> list[str]:
    from faithclip.shapes.world import ShapesWorld

    return list(ShapesWorld(image_size=SIZE, seed=0).prompts)


def classifier(kind: str):
    return from_hf(random_classifier(kind, dtype=torch.float32, labels=shapes_names()), name=f"tiny-{kind}")


def siglip():
    from faithclip.shapes.tokenizer import as_transformers_tokenizer, build_word_tokenizer

    words = sorted({word for name in shapes_names() for word in name.split()})
    tokenizer = as_transformers_tokenizer(build_word_tokenizer(words), 16)
    model = tiny_siglip(seed=3, dtype=torch.float32, image_size=SIZE, context=16, vocab=len(tokenizer))
    model.config.text_config.eos_token_id = tokenizer.eos_token_id
    model.config.text_config.bos_token_id = tokenizer.bos_token_id
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    return from_hf(model, tokenizer, name="tiny-siglip")


def blip(tmp_path):
    return from_hf(random_blip(seed=2), blip_tokenizer(tmp_path / "blip-tokenizer"), name="tiny-blip")


def evaluate(handle, out, metrics, methods=("attention_eclip",), limit=2):
    data = open_data("shapes", image_size=handle.preprocess.size, count=4)
    config = EvalConfig(
        model=handle.name, data="shapes", methods=list(methods), metrics=list(metrics), limit=limit, examples=limit
    )
    return Evaluator(handle, config).run(data, out, progress=False, report=False), data


def literal_deletion(handle, probability, image, patch_map, counts):
    """The RISE deletion points of ``image``: the ``m`` most salient pixels (bilinear upsampling of the map,
    ties in raster order) set to the normalised zero, each scored by ``probability(pixels)``."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0  # (H, W, 3)
    mean, std = np.array(handle.preprocess.mean), np.array(handle.preprocess.std)
    pixels = torch.tensor(((rgb - mean) / std).transpose(2, 0, 1), dtype=torch.float32)  # (3, H, W)
    upsampled = F.interpolate(
        torch.tensor(patch_map, dtype=torch.float64)[None, None],
        size=rgb.shape[:2],
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    order = np.argsort(-upsampled.reshape(-1), kind="stable")
    values = []
    for m in counts:
        deleted = pixels.clone().reshape(3, -1)
        deleted[:, order[:m]] = 0.0
        values.append(probability(deleted.reshape(1, *pixels.shape)))
    return values


def check_rise_deletion(handle, results, data, probability):
    record = next(r for r in results["per_image"] if r["case"] == "scene00000" and r["method"] == "attention_eclip")
    x, y = record["curves"]["deletion_rise"]["prob"]
    pixels = SIZE * SIZE
    points = [0, len(x) // 2, len(x) - 1]
    counts = [round(x[i] * pixels) for i in points]
    image = data.cases[0]().image
    assert image.size == (SIZE, SIZE)
    expected = literal_deletion(handle, probability, image, record["map"], counts)
    assert_rounding_close(torch.tensor([y[i] for i in points]), torch.tensor(expected), what="RISE deletion points")
    return record


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_evaluate_a_classifier_scores_its_own_softmax_over_its_classes(kind, tmp_path):
    handle = classifier(kind)
    if kind == "deit":  # DeiT's processor resizes then crops: render at its crop size for the literal oracle
        from faithclip.models.preprocess import ImagePreprocess

        handle.preprocess = ImagePreprocess(
            size=SIZE,
            crop_height=SIZE,
            crop_width=SIZE,
            mean=handle.preprocess.mean,
            std=handle.preprocess.std,
            resample=3,
            resize="exact",
            center_crop=False,
        )
    results, data = evaluate(handle, tmp_path / "run", ["zeroshot", "deletion_rise", "pointing_game"])
    assert results["complete"] and results["model"]["name"] == f"tiny-{kind}"

    def probability(pixels):
        with torch.no_grad():
            logits = handle.model(pixel_values=pixels).logits.double()  # (1, C): the model's own head
        return float(logits.softmax(-1)[0, data.cases[0]().label])

    check_rise_deletion(handle, results, data, probability)
    model_record = next(r for r in results["per_image"] if r["case"] == "scene00000" and r["method"] == "-")
    image = data.cases[0]().image
    pixels = torch.tensor(((np.asarray(image) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None], dtype=torch.float32)
    if kind == "vit":  # ViT's own normalisation: mean = std = 0.5
        with torch.no_grad():
            predicted = int(handle.model(pixel_values=pixels).logits.argmax())
        assert model_record["details"]["zeroshot"]["predicted"] == predicted


def test_evaluate_siglip_scores_the_sigmoid_of_its_own_logit(tmp_path):
    handle = siglip()
    results, data = evaluate(handle, tmp_path / "run", ["deletion_rise", "zeroshot"])
    names = shapes_names()
    ids = handle.tokenizer(names, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    label = data.cases[0]().label

    def probability(pixels):
        with torch.no_grad():  # SigLIP's own forward: logits_per_image = exp(t) cos + b
            logits = handle.model(pixel_values=pixels, input_ids=ids).logits_per_image.double()  # (1, K)
        return float(torch.sigmoid(logits[0, label]))

    check_rise_deletion(handle, results, data, probability)


def test_evaluate_blip_refuses_probabilities_in_one_line_and_runs_localisation(tmp_path):
    handle = blip(tmp_path)
    with pytest.raises(EvaluationError) as error:
        evaluate(handle, tmp_path / "refused", ["zeroshot", "pointing_game"])
    assert "zeroshot cannot run on blip models" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "refused").exists()
    results, data = evaluate(handle, tmp_path / "run", ["energy_pointing_game"])
    record = next(r for r in results["per_image"] if r["case"] == "scene00000" and r["method"] == "attention_eclip")
    item = data.cases[0]()
    upsampled = (
        F.interpolate(
            torch.tensor(record["map"], dtype=torch.float64)[None, None],
            size=(SIZE, SIZE),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        .clamp_min(0)
        .numpy()
    )
    energy = upsampled[item.mask].sum() / upsampled.sum()
    assert abs(record["values"]["energy_pointing_game"]["energy"] - energy) <= 1e-9


def test_evaluate_resumes_on_another_family(tmp_path):
    """Run identity and resume hold on a non-CLIP family: a second run reads its records back."""
    handle = siglip()
    first, _ = evaluate(handle, tmp_path / "run", ["deletion_rise"], limit=1)
    again, _ = evaluate(handle, tmp_path / "run", ["deletion_rise"], limit=1)
    assert first["per_image"] == again["per_image"]
    with pytest.raises(EvaluationError, match="different settings"):
        evaluate(handle, tmp_path / "run", ["deletion_rise"], methods=("self_attention",), limit=1)


# ---- check ----------------------------------------------------------------------------------------------
def edited_forward(model, pixels, texts):
    """Explains the family's default score through a forward whose first block's attention output projection
    is scaled: a departure by construction. The weight is restored afterwards, so only the run shows it."""
    from faithclip.methods.context import Context

    handle = model
    weight = handle.family.attention(handle.family.blocks(handle.model, "vision")[0]).out.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        Context(
            handle=handle, side="image", pixels=pixels, text=handle.tokens(texts), target=handle.family.default_target()
        ).model_scores()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    grid = SIZE // handle.patch_size
    return torch.ones(pixels.shape[0], len(texts), grid, grid)


FAMILIES = {
    "vit": lambda tmp: classifier("vit"),
    "deit": lambda tmp: classifier("deit"),
    "siglip": lambda tmp: siglip(),
    "blip": blip,
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_check_p1_passes_the_models_own_forward_and_fails_an_edited_one(family, tmp_path):
    from faithclip.audit.check import CheckSettings, resolve_method, run_check
    from faithclip.methods.external import callable_method

    handle = FAMILIES[family](tmp_path)
    settings = CheckSettings(checks=("p1", "claims", "sanity", "text"), sanity_scenes=2, text_scenes=3, resamples=50)
    spec, origin = resolve_method("attention_eclip")
    card = run_check(handle, spec, settings, origin)
    verdicts = {check["check"]: check["verdict"] for check in card["checks"]}
    sides = {"vit": ["P1 image"], "deit": ["P1 image"]}.get(family, ["P1 image", "P1 text"])
    assert [name for name in verdicts if name.startswith("P1")] == sides
    assert all(verdicts[side] == "pass" for side in sides), card["checks"]
    assert verdicts["claims"] == "pass" and "sanity" in verdicts and "text sensitivity" in verdicts
    edited = run_check(handle, callable_method(edited_forward, "edited"), CheckSettings(checks=("p1",)), "callable")
    assert edited["checks"][0]["verdict"] == "fail", edited["checks"]
    assert "embedding_not_the_models" in edited["checks"][0]["evidence"]


def test_check_refuses_a_method_the_family_lacks_in_one_line(capsys):
    from faithclip.cli.main import main

    code = main(["check", "--methods", "clip_surgery", "--model", "shapes-siglip"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "not available for siglip models" in error[0]
