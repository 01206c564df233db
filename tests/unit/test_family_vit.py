"""ViT and DeiT image classifiers (families ``vit`` and ``deit``): class names as texts, the class logit
as the score (P1: the model's own ``logits[:, k]``), the processors' layouts, Grad-ECLIP ==
Attention-ECLIP == a literal float64 oracle (tiny models and the real ViT-B/16 architecture with random
weights), the other methods against their literal oracles, and the published ViT notebook's pipeline
(``grad_eclip_official``) against its literal formula.

Oracles: tests/reference/vit_reference.py (a hand-written forward, per-head loops, attention as leaves)
and the family-agnostic literal forms of tests/reference/attention_methods_reference.py and
perturbation_methods_reference.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import faithclip
from faithclip.errors import MethodError, ModelError, TextError
from faithclip.methods.official import vit as official_vit
from faithclip.models.loading import from_hf
from faithclip.models.preprocess import ImagePreprocess
from faithclip.numerics import relative_difference
from reference import attention_methods_reference as attention_ref
from reference import perturbation_methods_reference as perturbation_ref
from reference import vit_reference as ref
from tolerance import assert_rounding_close

torch.set_num_threads(1)

LABELS = ["a red circle", "a blue square", "tabby, tabby cat", "a green triangle", "LABEL_4"]


def random_classifier(kind: str = "vit", seed: int = 0, dtype: torch.dtype = torch.float64, labels=LABELS, **shape):
    """A random ViT/DeiT classifier whose LayerNorms and biases are randomised too (no trivial identity)."""
    sizes = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    sizes.update(shape)
    config_class, model_class = (
        (transformers.ViTConfig, transformers.ViTForImageClassification)
        if kind == "vit"
        else (transformers.DeiTConfig, transformers.DeiTForImageClassification)
    )
    config = config_class(num_labels=len(labels), id2label=dict(enumerate(labels)), **sizes)
    torch.manual_seed(seed)
    model = model_class._from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name or name.endswith("bias") or "token" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
            if "position" in name:
                parameter.normal_(0, 0.5)
    return model.to(dtype).eval()


def pixels_for(size: int, count: int = 2, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ---- texts are class names ------------------------------------------------------------------------------------
def test_class_names_map_to_class_indices():
    handle = from_hf(random_classifier())
    batch = handle.tokens(["A Red Circle", "tabby cat", "tabby, tabby cat", "label_4"])
    assert batch.input_ids[:, 0].tolist() == [0, 2, 2, 4]
    assert batch.tokens[1] == ["tabby, tabby cat"]
    assert handle.tokens(torch.tensor([3, 1])).input_ids[:, 0].tolist() == [3, 1]
    with pytest.raises(TextError, match=r"close matches: 'a red circle'") as error:
        handle.tokens(["a red circel"])
    assert "\n" not in str(error.value)
    with pytest.raises(TextError, match="0..4"):
        handle.tokens(torch.tensor([5]))


def test_deit_with_teacher_is_refused():
    config = transformers.DeiTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        num_labels=3,
    )
    model = transformers.DeiTForImageClassificationWithTeacher._from_config(config, attn_implementation="eager")
    with pytest.raises(ModelError, match="distillation head"):
        from_hf(model)


# ---- P1: the explained score is the model's own logit -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_score_is_the_models_own_logit(kind):
    model = random_classifier(kind, dtype=torch.float32)
    handle = from_hf(model)
    pixels = pixels_for(32, dtype=torch.float32)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits  # (B, C)
    names = ["a blue square", "a green triangle"]
    for method in ("grad_eclip", "attention_eclip", "grad_cam", "occlusion"):
        explanations = faithclip.explain(handle, pixels, names, method)
        for index, explanation in enumerate(explanations):
            b, k = divmod(index, 2)
            # P1: the explained logit is the model's own; two forwards (batch and grad mode differ), so to rounding
            assert_rounding_close(explanation.score, float(logits[b, [1, 3][k]]), torch.float32)
            assert_rounding_close(explanation.model_score, float(logits[b, [1, 3][k]]), torch.float32)
    probability = faithclip.explain(handle, pixels[:1], "a blue square", "grad_eclip", target="probability")
    assert_rounding_close(probability.score, float(logits[0].double().softmax(-1)[1]), torch.float32)
    contrast = faithclip.explain(
        handle, pixels[:1], "a blue square", "grad_eclip", target="contrast", others=["a red circle"]
    )
    assert_rounding_close(contrast.score, float(logits[0, 1] - logits[0, 0]), torch.float32)
    with pytest.raises(MethodError, match="no 'cosine' score"):
        faithclip.explain(handle, pixels[:1], "a blue square", "grad_eclip", target="cosine")


def test_unsupported_methods_give_one_line_errors():
    handle = from_hf(random_classifier(dtype=torch.float32))
    with pytest.raises(MethodError, match="not available for vit models") as error:
        faithclip.explain(handle, pixels_for(32, 1, torch.float32), "a red circle", "clip_surgery")
    assert "\n" not in str(error.value) and "grad_eclip_official" in str(error.value)
    deit = from_hf(random_classifier("deit", dtype=torch.float32))
    with pytest.raises(MethodError, match="not available for deit"):
        faithclip.explain(deit, pixels_for(32, 1, torch.float32), "a red circle", "grad_eclip_official")
    with pytest.raises(MethodError, match="no text side"):
        faithclip.explain_text(handle, pixels_for(32, 1, torch.float32), "a red circle", "grad_eclip")


# ---- preprocessing: the two processors' layouts, worked by hand ------------------------------------------------
def _save(tmp_path, kind: str, processor: dict):
    model = random_classifier(kind, dtype=torch.float32, image_size=32, patch_size=8)
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    return faithclip.load(tmp_path)


def test_vit_processor_squashes_without_crop(tmp_path):
    """google/vit-base-patch16-224's file: ``size`` an int (square for ViT), bilinear, mean = std = 0.5. A
    64x32 image, left half red, right half blue, squashed to 32x32: columns 0-15 red, 16-31 blue, and
    red's channel 0 is (255/255 - 0.5)/0.5 = 1, blue's -1."""
    handle = _save(
        tmp_path,
        "vit",
        {
            "feature_extractor_type": "ViTFeatureExtractor",
            "do_resize": True,
            "size": 32,
            "resample": 2,
            "do_normalize": True,
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
        },
    )
    assert handle.family.name == "vit"
    assert (handle.preprocess.resize, handle.preprocess.center_crop, handle.preprocess.size) == ("exact", False, 32)
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, :32, 0] = 255
    image[:, 32:, 2] = 255
    pixels = handle.pixels(Image.fromarray(image))[0]  # (3, 32, 32)
    assert torch.equal(pixels[0, :, :15], torch.ones(32, 15)) and torch.equal(pixels[0, :, 17:], -torch.ones(32, 15))
    assert torch.equal(pixels[2, :, 17:], torch.ones(32, 15))


def test_deit_processor_resizes_then_crops(tmp_path):
    """facebook/deit-*'s file: ``size`` 256 -> 36 here (an int: 36 x 36), centre crop 32, ImageNet mean/std.
    A 36x36 image black in rows 0-2 and white below: the crop starts at (36 - 32) // 2 = 2, so output row 0
    is black ((0 - 0.485)/0.229 in channel 0) and row 1 white ((1 - 0.485)/0.229)."""
    handle = _save(
        tmp_path,
        "deit",
        {
            "image_processor_type": "DeiTImageProcessor",
            "do_resize": True,
            "size": 36,
            "resample": 3,
            "do_center_crop": True,
            "crop_size": 32,
            "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        },
    )
    assert handle.family.name == "deit" and handle.prefix_tokens == 2
    assert (
        handle.preprocess.resize,
        handle.preprocess.center_crop,
        handle.preprocess.size,
        handle.preprocess.crop_box(36, 36),
    ) == ("exact", True, 36, (2, 2, 34, 34))
    image = np.full((36, 36, 3), 255, dtype=np.uint8)
    image[:3] = 0
    pixels = handle.pixels(Image.fromarray(image))[0]
    assert torch.allclose(pixels[0, 0], torch.full((32,), -0.485 / 0.229))
    assert torch.allclose(pixels[0, 1], torch.full((32,), (1 - 0.485) / 0.229))
    # a CLIP file with an integer size keeps the shortest-edge rule
    clip = ImagePreprocess.from_dict({"image_processor_type": "CLIPImageProcessor", "size": 224, "crop_size": 224})
    assert (clip.resize, clip.center_crop) == ("shortest_edge", True)


# ---- Grad-ECLIP == Attention-ECLIP == the literal oracle ----------------------------------------------------------
SHAPES = [
    dict(num_attention_heads=1, num_hidden_layers=1, hidden_size=16, image_size=16, patch_size=8),
    dict(num_attention_heads=4, num_hidden_layers=2, hidden_size=32, image_size=24, patch_size=8),
    dict(num_attention_heads=12, num_hidden_layers=2, hidden_size=48, image_size=28, patch_size=7),
]


@pytest.mark.parametrize("kind", ["vit", "deit"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s['num_attention_heads']}-i{s['image_size']}")
def test_eclip_methods_equal_each_other_and_the_oracle(kind, shape):
    model = random_classifier(kind, seed=3, **shape)
    handle = from_hf(model)
    size = shape["image_size"]
    pixels = pixels_for(size)
    grid = size // shape["patch_size"]
    names = ["a red circle", "tabby cat"]
    largest = 0.0  # some map must be non-zero, or the comparisons pass vacuously
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        h = handle if dtype == torch.float64 else from_hf(copy.deepcopy(model).float())
        a = faithclip.explain(h, pixels.to(dtype), names, "grad_eclip")
        b = faithclip.explain(h, pixels.to(dtype), names, "attention_eclip")
        for index, (x, y) in enumerate(zip(a, b)):
            assert x.map.shape == (grid, grid)
            assert relative_difference(x.map.double(), y.map.double(), 0.0) <= tolerance
            if dtype == torch.float64:
                image, k = divmod(index, 2)
                score, expected = ref.eclip_literal(model, pixels[image : image + 1], [0, 2][k], handle.prefix_tokens)
                assert x.score == pytest.approx(score, rel=1e-12)
                largest = max(largest, float(expected.abs().max()))
                assert relative_difference(expected.reshape(grid, grid), x.map, 0.0) <= 1e-10
    assert largest > 0


@pytest.mark.slow  # regenerates the ViT-B/16 figures docs/families.md prints
def test_real_vit_b16_architecture_equivalence():
    """google/vit-base-patch16-224's published sizes, random weights: hidden 768, 12 layers, 12 heads, patch
    16, 224 px, 1000 labels. float32: the two methods within 1e-5; float64: both within 1e-10 of each other
    and of the literal oracle (which recomputes the last block from its weights)."""
    config = transformers.ViTConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        num_labels=1000,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification._from_config(config, attn_implementation="eager").eval()
    pixels = pixels_for(224, 1, torch.float32, seed=5)
    names = ["LABEL_7", "LABEL_500"]
    handle = from_hf(model)
    a = faithclip.explain(handle, pixels, names, "grad_eclip")
    b = faithclip.explain(handle, pixels, names, "attention_eclip")
    float32 = max(relative_difference(x.map.double(), y.map.double(), 0.0) for x, y in zip(a, b))
    model64 = model.double()
    handle64 = from_hf(model64)
    a64 = faithclip.explain(handle64, pixels.double(), names, "grad_eclip")
    b64 = faithclip.explain(handle64, pixels.double(), names, "attention_eclip")
    float64 = max(relative_difference(x.map, y.map, 0.0) for x, y in zip(a64, b64))
    _, expected = ref.eclip_literal(model64, pixels.double(), 500, 1)
    oracle = relative_difference(expected.reshape(14, 14), a64[1].map, 0.0)
    print(
        f"\nViT-B/16 random weights: grad_eclip vs attention_eclip float32 {float32:.3e}, float64 {float64:.3e}; "
        f"float64 vs literal oracle {oracle:.3e}"
    )
    assert float32 <= 1e-5 and float64 <= 1e-10 and oracle <= 1e-10
    with torch.no_grad():
        assert_rounding_close(a64[1].score, float(model64(pixel_values=pixels.double()).logits[0, 500]), torch.float64)


# ---- the other methods against their literal oracles ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_attention_methods_match_literal_oracles(kind):
    model = random_classifier(kind, seed=4, num_hidden_layers=3)
    handle = from_hf(model)
    pixels = pixels_for(32, 1)
    prefix = handle.prefix_tokens
    label = 3
    literal = ref.forward_literal(model, pixels)
    attentions = literal["attentions"]  # (1, H, T, T) per layer, in the graph of the logits
    score = literal["logits"][label]

    def patches(values):
        return values[prefix:].reshape(4, 4)

    def explained(method, **options):
        return faithclip.explain(handle, pixels, "a green triangle", method, **options).map

    assert float(score.detach()) == pytest.approx(
        faithclip.explain(handle, pixels, "a green triangle", "self_attention").score, rel=1e-12
    )
    torch.testing.assert_close(
        explained("self_attention"), patches(attention_ref.self_attention_literal(attentions[-1][0].detach(), 0))
    )
    torch.testing.assert_close(
        explained("rollout"), patches(attention_ref.rollout_literal([a[0].detach() for a in attentions], 0))
    )
    torch.testing.assert_close(explained("game"), patches(attention_ref.game_literal(score, attentions, 0)))
    torch.testing.assert_close(
        explained("game", start_layer=-1), patches(attention_ref.game_literal(score, attentions, 0, -1))
    )
    cam = attention_ref.grad_cam_literal(score, literal["inputs"][-1])  # (T - 1,): every token after the first
    torch.testing.assert_close(explained("grad_cam"), cam[prefix - 1 :].reshape(4, 4))


def test_perturbation_methods_match_literal_oracles():
    model = random_classifier("vit", seed=5, image_size=16)
    handle = from_hf(model)
    pixels = pixels_for(16, 1)

    def literal_score(images):  # (N, 3, H, W) -> (N,): the oracle's own forward, one image at a time
        return torch.stack([ref.forward_literal(model, image[None])["logits"][1] for image in images]).detach()

    occlusion = faithclip.explain(handle, pixels, "a blue square", "occlusion", window=4, stride=2).map
    torch.testing.assert_close(occlusion, perturbation_ref.occlusion_literal(literal_score, pixels, 4, 2, 0.0)[0])
    from faithclip.methods.rise import generate_masks

    rise = faithclip.explain(handle, pixels, "a blue square", "rise", masks=12, cells=2, batch_size=5, seed=1).map
    grids, shifts = generate_masks(12, 2, 0.5, (16, 16), torch.Generator().manual_seed(1), torch.float64)
    masks = perturbation_ref.rise_masks_literal(grids, shifts, (16, 16))
    torch.testing.assert_close(rise, perturbation_ref.rise_literal(literal_score, pixels, masks, 0.5)[0])


# ---- the published ViT notebook ------------------------------------------------------------------------------------
def test_official_vit_matches_the_literal_notebook_formula():
    """A 40x24 original (not square, not the model's 32x32): keep-size grid 3x5 with interpolated
    positions, one head, LayerNormed residual, the class logit; against the literal formula."""
    model = random_classifier("vit", seed=6, num_attention_heads=4, num_hidden_layers=2)
    handle = from_hf(model)
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    explanation = faithclip.explain(handle, original, "a green triangle", "grad_eclip_official")
    assert (
        explanation.map.shape == (3, 5)
        and explanation.options["lambda_qk"] == "raw"
        and explanation.options["cap"] is None
    )
    from faithclip.methods.official.keepsize import keep_size_pixels

    keep = keep_size_pixels(original, 8, handle.preprocess, None)[None].double()  # (1, 3, 24, 40)
    score, expected = ref.official_literal(model, keep, 3)
    assert explanation.score == pytest.approx(score, rel=1e-10)
    assert expected.abs().max() > 0
    assert relative_difference(expected.reshape(3, 5), explanation.map, 0.0) <= 1e-10
    with torch.no_grad():
        assert explanation.model_score == float(model(pixel_values=handle.pixels(original)).logits[0, 3])
    assert abs(explanation.score - explanation.model_score) > 1e-3  # a different forward: P1 fails by design


def test_official_vit_rewrite_with_the_models_heads_and_residual_is_the_model():
    model = random_classifier("vit", seed=7)
    pixels = pixels_for(32, 2)
    features, _, grid = official_vit.encode_image_rewritten(model, pixels, heads=None, residual="input")
    own = model.vit(pixel_values=pixels).last_hidden_state[:, 0]
    assert grid == (4, 4) and relative_difference(own, features, 0.0) <= 1e-12
    one_head, _, _ = official_vit.encode_image_rewritten(model, pixels, heads=1)
    assert relative_difference(own, one_head, 0.0) > 1e-3


def test_audit_runs_on_a_tiny_shapes_classifier():
    """The audit's departure on a random classifier whose labels are the shapes world's captions."""
    from faithclip.audit.run import AuditSettings, run_audit
    from faithclip.shapes.world import ShapesWorld

    labels = list(ShapesWorld(image_size=32).prompts)
    model = random_classifier("vit", seed=8, dtype=torch.float32, labels=labels, image_size=32, patch_size=8)
    handle = from_hf(model)
    results = run_audit(handle, AuditSettings(scenes=6, map_images=1, deletion_steps=4))
    assert results["text"] is None
    assert set(results["arms"]) == {"original", "one_head", "keep_size", "official"}
    assert results["arms"]["original"]["flip_rate"] == 0.0 and results["arms"]["original"][
        "embedding_cosine_min"
    ] == pytest.approx(1.0)
    assert results["maps"]["mean"]["spearman_faithful_vs_grad_eclip"] == pytest.approx(1.0)
    from faithclip.report.audit_report import format_audit

    assert "one-head" in format_audit(results)
