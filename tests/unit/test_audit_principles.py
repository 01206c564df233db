"""The audit's ablation arms, measures, P1 check and P2 ladder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_clip
from faithclip.audit import check_p1
from faithclip.audit.data import shapes_data
from faithclip.audit.departure import (
    ARMS,
    MAP_ARMS,
    arm_image_embeds,
    arm_pixels,
    audit_departure,
)
from faithclip.audit.ladder import degrade, zero_shot_accuracy
from faithclip.audit.measures import (
    crop_grid_map,
    patch_deletion_insertion,
    peak_in_mask,
)
from faithclip.methods.context import Context, MapResult
from faithclip.models.loading import from_hf, shipped_models
from faithclip.models.preprocess import ImagePreprocess
from faithclip.registry import METHODS, MethodSpec
from faithclip.report.audit_report import audit_html, format_audit
from faithclip.shapes.tokenizer import as_transformers_tokenizer, build_word_tokenizer
from faithclip.shapes.world import COLOUR_NAMES, SHAPES
from faithclip.targets import make_target

torch.set_num_threads(1)


def worded(seed: int = 0, **shape):
    """A tiny random CLIP with the shapes world's word tokenizer (end id 3)."""
    tokenizer = as_transformers_tokenizer(build_word_tokenizer([*SHAPES, *COLOUR_NAMES]), max_length=16)
    model = random_clip(seed=seed, **shape)
    model.config.text_config.eos_token_id = 3
    model.text_model.eos_token_id = 3
    return from_hf(model, tokenizer, name=f"tiny-worded-{seed}")


def scenes(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ---- the 2x2 ablation --------------------------------------------------------------------------
def test_each_arm_changes_exactly_what_it_should():
    handle = worded(heads=4, image_size=32, patch_size=8)
    big, native = scenes(3, 48), scenes(3, 32, seed=1)
    original = arm_image_embeds(handle, big, "original")
    assert torch.allclose(original, handle.encode_image(handle.pixels(big)))
    assert arm_pixels(handle, big[0], True, 640).shape[-2:] == (48, 48)
    assert arm_pixels(handle, big[0], False, 640).shape[-2:] == (32, 32)
    for arm in ("one_head", "keep_size", "official"):
        assert (arm_image_embeds(handle, big, arm) - original).abs().max() > 1e-4, arm
    # at the model's own size the keep-size input IS the model's input: keep_size == original, official == one_head
    native_embeds = {arm: arm_image_embeds(handle, native, arm) for arm in ARMS}
    assert torch.allclose(native_embeds["keep_size"], native_embeds["original"], atol=1e-5)
    assert torch.allclose(native_embeds["official"], native_embeds["one_head"], atol=1e-5)
    assert (native_embeds["one_head"] - native_embeds["original"]).abs().max() > 1e-4
    # on a one-head model the rewrite is the model: one_head == original, official == keep_size
    one = worded(heads=1, image_size=32, patch_size=8)
    embeds = {arm: arm_image_embeds(one, big, arm) for arm in ARMS}
    assert torch.allclose(embeds["one_head"], embeds["original"], atol=1e-5)
    assert torch.allclose(embeds["official"], embeds["keep_size"], atol=1e-5)
    assert (embeds["keep_size"] - embeds["original"]).abs().max() > 1e-4


def test_lambda_qk_arm_is_grad_eclip_with_out_proj_lambda():
    """The ablation's lambda factor alone (model's heads, model's input, out_proj q/k) is faithclip's
    grad_eclip with ``lambda_qk="out_proj"``: the cause is isolated, nothing else moves."""
    from faithclip.methods.grad_eclip import grad_eclip
    from faithclip.methods.grad_eclip_official import image_maps

    handle = worded(heads=4, image_size=32, patch_size=8)
    image = shapes_data(1, raw_size=32, seed=5).images[0]
    ctx = Context(
        handle=handle,
        side="image",
        pixels=handle.pixels(image),
        text=handle.tokens(["a red circle"]),
        target=make_target("cosine"),
    )
    for qk in ("raw", "out_proj"):
        arm = image_maps(ctx, ctx.pixels, 1, qk, heads=None)[0][0]
        method = grad_eclip(ctx, lambda_qk=qk).maps[0, 0]
        torch.testing.assert_close(arm, method, rtol=1e-4, atol=1e-6 * float(method.abs().max()))
    assert not torch.allclose(grad_eclip(ctx, lambda_qk="raw").maps, grad_eclip(ctx, lambda_qk="out_proj").maps)


def test_audit_departure_end_to_end_and_renderings():
    handle = worded(heads=4, image_size=32, patch_size=8)
    data = shapes_data(8, raw_size=48, seed=3)
    results = audit_departure(handle, data, map_images=2)
    arms = results["arms"]
    assert arms["original"]["flip_rate"] == 0 and arms["original"]["embedding_cosine_min"] > 1 - 1e-6
    assert arms["official"]["embedding_cosine_mean"] < 1 - 1e-6
    maps = results["maps"]["mean"]
    # same formula, model's heads, model's input, raw q/k: the faithful arm IS faithclip's grad_eclip
    assert maps["spearman_faithful_vs_grad_eclip"] == pytest.approx(1.0, abs=1e-9)
    assert maps["spearman_faithful_vs_faithful"] == pytest.approx(1.0, abs=1e-12)
    assert set(results["maps"]["arms"]) == set(MAP_ARMS) and len(MAP_ARMS) == 8  # 2 x 2 x 2 causes
    for arm in MAP_ARMS:
        assert np.isfinite(maps[f"deletion_auc_{arm}"]) and np.isfinite(maps[f"spearman_{arm}_vs_faithful"])
    assert maps["spearman_published_vs_faithful"] < 1 - 1e-6  # the published map departs
    # every figure has its n and interval: counts behind the rates, Wilson for 0 of 8 flips, bootstrap brackets
    official = arms["official"]
    assert official["n"] == 8 and official["flips"] == round(official["flip_rate"] * 8)
    assert arms["original"]["flip_rate_interval"] == pytest.approx([0.0, 1.959964**2 / (8 + 1.959964**2)], abs=1e-6)
    low, high = official["embedding_cosine_interval"]
    assert low <= official["embedding_cosine_mean"] <= high
    summary = results["maps"]
    assert summary["n"]["spearman_published_vs_faithful"] + summary["undefined"]["spearman_published_vs_faithful"] == 2
    assert summary["contrasts"]["faithful"]["deletion_auc"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 2}
    assert len(summary["per_image"]) == 2
    json.dumps(results)
    text = format_audit(results)
    assert "official pipeline (both)" in text and "one-head rewrite alone" in text
    assert "lambda on out_proj(q), out_proj(k) alone" in text and "published (all three" in text
    assert "published - faithful, paired over 2 images" in text
    # a result recorded before intervals existed (means only) still renders, its figures bare
    legacy = {**results, "maps": {k: results["maps"][k] for k in ("images", "arms", "mean")}}
    legacy.pop("bootstrap")
    legacy["arms"] = {
        arm: {k: v for k, v in values.items() if not k.endswith("_interval")} for arm, values in results["arms"].items()
    }
    legacy_text = format_audit(legacy)
    assert "published (all three" in legacy_text and "[" not in legacy_text.split("Grad-ECLIP maps")[1]
    fragment = audit_html(results)
    assert fragment.startswith("<section") and fragment.endswith("</section>") and "<script" not in fragment
    # the figure of the first image's faithful and published maps: the faithful one IS grad_eclip's map of the
    # same prompt on the same image (the formula's own method, computed here through the public API)
    example = results["maps"]["example"]
    import faithclip

    own = faithclip.explain(handle, data.images[example["image"]], example["prompt"], "grad_eclip").map
    assert torch.allclose(torch.tensor(example["faithful"], dtype=torch.float64), own.double(), rtol=1e-5, atol=1e-7)
    assert example["spearman"] == pytest.approx(summary["per_image"][0]["spearman_published_vs_faithful"])
    assert fragment.count("data:image/png;base64,") == 2 and "one colour scale" in fragment


# ---- measures ----------------------------------------------------------------------------------
def test_crop_grid_map_follows_the_models_crop():
    preprocess = ImagePreprocess(size=32, crop_height=32, crop_width=32)
    full = torch.arange(12.0).reshape(3, 4)  # a map over a 64 x 48 (W x H) image: 4 columns, 3 rows
    on_crop = crop_grid_map(full, (64, 48), preprocess, (2, 2))
    # resized to 42 x 32, crop columns 5..37: the left/right quarters are cut, rows stay
    assert on_crop.shape == (2, 2)
    assert on_crop[0, 0] < on_crop[0, 1] and on_crop[0, 0] < on_crop[1, 0]
    square = crop_grid_map(full[:2, :2], (32, 32), preprocess, (2, 2))
    assert torch.allclose(square, full[:2, :2].double())


def test_deletion_insertion_on_a_score_known_by_construction():
    """score = mean of channel 0 over the top-left patch: deleting it first drops the score at once."""
    pixels = torch.ones(3, 16, 16)
    score = lambda batch: batch[:, 0, :8, :8].mean(dim=(-1, -2))
    good = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bad = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    good_curves = patch_deletion_insertion(score, pixels, good, 8)
    bad_curves = patch_deletion_insertion(score, pixels, bad, 8)
    # x = 0, .25, .5, .75, 1; deletion y = 1, 0, 0, 0, 0 -> AUC 0.125; insertion y = 0, 1, 1, 1, 1 -> 0.875
    assert good_curves == pytest.approx({"deletion": 0.125, "insertion": 0.875})
    assert bad_curves == pytest.approx({"deletion": 0.875, "insertion": 0.125})
    mask = np.zeros((16, 16), dtype=bool)
    mask[:8, :8] = True
    assert peak_in_mask(good, mask) == 1.0 and peak_in_mask(bad, mask) == 0.0
    # no tolerance: a peak on the pixel next to the mask is a miss; an empty mask is a miss, not an error
    next_to = torch.zeros(16, 16)
    next_to[3, 8] = 1.0  # the mask ends at column 7
    assert peak_in_mask(next_to, mask) == 0.0 and peak_in_mask(good, np.zeros((16, 16), dtype=bool)) == 0.0


# ---- P1 ----------------------------------------------------------------------------------------
def _shifted_forward(ctx, **options) -> MapResult:
    """A deliberately modified forward: explains the score of a model whose image embedding is shifted."""
    with torch.no_grad():
        embeds = ctx.handle.encode_image(ctx.pixels) + 0.05
        scores = ctx.score(embeds, ctx.fixed_text_embeds()) if ctx.side == "image" else ctx.model_scores() * 1.01
    maps = torch.zeros(*scores.shape, *ctx.grid)
    return MapResult(maps=maps, scores=scores)


def test_p1_passes_faithful_methods_and_catches_modified_forwards():
    handle = worded(heads=4, image_size=32, patch_size=8)
    images = scenes(2, 32)
    texts = ["a red circle", "a blue square"]
    sneaky = MethodSpec(name="sneaky", paper="test", image=_shifted_forward)
    rows = check_p1(handle, images, texts, ["grad_eclip", "attention_eclip", "grad_eclip_official", sneaky])
    by_key = {(r.method, r.side): r for r in rows}
    for key in [
        ("grad_eclip", "image"),
        ("grad_eclip", "text"),
        ("attention_eclip", "image"),
        ("attention_eclip", "text"),
    ]:
        assert by_key[key].passed and by_key[key].max_gap <= 1e-5, key
    official = by_key[("grad_eclip_official", "image")]
    assert not official.passed and official.modifies_model and "declared" in official.reason
    assert not by_key[("grad_eclip_official", "text")].passed
    assert not by_key[("sneaky", "image")].passed and "WITHOUT declaring" in by_key[("sneaky", "image")].reason
    assert "sneaky" not in METHODS


# ---- P2 ----------------------------------------------------------------------------------------
def test_degrade_endpoints():
    handle = worded(heads=2, image_size=32, patch_size=8)
    same = degrade(handle, 0.0)
    pixels = handle.pixels(scenes(2, 32))
    assert torch.equal(same.encode_image(pixels), handle.encode_image(pixels))
    far = degrade(handle, 1.0, seed=7)
    assert (far.encode_image(pixels) - handle.encode_image(pixels)).abs().max() > 1e-3
    again = degrade(handle, 1.0, seed=7)
    assert torch.equal(far.encode_image(pixels), again.encode_image(pixels))  # seeded, reproducible
    assert torch.equal(handle.model.logit_scale, far.model.logit_scale)


def test_degrade_draws_its_copy_under_the_seed_and_leaves_the_callers_random_state_alone():
    from faithclip.audit.ladder import reinitialised_state

    handle = worded(heads=2, image_size=32, patch_size=8)
    torch.manual_seed(123)
    expected_next = torch.rand(4)  # the caller's stream, had no ladder been drawn in between
    torch.manual_seed(7)
    built = type(handle.model)(handle.model.config).state_dict()  # the oracle: the architecture after manual_seed(7)
    torch.manual_seed(123)
    state = reinitialised_state(handle.model, 7)
    degrade(handle, 0.5, seed=7)
    assert torch.equal(torch.rand(4), expected_next)
    assert state.keys() == built.keys() and all(torch.equal(state[k], built[k]) for k in built)


@pytest.mark.skipif(
    "shapes-clip" not in shipped_models(),
    reason="the shipped shapes model (src/faithclip/models/shipped/shapes-clip) has not landed yet",
)
def test_ladder_accuracy_falls_monotonically_on_the_shapes_model():
    import faithclip

    handle = faithclip.load("shapes-clip")
    data = shapes_data(120, raw_size=2 * handle.image_size, seed=11)
    accuracies = [zero_shot_accuracy(degrade(handle, alpha), data) for alpha in (0.0, 0.5, 1.0)]
    assert accuracies[0] > 0.5
    assert accuracies[0] > accuracies[1] > accuracies[2] - 0.02  # the last rung is at chance (1/30)
