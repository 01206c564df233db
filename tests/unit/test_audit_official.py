"""grad_eclip_official against an oracle re-derived from docs/audit.md's statement of the published pipeline;
the one-head rewrite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from conftest import B32_DIR, VOC_DIR, random_clip, token_ids
from faithclip.api import grad_eclip_official_explain
from faithclip.methods.official.formula import official_lambda
from faithclip.methods.official.keepsize import cap_short_side, keep_size_pixels
from faithclip.methods.official.rewrite import (
    encode_image_rewritten,
    encode_text_rewritten,
)
from faithclip.models.loading import from_hf
from faithclip.models.preprocess import ImagePreprocess
from faithclip.registry import METHODS
from reference import grad_eclip_official_reference as ref

torch.set_num_threads(1)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture(scope="module")
def handle64():
    return from_hf(random_clip(seed=3, dtype=torch.float64), name="tiny64")


def test_registered_as_modifying_model_and_input():
    spec = METHODS.get("grad_eclip_official")
    assert spec.modifies_model and spec.modifies_input and spec.sides == ("image", "text")


# ---- against the oracle written from docs/audit.md (tests/reference/grad_eclip_official_reference.py) ----
# The keep-size cap is passed explicitly everywhere: its default depends on the variant.
CAP = 640
FLOAT64_ATOL = 1e-10  # absolute, on maps of order 1e-2..1: both sides mirror transformers' float32 softmax
FLOAT32_RTOL = 1e-4  # relative to the map's largest magnitude


@pytest.fixture(scope="module")
def handle32():
    return from_hf(random_clip(seed=3, dtype=torch.float32), name="tiny32")


@pytest.fixture(scope="module")
def handles(handle64, handle32):
    return {torch.float64: handle64, torch.float32: handle32}


def assert_maps_agree(got: torch.Tensor, expected: torch.Tensor, undefined_rows_allowed: bool = False) -> None:
    """float64: absolute FLOAT64_ATOL; float32: FLOAT32_RTOL times the oracle's largest magnitude.

    A text map is 0/0 (NaN) in the published pipeline when the ReLU leaves nothing on the words (it does
    not guard the division); faithclip returns zeros there, never NaN. Where ``undefined_rows_allowed``, such
    rows must be undefined in the oracle and exactly zero in faithclip; otherwise there may be none.
    """
    assert got.shape == expected.shape
    got = got.to(expected.dtype)
    undefined = expected.isnan()
    assert not got.isnan().any()
    assert bool((got[undefined] == 0).all())
    if undefined_rows_allowed:
        assert (~undefined).any(), "every map is undefined: the comparison would test nothing"
    else:
        assert not undefined.any()
    got, expected = got[~undefined], expected[~undefined]
    if expected.dtype == torch.float64:
        assert torch.allclose(got, expected, atol=FLOAT64_ATOL, rtol=0), float((got - expected).abs().max())
    else:
        bound = FLOAT32_RTOL * float(expected.abs().max())
        assert torch.allclose(got, expected, atol=bound, rtol=0), float((got - expected).abs().max()) / bound


def score_tolerance(dtype: torch.dtype) -> float:
    return FLOAT64_ATOL if dtype == torch.float64 else 1e-5


def image_side(handle, image, text, ids, *, qk: str = "out_proj", layers: int = 1, cap: int | None = CAP):
    """faithclip's explanations and the oracle's (maps, cosines) of one image (PIL or path)."""
    explanations = grad_eclip_official_explain(handle, image, text, lambda_qk=qk, layers=layers, cap=cap)
    text_embeds, _, _ = ref.text_embedding(handle.model, ids, 0)  # the model's own text forward, by hand
    expected, cosines = ref.official_image_map(
        handle.model,
        image,
        text_embeds.detach(),
        cap=cap,
        qk=qk,
        layers=layers,
        mean=handle.preprocess.mean,
        std=handle.preprocess.std,
    )
    got = torch.stack([e.map for e in explanations])
    assert_maps_agree(got, expected)
    assert np.allclose([e.score for e in explanations], cosines.numpy(), atol=score_tolerance(expected.dtype), rtol=0)
    return explanations, expected


def text_side(handle, image, text, ids, *, qk: str = "out_proj", undefined_rows_allowed: bool = False):
    """faithclip's text explanations and the oracle's maps against one image (PIL or path)."""
    explanations = grad_eclip_official_explain(handle, image, text, side="text", lambda_qk=qk)
    preprocess = handle.preprocess
    expected, cosines = ref.official_text_map(
        handle.model,
        ids,
        image,
        qk=qk,
        size=preprocess.size,
        crop=preprocess.crop_height,
        mean=preprocess.mean,
        std=preprocess.std,
    )
    got = torch.stack([e.map[: ids.shape[1]] for e in explanations])
    assert all(float(e.map[ids.shape[1] :].abs().sum()) == 0 for e in explanations)
    assert_maps_agree(got, expected, undefined_rows_allowed)
    assert np.allclose([e.score for e in explanations], cosines.numpy(), atol=score_tolerance(expected.dtype), rtol=0)
    for row, explanation in zip(ids, explanations):
        end = int(row.argmax())
        assert explanation.map[0] == 0 and explanation.map[end:].abs().sum() == 0
        assert not explanation.map.isnan().any()
        if explanation.map.any():
            assert float(explanation.map.sum()) == pytest.approx(1.0, abs=1e-5)
        else:
            assert any("all-zero map" in note for note in explanation.warnings)
    return explanations, expected


VARIANTS = {
    "evaluation_script": dict(qk="out_proj", layers=1, cap=CAP),
    "image_notebook": dict(qk="raw", layers=2, cap=None),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_image_map_equals_the_oracle_on_the_same_pixels(handles, dtype, variant):
    handle = handles[dtype]
    image = random_image(45, 37)  # keep-size 48 x 40: a 5 x 6 grid, the model was trained on 4 x 4
    ids = token_ids([3, 5, 1])
    explanations, expected = image_side(handle, image, ids, ids, **VARIANTS[variant])
    assert expected.shape == (3, 5, 6)
    assert all(e.input_size == (40, 48) and e.modifies_model for e in explanations)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("qk", ["out_proj", "raw"])
def test_text_map_equals_the_oracle_on_the_same_pixels(handles, dtype, qk):
    ids = token_ids([3, 6])
    text_side(handles[dtype], random_image(40, 40, seed=2), ids, ids, qk=qk)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_both_sides_equal_the_oracle_on_the_same_image_file(handles, dtype, suffix, tmp_path):
    """faithclip and the oracle each open the file themselves (JPEG decoding included)."""
    path = tmp_path / f"scene.{suffix}"
    random_image(53, 29, seed=8).save(path)
    ids = token_ids([2, 4])
    for variant in VARIANTS.values():
        image_side(handles[dtype], path, ids, ids, **variant)
    text_side(handles[dtype], path, ids, ids)


def test_the_cap_is_applied_when_asked_and_only_then():
    """A short side above 640 px: the explained grid follows the cap argument (32 px patches keep it small)."""
    handle = from_hf(random_clip(seed=9, dtype=torch.float64, image_size=64, patch_size=32))
    image = random_image(1000, 900, seed=4)
    ids = token_ids([3])
    capped, expected_capped = image_side(handle, image, ids, ids, cap=CAP)  # 711 x 640 -> 704 x 640
    uncapped, expected_uncapped = image_side(handle, image, ids, ids, cap=None)  # -> 992 x 896
    assert capped[0].input_size == (640, 704) and expected_capped.shape == (1, 20, 22)
    assert uncapped[0].input_size == (896, 992) and expected_uncapped.shape == (1, 28, 31)


def test_short_side_cap_matches_the_oracle():
    image = random_image(700, 650, seed=4)
    assert cap_short_side(image, CAP).size == ref.short_side_capped(image, CAP).size == (689, 640)
    assert np.array_equal(np.asarray(cap_short_side(image, CAP)), np.asarray(ref.short_side_capped(image, CAP)))
    assert cap_short_side(image, None) is image and ref.short_side_capped(image, None) is image


VOC_IMAGES = sorted((VOC_DIR / "JPEGImages").glob("*.jpg")) if (VOC_DIR / "JPEGImages").is_dir() else []
needs_voc = pytest.mark.skipif(not VOC_IMAGES, reason="../shared/reference/voc2011-samples is not available")


@needs_voc
@pytest.mark.parametrize("path", VOC_IMAGES, ids=lambda p: p.stem)
def test_voc_photos_float64_tiny_model(handle64, path):
    """Real photographs (500 x 338 / 375) through the tiny float64 model: a 63 x 42..47 keep-size grid."""
    ids = token_ids([3, 2])
    image_side(handle64, path, ids, ids, cap=CAP)
    text_side(handle64, path, ids, ids)


@pytest.fixture(scope="module")
def b32_varied():
    """The real ViT-B/32 architecture, tokenizer and preprocessing with random weights whose LayerNorms and
    biases are randomised as in ``random_clip`` (at plain initialisation every head attends uniformly and
    almost every official text map is 0/0)."""
    if not B32_DIR.is_dir():
        pytest.skip("../shared/reference is not available")
    config = transformers.CLIPConfig.from_pretrained(B32_DIR)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.set_attn_implementation("eager")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(B32_DIR)
    return from_hf(model.eval(), tokenizer, preprocess=ImagePreprocess.from_json(B32_DIR / "preprocessor_config.json"))


@needs_voc
@pytest.mark.parametrize("path", VOC_IMAGES, ids=lambda p: p.stem)
def test_voc_photos_float32_b32_architecture(b32_varied, path):
    """The real ViT-B/32 architecture (float32): a 16 x 11..12 keep-size grid, a 77-token context of which
    the last 8 of 12 text blocks are recomputed. Some text maps are 0/0 on these random weights."""
    texts = ["a photo of a person riding a horse on a sunny day.", "two people and a bicycle"]
    ids = torch.tensor(b32_varied.tokenizer(texts, padding=True)["input_ids"])  # (2, L), end token = largest id
    for variant in VARIANTS.values():
        image_side(b32_varied, path, texts, ids, **variant)
    text_side(b32_varied, path, texts, ids, undefined_rows_allowed=True)


def test_attention_eclip_on_the_rewritten_forward_equals_the_official_map(handle64):
    """Gradient of the ONE-head attention probabilities (class row) times lambda, ReLU: the official map."""
    image = random_image(45, 37)
    ids = token_ids([3])
    official = grad_eclip_official_explain(handle64, image, ids)[0].map.double()
    model = handle64.model
    pixels = keep_size_pixels(image, 8, handle64.preprocess)[None].double()
    text = F.normalize(handle64.encode_text(handle64.tokens(ids)), dim=-1)
    embeds, traces, grid = encode_image_rewritten(model, pixels, heads=1, layers=1)
    score = (F.normalize(embeds, dim=-1) @ text.T)[0, 0]
    attn_grad = torch.autograd.grad(score, traces[0].attn)[0]  # (1, 1, T, T)
    lam = official_lambda(
        traces[0].q[0], traces[0].k[0], 0, slice(1, None), model.vision_model.encoder.layers[-1].self_attn.out_proj
    )
    attention_form = F.relu(attn_grad[0, 0, 0, 1:] * lam).reshape(grid)
    assert torch.allclose(attention_form, official, atol=1e-10, rtol=0)


def test_rewrite_with_the_models_heads_is_the_models_forward(handle64):
    """heads=None recomputes the block as the model does (up to transformers' float32 softmax)."""
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    own = handle64.encode_image(pixels)
    same, _, _ = encode_image_rewritten(handle64.model, pixels, heads=None, layers=2)
    one_head, _, _ = encode_image_rewritten(handle64.model, pixels, heads=1, layers=1)
    assert torch.allclose(same, own, atol=1e-6)
    assert (one_head - own).abs().max() > 1e-3  # a multi-head model: the one-head rewrite is another model
    batch = handle64.tokens(token_ids([2, 4]))
    text_same, _ = encode_text_rewritten(handle64.model, batch.input_ids, batch.eos_positions, heads=None)
    text_one, _ = encode_text_rewritten(handle64.model, batch.input_ids, batch.eos_positions, heads=1)
    assert torch.allclose(text_same, handle64.encode_text(batch), atol=1e-6)
    assert (text_one - handle64.encode_text(batch)).abs().max() > 1e-3


def test_one_head_rewrite_is_an_identity_on_a_one_head_model():
    handle = from_hf(random_clip(seed=5, dtype=torch.float64, heads=1))
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    rewritten, _, _ = encode_image_rewritten(handle.model, pixels, heads=1, layers=2)
    assert torch.allclose(rewritten, handle.encode_image(pixels), atol=1e-6)


def test_keep_size_positions_match_transformers_interpolation(handle64):
    pixels = torch.randn(1, 3, 48, 40, dtype=torch.float64)
    rewritten, _, grid = encode_image_rewritten(handle64.model, pixels, heads=None)
    own = handle64.model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
    assert grid == (6, 5) and torch.allclose(rewritten, own, atol=1e-6)


def test_without_original_it_warns_and_uses_the_crop(handle64):
    import faithclip

    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with pytest.warns(UserWarning, match="original="):
        explanation = faithclip.explain(handle64, pixels, token_ids([3]), method="grad_eclip_official")
    assert explanation.map.shape == (4, 4) and explanation.p1_gap > 1e-3


def test_half_runs_an_fp16_copy_and_leaves_the_model_alone():
    handle = from_hf(random_clip(seed=6))
    image = random_image(40, 40, seed=7)
    ids = token_ids([3])
    with pytest.warns(UserWarning, match="fp16"):
        half = grad_eclip_official_explain(handle, image, ids, half=True)[0]
    full = grad_eclip_official_explain(handle, image, ids)[0]
    assert half.map.dtype == torch.float16 and handle.dtype == torch.float32
    assert torch.allclose(half.map.float(), full.map, atol=2e-2 * float(full.map.abs().max()))
