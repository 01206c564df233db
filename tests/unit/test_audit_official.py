"""grad_eclip_official against the literal transcription of the official code; the one-head rewrite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import random_clip, token_ids
from faithclip.audit.keepsize import cap_short_side, keep_size_pixels
from faithclip.audit.rewrite import encode_image_rewritten, encode_text_rewritten
from faithclip.methods.grad_eclip_official import grad_eclip_official_explain, official_lambda
from faithclip.models.loading import from_hf
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


def test_image_map_equals_the_official_transcription(handle64):
    image = random_image(45, 37)  # keep-size 48 x 40: a 5 x 6 grid, the model was trained on 4 x 4
    ids = token_ids([3, 5, 1])
    explanations = grad_eclip_official_explain(handle64, image, ids)
    text_embeds = F.normalize(handle64.encode_text(handle64.tokens(ids)), dim=-1)
    expected, cosines = ref.official_image_map(handle64.model, image, text_embeds, patch=8)
    got = torch.stack([e.map.double() for e in explanations])
    assert got.shape == expected.shape == (3, 5, 6)
    assert torch.allclose(got, expected.detach(), atol=1e-10, rtol=0)
    assert np.allclose([e.score for e in explanations], cosines.detach().numpy(), atol=1e-6)
    assert all(e.input_size == (40, 48) and e.modifies_model for e in explanations)


def test_notebook_form_layers_and_raw_qk(handle64):
    image = random_image(30, 41, seed=1)
    ids = token_ids([2, 4])
    explanations = grad_eclip_official_explain(handle64, image, ids, layers=2, qk="raw")
    text_embeds = F.normalize(handle64.encode_text(handle64.tokens(ids)), dim=-1)
    expected, _ = ref.notebook_image_map(handle64.model, image, text_embeds, patch=8, n=2)
    got = torch.stack([e.map.double() for e in explanations])
    assert torch.allclose(got, expected.detach(), atol=1e-10, rtol=0)


def test_text_map_equals_the_official_transcription(handle64):
    image = random_image(40, 40, seed=2)
    ids = token_ids([3, 6])
    explanations = grad_eclip_official_explain(handle64, image, ids, side="text")
    pixels = handle64.pixels(image)
    image_embed = F.normalize(handle64.encode_image(pixels), dim=-1)
    context = handle64.context_length
    for row, explanation in zip(ids, explanations):
        eos = int((row == 49).nonzero()[0])
        padded = torch.zeros(1, context, dtype=torch.long)
        padded[0, :eos + 1] = row[:eos + 1]
        expected, cosine = ref.official_text_map(handle64.model, padded, image_embed, n=8)
        assert torch.allclose(explanation.map[1:eos].double(), expected.detach(), atol=1e-10, rtol=0)
        assert explanation.map[eos:].abs().sum() == 0 and explanation.map[0] == 0
        assert explanation.score == pytest.approx(float(cosine.detach()), abs=1e-9)


def test_short_side_cap_matches_the_official_loop():
    image = random_image(700, 650, seed=4)
    assert cap_short_side(image).size == ref.main_loop_resize(image).size == (689, 640)
    assert np.array_equal(np.asarray(cap_short_side(image)), np.asarray(ref.main_loop_resize(image)))


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
    lam = official_lambda(traces[0].q[0], traces[0].k[0], 0, slice(1, None), model.vision_model.encoder.layers[-1].self_attn.out_proj)
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
