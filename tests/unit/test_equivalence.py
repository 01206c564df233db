"""Grad-ECLIP == Attention-ECLIP, and both == a literal per-pair form of the formula on the original model."""

from __future__ import annotations

import pytest
import torch

import faithclip
from conftest import random_clip, token_ids
from faithclip.equivalence import format_table, verify_equivalence
from faithclip.models.loading import from_hf
from faithclip.numerics import relative_difference
from reference.eclip_reference import image_maps, text_maps

SHAPES = [
    dict(heads=1, layers=1, width=16, image_size=16, patch_size=8),
    dict(heads=2, layers=2, width=32, image_size=24, patch_size=8),
    dict(heads=4, layers=3, width=32, image_size=32, patch_size=4),
    dict(heads=12, layers=2, width=48, image_size=28, patch_size=7, text_heads=3),
]


def _maps(handle, pixels, ids, side, method, **options):
    run = faithclip.explain if side == "image" else faithclip.explain_text
    result = run(handle, pixels, ids, method, **options)
    return torch.stack([e.map for e in result]) if isinstance(result, list) else result.map[None]


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"h{s['heads']}-l{s['layers']}-i{s['image_size']}-p{s['patch_size']}"
)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_methods_agree_on_both_towers(shape, dtype, tolerance):
    handle = from_hf(random_clip(seed=2, dtype=dtype, **shape))
    size = shape["image_size"]
    pixels = torch.randn(2, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ids = token_ids([1, 3, 6])
    for side in ("image", "text"):
        for layers, relu, lam in [
            (1, None, {}),
            (shape["layers"], None, {}),
            (shape["layers"], "none", {}),
            (shape["layers"], "none", {"lambda_span": "inner", "lambda_qk": "out_proj"}),
        ]:
            a = _maps(handle, pixels, ids, side, "grad_eclip", layers=layers, relu=relu, **lam)
            b = _maps(handle, pixels, ids, side, "attention_eclip", layers=layers, relu=relu, **lam)
            assert a.shape == b.shape
            if relu == "none":  # signed maps: never all zero, so the comparison cannot pass vacuously
                assert (a.flatten(1).abs().amax(1) > 0).all()
            for x, y in zip(a, b):
                assert relative_difference(x.double(), y.double(), 0.0) <= tolerance


@pytest.mark.parametrize(
    "layers,use_lambda,qk",
    [(1, True, "raw"), (2, True, "raw"), (2, False, "raw"), (1, True, "out_proj"), (2, True, "out_proj")],
)
def test_image_maps_match_literal_formula(layers, use_lambda, qk):
    model = random_clip(seed=3, dtype=torch.float64, heads=4, layers=3, width=32, image_size=24, patch_size=8)
    handle = from_hf(model)
    pixels = torch.randn(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ids = token_ids([2, 4])
    with torch.no_grad():
        text_embeds = handle.encode_text(handle.tokens(ids))
    for method in ("grad_eclip", "attention_eclip"):
        results = faithclip.explain(handle, pixels, ids, method, layers=layers, use_lambda=use_lambda, lambda_qk=qk)
        for index, explanation in enumerate(results):
            b, k = divmod(index, 2)
            expected, score = image_maps(model, pixels[b : b + 1], text_embeds[k], method, layers, use_lambda, qk=qk)
            assert explanation.map.shape == (3, 3)
            torch.testing.assert_close(explanation.map.flatten(), expected.detach(), rtol=1e-10, atol=1e-12)
            assert explanation.score == pytest.approx(score.item(), rel=1e-12)
            assert explanation.model_score == pytest.approx(explanation.score, rel=1e-12)


@pytest.mark.parametrize(
    "layers,span,qk",
    [
        (1, "context", "raw"),
        (2, "context", "raw"),
        (1, "inner", "raw"),
        (2, "inner", "out_proj"),
        (2, "context", "out_proj"),
    ],
)
def test_text_maps_match_literal_formula(layers, span, qk):
    model = random_clip(seed=5, dtype=torch.float64, heads=2, layers=2, width=32, image_size=16, patch_size=8)
    handle = from_hf(model)
    pixels = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ids = token_ids([1, 3, 5])
    with torch.no_grad():
        image_embed = handle.encode_image(pixels)[0]
    eos = handle.tokens(ids).eos_positions
    for method in ("grad_eclip", "attention_eclip"):
        results = faithclip.explain_text(handle, pixels, ids, method, layers=layers, lambda_span=span, lambda_qk=qk)
        for k, explanation in enumerate(results):
            expected, _ = text_maps(model, ids[k : k + 1], int(eos[k]), image_embed, method, layers, span=span, qk=qk)
            torch.testing.assert_close(explanation.map, expected.detach(), rtol=1e-10, atol=1e-12)
            words = explanation.map[1 : int(eos[k])]
            assert explanation.map.sum().item() == pytest.approx(1.0) or words.sum() == 0
            assert explanation.map[0] == 0 and explanation.map[int(eos[k]) :].abs().sum() == 0


def test_padding_to_the_whole_context_leaves_the_score_alone():
    """The published text code runs the text padded with zeros to the context; a causal model's end token
    does not see the padding, so only transformers' float32 softmax (rows of another length) can move it."""
    model = random_clip(seed=5, dtype=torch.float64, heads=2, layers=2, width=32, image_size=16, patch_size=8)
    handle = from_hf(model)
    batch = handle.tokens(token_ids([1, 3, 5]))
    padded = handle.context_batch(batch)
    assert padded.input_ids.shape == (3, handle.context_length)
    assert torch.equal(padded.eos_positions, batch.eos_positions) and bool((padded.attention_mask == 1).all())
    for row, eos in enumerate(batch.eos_positions.tolist()):
        assert torch.equal(padded.input_ids[row, : eos + 1], batch.input_ids[row, : eos + 1])
        assert bool((padded.input_ids[row, eos + 1 :] == 0).all())
    with torch.no_grad():
        own, context = handle.encode_text(batch), handle.encode_text(padded)
    assert relative_difference(own, context, 0.0) <= 1e-7


def test_real_b32_architecture_equivalence(b32_handle):
    from PIL import Image

    image = Image.open(__import__("conftest").VOC_DIR / "JPEGImages" / "2011_000025.jpg")
    rows = verify_equivalence(b32_handle, image, ["a photo of a bus", "a car on a road"])
    table = format_table(rows)
    assert "image" in table and "text" in table
    for row in rows:
        assert row.max_rel_diff <= 1e-5, table
        assert row.max_map_value > 0


def test_b32_equivalence_float64(b32_handle):
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = verify_equivalence(b32_handle, pixels, "a photo of a cat", dtypes=(torch.float64,))
    assert all(row.max_rel_diff <= 1e-10 for row in rows), format_table(rows)
