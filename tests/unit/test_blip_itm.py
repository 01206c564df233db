"""BLIP's image-text matching (ITM) score as a target (``itm``, ``itm_log_odds``).

Oracles: transformers' own ``BlipForImageTextRetrieval(..., use_itm_head=True)`` forward (the library we
depend on): its ``itm_score`` softmax[:, 1] for ``itm``, the difference of its two logits worked by hand for
``itm_log_odds``; the maps of the methods that run on ITM are recomputed with that forward and the literal
forms of tests/reference/. The refusals: every method whose formula assumes the pooled (class-token) path,
every other family, a BLIP without an ITM head, the text side. Models are random (blip_fixtures); nothing
downloads."""

from __future__ import annotations

import json

import pytest
import torch

import faithclip
from blip_fixtures import load_float64, pixels_for, random_blip, save_random_blip
from faithclip.cli.main import main
from faithclip.equivalence import relative_difference
from faithclip.errors import MethodError
from faithclip.models.families import FAMILIES, _load_families
from faithclip.models.loading import from_hf
from faithclip.registry import METHODS
from faithclip.targets import ITM_KINDS, make_target
from reference.perturbation_methods_reference import occlusion_literal, rise_literal, rise_masks_literal
from tolerance import assert_rounding_close

TEXTS = ["a red circle", "a photo of a dog in a car"]
#: the methods whose formula takes any scalar of the image (decided from each formula; docs/families.md)
ITM_METHODS = {"grad_cam", "m2ib", "occlusion", "rise"}
QUICK = {"rise": {"masks": 8, "cells": 2}, "m2ib": {"steps": 2, "samples": 2}, "occlusion": {"window": 16, "stride": 8}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_random_blip(tmp_path_factory.mktemp("blip-itm"), seed=3)


@pytest.fixture(scope="module")
def tiny(saved):
    return faithclip.load(str(saved), dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny64(saved):
    return load_float64(saved)


def own_itm_logits(handle, pixels, texts) -> torch.Tensor:
    """``(B, K, 2)``: transformers' ITM forward, one (image, text) pair per call."""
    batch = handle.tokens(texts)
    with torch.no_grad():
        return torch.stack(
            [
                torch.cat(
                    [
                        handle.model(
                            input_ids=batch.input_ids[k : k + 1],
                            attention_mask=batch.attention_mask[k : k + 1],
                            pixel_values=pixels[b : b + 1],
                            use_itm_head=True,
                        ).itm_score
                        for k in range(len(texts))
                    ]
                )
                for b in range(pixels.shape[0])
            ]
        )


# ---- P1: the number explained is the model's own ITM output -------------------------------------------
@pytest.mark.parametrize("method", sorted(ITM_METHODS))
def test_each_itm_method_explains_the_models_own_match_probability(tiny, method):
    pixels = pixels_for(tiny)
    probability = own_itm_logits(tiny, pixels, TEXTS).softmax(-1)[..., 1]  # (B, K): the published ITM score
    explanations = faithclip.explain(tiny, pixels, TEXTS, method, target="itm", **QUICK.get(method, {}))
    for index, explanation in enumerate(explanations):
        b, k = divmod(index, len(TEXTS))
        assert explanation.target == "itm"
        assert_rounding_close(explanation.score, probability[b, k], torch.float32, what=f"{method} score")
        assert_rounding_close(explanation.model_score, probability[b, k], torch.float32, what=f"{method} model_score")
    assert len({round(e.score, 4) for e in explanations}) == 4  # four different pairs, four different scores


def test_log_odds_is_the_difference_of_the_two_logits(tiny):
    pixels = pixels_for(tiny, seed=1)
    logits = own_itm_logits(tiny, pixels, TEXTS)  # (B, K, 2)
    for index, explanation in enumerate(faithclip.explain(tiny, pixels, TEXTS, "grad_cam", target="itm_log_odds")):
        b, k = divmod(index, len(TEXTS))
        by_hand = float(logits[b, k, 1]) - float(logits[b, k, 0])
        assert explanation.target == "itm_log_odds"
        assert_rounding_close(explanation.score, by_hand, torch.float32, what="log-odds")
        assert_rounding_close(explanation.model_score, by_hand, torch.float32, what="log-odds (model)")
        probability = float(logits[b, k].double().softmax(-1)[1])  # log-odds = log(p / (1 - p))
        assert by_hand == pytest.approx(float(torch.tensor(probability / (1 - probability)).log()), abs=1e-5)


# ---- the maps, against the model's own ITM forward ---------------------------------------------------
def itm_of_image(handle, texts, kind="itm"):
    """The score function of the perturbation oracles: one image ``(1, 3, H, W)`` -> ``(K,)``."""

    def score(image):
        logits = own_itm_logits(handle, image, texts)[0]  # (K, 2)
        return logits.softmax(-1)[:, 1] if kind == "itm" else logits[:, 1] - logits[:, 0]

    return score


def test_occlusion_and_rise_maps_are_the_literal_forms_on_the_itm_score(tiny64):
    from faithclip.methods.rise import generate_masks

    pixels = pixels_for(tiny64, 1, seed=2)
    result = faithclip.explain(tiny64, pixels, TEXTS, "occlusion", target="itm_log_odds", window=16, stride=8)
    expected = occlusion_literal(itm_of_image(tiny64, TEXTS, "itm_log_odds"), pixels, 16, 8)
    for k, explanation in enumerate(result):
        assert relative_difference(expected[k], explanation.map) <= 1e-10
    result = faithclip.explain(tiny64, pixels, TEXTS, "rise", target="itm", masks=6, cells=2, seed=4)
    grids, shifts = generate_masks(6, 2, 0.5, (32, 32), torch.Generator().manual_seed(4), torch.float64)
    expected = rise_literal(itm_of_image(tiny64, TEXTS), pixels, rise_masks_literal(grids, shifts, (32, 32)), 0.5)
    for k, explanation in enumerate(result):
        assert relative_difference(expected[k], explanation.map) <= 1e-10


def test_grad_cam_map_is_the_literal_form_on_the_models_itm_forward(tiny64):
    """Grad-CAM from the model's own ITM forward: the input of the last vision block kept by a hook (the
    oracle's own), ``dS/df`` by autograd for one pair at a time, then ``ReLU(sum_c mean_t(dS/df_tc) f_jc)``."""
    model, pixels, batch = tiny64.model, pixels_for(tiny64, 2, seed=5), tiny64.tokens(TEXTS)
    block = model.vision_model.encoder.layers[-1]
    explanations = faithclip.explain(tiny64, pixels, TEXTS, "grad_cam", target="itm")
    for b in range(2):
        for k in range(2):
            kept = {}

            def keep(module, args, kwargs):  # returns None: the block's input is read, never replaced
                kept["f"] = args[0] if args else kwargs["hidden_states"]

            hook = block.register_forward_pre_hook(keep, with_kwargs=True)
            try:
                image = pixels[b : b + 1].clone().requires_grad_(True)  # a graph down to the block input
                logits = model(
                    input_ids=batch.input_ids[k : k + 1],
                    attention_mask=batch.attention_mask[k : k + 1],
                    pixel_values=image,
                    use_itm_head=True,
                ).itm_score
            finally:
                hook.remove()
            features = kept["f"]  # (1, T, D)
            (gradient,) = torch.autograd.grad(logits.softmax(-1)[0, 1], [features])
            weights = gradient[0].mean(0)  # (D,): the token mean
            expected = torch.relu(features[0, 1:] @ weights).reshape(4, 4)  # patch tokens on the 4 x 4 grid
            assert relative_difference(expected.detach(), explanations[2 * b + k].map) <= 1e-10


# ---- refusals -----------------------------------------------------------------------------------------
def test_the_decision_is_declared_per_method_and_every_class_token_method_refuses_in_one_line(tiny):
    """The methods that run on ITM are exactly those declaring ``assumes_pooled_score=None``; every other method
    offered on BLIP's image side refuses ITM in one line naming itself, its reason and the methods that run."""
    blip_image = [spec for spec in METHODS if "image" in spec.sides_on(FAMILIES["blip"])]
    assert {spec.name for spec in blip_image if spec.assumes_pooled_score is None} == ITM_METHODS
    pixels = pixels_for(tiny, 1)
    for spec in blip_image:
        if spec.name in ITM_METHODS:
            continue
        for kind in ITM_KINDS:
            with pytest.raises(MethodError) as error:
                faithclip.explain(tiny, pixels, TEXTS[0], spec.name, target=kind)
            message = str(error.value)
            assert "\n" not in message and message.startswith(f"{spec.name} cannot explain the {kind} target: ")
            assert spec.assumes_pooled_score in message and "every image token" in message
            assert message.endswith(f"Methods that explain {kind}: grad_cam, m2ib, occlusion, rise.")
    for name in ("grad_eclip", "attention_eclip"):  # the reason the issue names: the class-token derivation
        assert "class token's row of the last attention" in METHODS.get(name).assumes_pooled_score


def test_the_itm_target_is_refused_on_the_text_side_and_with_other_texts(tiny):
    pixels = pixels_for(tiny, 1)
    with pytest.raises(MethodError, match="image side only") as error:
        faithclip.explain_text(tiny, pixels, TEXTS[0], "occlusion", target="itm")
    assert "\n" not in str(error.value)
    with pytest.raises(MethodError, match="uses no other texts"):
        faithclip.explain(tiny, pixels, TEXTS[0], "occlusion", target="itm", others=["a dog"])


def test_every_other_family_refuses_itm_in_one_line():
    _load_families()
    others = [name for name in FAMILIES if name != "blip"]
    assert {"clip", "siglip", "vit"} <= set(others)
    for name in others:
        for kind in ITM_KINDS:
            with pytest.raises(MethodError) as error:
                FAMILIES[name].check_target(make_target(kind))
            assert str(error.value).startswith(
                f"a {name} model has no '{kind}' score (BLIP's image-text matching head)"
            )
            assert "\n" not in str(error.value)
    for name in ("shapes-clip", "shapes-siglip", "shapes-vit"):  # shipped: no download
        model = faithclip.load(name)
        text = "red circle" if name == "shapes-vit" else "a red circle"
        for kind in ITM_KINDS:
            with pytest.raises(MethodError, match=f"has no '{kind}' score") as error:
                faithclip.explain(model, pixels_for(model, 1), text, "occlusion", target=kind)
            assert "\n" not in str(error.value)


def test_a_blip_without_an_itm_head_refuses_itm_in_one_line(tmp_path):
    from blip_fixtures import blip_tokenizer

    model = random_blip(seed=4)
    del model.itm_head
    handle = from_hf(model, blip_tokenizer(tmp_path / "tokenizer"), name="blip-without-itm")
    pixels = pixels_for(handle, 1)
    assert faithclip.explain(handle, pixels, TEXTS[0], "occlusion", window=16, stride=16).target == "cosine"  # ITC runs
    with pytest.raises(
        MethodError, match="this BLIP model has no image-text matching head \\(itm_head is missing\\)"
    ) as error:
        faithclip.explain(handle, pixels, TEXTS[0], "occlusion", target="itm")
    assert "\n" not in str(error.value)


# ---- the command line -----------------------------------------------------------------------------------
def write_image(path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def explain_itm(image: str, model: str, text: str, method: str, out) -> int:
    """``faithclip explain IMAGE --model M --text T --target itm --methods METHOD --out OUT``, in-process."""
    argv = ["explain", image, "--model", model, "--text", text, "--target", "itm", "--methods", method]
    return main([*argv, "--out", str(out), "--no-progress"])


def test_cli_explains_itm_end_to_end_and_refuses_a_class_token_method(saved, tiny, tmp_path, capsys):
    image = str(write_image(tmp_path / "scene.png"))
    out = tmp_path / "out"
    code = explain_itm(image, str(saved), TEXTS[0], "grad_cam", str(out))
    assert code == 0, capsys.readouterr().err
    (path,) = [path for path in out.glob("*.json") if path.name != "explain.json"]  # the pair's record
    record = json.loads(path.read_text())
    assert record["target"] == "itm" and record["method"] == "grad_cam"
    pixels = tiny.pixels(tiny.decoded(image))  # what the command's model saw
    expected = own_itm_logits(tiny, pixels, TEXTS[:1]).softmax(-1)[0, 0, 1]
    assert_rounding_close(record["score"], expected, torch.float32, what="the CLI's explained score")
    assert_rounding_close(record["model_score"], expected, torch.float32, what="the CLI's model score")
    capsys.readouterr()
    code = explain_itm(image, str(saved), TEXTS[0], "grad_eclip", str(tmp_path / "refused"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "grad_eclip cannot explain the itm target" in lines[0]
    code = explain_itm(image, "shapes-clip", "a red circle", "occlusion", str(tmp_path / "clip"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "a clip model has no 'itm' score" in lines[0]
