"""MaskCLIP, CLIP Surgery, M2IB, RISE and occlusion against independent oracles.

Oracles: slow literal forms of each method's formula, written from the papers and the project's docs
on a hand-written encoder (tests/reference/perturbation_methods_reference.py), on tiny random models;
for RISE/occlusion also a context whose score is a KNOWN LINEAR function of the pixels, so the expected
map is analytic.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import faithclip
from conftest import random_clip, token_ids
from faithclip.api import method_spec
from faithclip.methods.context import Context
from faithclip.methods.m2ib import bottleneck_intervention, default_layer
from faithclip.methods.rise import generate_masks, render_masks
from faithclip.models.loading import from_hf
from faithclip.probe import encoder_layers
from faithclip.registry import METHODS
from faithclip.targets import Target
from reference.perturbation_methods_reference import (
    m2ib_literal,
    maskclip_literal,
    occlusion_literal,
    rise_expectation_reference,
    rise_literal,
    rise_masks_literal,
    surgery_similarity,
    surgery_token_features,
)
from tolerance import assert_rounding_close

torch.set_num_threads(1)

SHAPES = [
    dict(),  # 4 heads, 2 layers, 4x4 grid
    dict(heads=2, layers=3, width=24, image_size=48, patch_size=8),  # 6x6 grid
    dict(heads=1, layers=1, width=16, image_size=24, patch_size=12),  # 2x2 grid, one head, one layer
]


def handle_and_inputs(shape: dict, seed: int = 0, images: int = 2, lengths=(3, 5)):
    model = random_clip(seed, **shape)
    size = model.config.vision_config.image_size
    pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return from_hf(model), pixels, token_ids(list(lengths))


def context(handle, pixels, ids, side="image", target=None) -> Context:
    return Context(
        handle=handle, side=side, pixels=handle.pixels(pixels), text=handle.tokens(ids), target=target or Target()
    )


# ---- registry -------------------------------------------------------------------------------------------
def test_registry_metadata():
    expected = {
        "maskclip": (True, False, ("image",)),
        "clip_surgery": (True, False, ("image",)),
        "m2ib": (True, False, ("image", "text")),
        "rise": (False, True, ("image",)),
        "occlusion": (False, True, ("image", "text")),
    }
    for name, (model, inputs, sides) in expected.items():
        spec = METHODS.get(name)
        assert (spec.modifies_model, spec.modifies_input, spec.sides) == (model, inputs, sides), name
        assert spec.paper and spec.summary


# ---- MaskCLIP -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_maskclip_matches_value_path_literal(shape):
    handle, pixels, ids = handle_and_inputs(shape)
    ctx = context(handle, pixels, ids)
    result = method_spec("maskclip", "image").image(ctx)
    gh, gw = ctx.grid
    expected = maskclip_literal(handle.model, pixels, handle.encode_text(handle.tokens(ids)).detach())
    assert result.maps.shape == (2, 2, gh, gw)
    torch.testing.assert_close(result.maps, expected.reshape(2, 2, gh, gw), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.scores, ctx.model_scores())


def test_maskclip_other_targets_are_the_target_per_token():
    handle, pixels, ids = handle_and_inputs(SHAPES[0])
    cosine = faithclip.explain(handle, pixels, ids, method="maskclip")
    logit = faithclip.explain(handle, pixels, ids, method="maskclip", target="logit")
    scale = float(handle.logit_scale.detach())
    for a, b in zip(cosine, logit):
        torch.testing.assert_close(b.map, a.map * scale)
        assert b.model_score == pytest.approx(b.score)


# ---- CLIP Surgery ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_clip_surgery_set_mode_matches_literal(shape):
    handle, pixels, ids = handle_and_inputs(shape, lengths=(3, 5, 2))
    ctx = context(handle, pixels, ids)
    layers = max(1, round(ctx.num_layers / 2))
    result = method_spec("clip_surgery", "image").image(ctx)
    features = surgery_token_features(handle.model, pixels, layers)  # (B, T, P)
    texts = F.normalize(handle.encode_text(handle.tokens(ids)).detach(), dim=-1)
    expected = surgery_similarity(features, texts)[:, :, 1:]  # (B, K, T-1)
    gh, gw = ctx.grid
    torch.testing.assert_close(result.maps, expected.reshape(2, 3, gh, gw), rtol=1e-4, atol=1e-5)
    assert result.options == {"layers": layers, "redundant": "set"}
    # the class token keeps the original path: its feature is the model's own image embedding
    torch.testing.assert_close(features[:, 0], F.normalize(ctx.fixed_image_embeds(), dim=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_clip_surgery_single_text_subtracts_the_empty_prompt(layers):
    handle, pixels, ids = handle_and_inputs(SHAPES[1])
    ctx = context(handle, pixels[:1], ids[:1])
    result = method_spec("clip_surgery", "image").image(ctx, layers=layers)
    features = surgery_token_features(handle.model, pixels[:1], layers)
    text = F.normalize(handle.encode_text(handle.tokens(ids[:1])).detach(), dim=-1)
    empty = F.normalize(handle.encode_text(handle.tokens(torch.tensor([[48, 49]]))).detach(), dim=-1)  # [start, end]
    expected = surgery_similarity(features, text, empty)[:, 0, 1:]
    torch.testing.assert_close(result.maps.reshape(1, -1), expected, rtol=1e-4, atol=1e-5)
    assert result.options["redundant"] == "empty"


def test_clip_surgery_refuses_what_it_cannot_compute():
    handle, pixels, ids = handle_and_inputs(SHAPES[0])
    with pytest.raises(faithclip.errors.MethodError, match="cosine"):
        faithclip.explain(handle, pixels, ids, method="clip_surgery", target="logit")
    with pytest.raises(faithclip.errors.MethodError, match="at least two"):
        faithclip.explain(handle, pixels[0], ids[:1], method="clip_surgery", redundant="set")


# ---- M2IB ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["image", "text"])
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_m2ib_matches_literal_loop(side, shape):
    handle, pixels, ids = handle_and_inputs(shape, images=1, lengths=(4,))
    ids = ids[:, :6]  # unpadded: [start, 4 words, end]
    ctx = context(handle, pixels, ids, side=side)
    layer = default_layer(ctx.num_layers)
    options = dict(steps=3, samples=4, seed=7)
    result = (
        method_spec("m2ib", side).image(ctx, **options)
        if side == "image"
        else method_spec("m2ib", side).text(ctx, **options)
    )
    noise_tokens = None if side == "image" else handle.context_length  # texts draw noise for the whole context
    expected = m2ib_literal(
        handle.model, side, layer, pixels, ids, steps=3, samples=4, seed=7, noise_tokens=noise_tokens
    )
    if side == "image":
        torch.testing.assert_close(result.maps.reshape(-1), expected[1:], rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(result.maps[0, 0, 1:5], expected[1:5], rtol=1e-4, atol=1e-6)
        assert result.maps[0, 0, 0] == 0 and result.maps[0, 0, 5] == 0
    assert result.layer_indices == [layer]


def test_m2ib_pairs_are_independent_and_model_is_restored():
    handle, pixels, ids = handle_and_inputs(SHAPES[0])
    model = handle.model
    before = model.get_image_features(pixel_values=pixels).pooler_output.detach()
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    batch = faithclip.explain(handle, pixels, ids, method="m2ib", steps=2, samples=3)
    alone = faithclip.explain(handle, pixels[1], ids[1:, :7], method="m2ib", steps=2, samples=3)
    assert_rounding_close(alone.map, batch[3].map, torch.float32, kind="map")  # batch vs one pair: other kernels
    text_batch = faithclip.explain_text(handle, pixels, ids, method="m2ib", steps=2, samples=3)
    text_alone = faithclip.explain_text(handle, pixels[1], ids[:1, :5], method="m2ib", steps=2, samples=3)
    assert_rounding_close(text_alone.map, text_batch[2].map[:5], torch.float32, kind="map")
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(not block._forward_hooks for block in encoder_layers(model, "vision"))
    model.eval()
    assert torch.equal(model.get_image_features(pixel_values=pixels).pooler_output, before)
    assert batch[0].score == pytest.approx(batch[0].model_score)


def test_bottleneck_intervention_removes_its_hook_on_error():
    model = random_clip()
    with pytest.raises(RuntimeError, match="boom"):
        with bottleneck_intervention(model, "vision", 0, lambda h: h):
            raise RuntimeError("boom")
    assert not encoder_layers(model, "vision")[0]._forward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_m2ib_default_layer_scales_with_depth():
    assert [default_layer(n) for n in (1, 2, 4, 6, 12, 24)] == [0, 0, 2, 4, 9, 18]
    handle, pixels, ids = handle_and_inputs(SHAPES[0])
    with pytest.warns(UserWarning, match="LAST layer"):
        faithclip.explain(handle, pixels[0], ids[:1], method="m2ib", layer=-1, steps=1, samples=1)


# ---- RISE and occlusion on a linear score -------------------------------------------------------------------
class LinearContext(Context):
    """Score of image x for text k: <W_k, x> + c_k (a fixture whose answers are known analytically)."""

    weights: torch.Tensor = None
    offsets: torch.Tensor = None
    calls: int = 0

    def score_images(self, pixels, batch_size=64):
        self.calls += 1
        return torch.einsum("nchw,kchw->nk", pixels.double(), self.weights) + self.offsets

    def model_scores(self):
        return self.score_images(self.pixels)


def linear_context(size=16, texts=2, seed=0, smooth=True) -> LinearContext:
    handle, _, ids = handle_and_inputs(SHAPES[0])
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    weights = torch.randn(texts, 3, size, size, generator=gen, dtype=torch.float64)
    if smooth:  # blocky weights and image: RISE recovers the contribution map up to blur and a constant
        weights = F.interpolate(torch.randn(texts, 3, 2, 2, generator=gen, dtype=torch.float64), size=(size, size))
        pixels = F.interpolate(torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64), size=(size, size))
    ctx = LinearContext(handle=handle, side="image", pixels=pixels, text=handle.tokens(ids[:texts]), target=Target())
    ctx.weights, ctx.offsets = weights, torch.randn(texts, generator=gen, dtype=torch.float64)
    return ctx


def contribution(ctx: LinearContext) -> torch.Tensor:
    """(B, K, H, W): the linear contribution of each pixel, sum_c W_kc x_bc."""
    return torch.einsum("bchw,kchw->bkhw", ctx.pixels, ctx.weights)


def test_rise_masks_are_scipys_bilinear_masks():
    for size, cells in [((32, 32), 8), ((20, 28), 3), ((9, 9), 4)]:
        grids, shifts = generate_masks(7, cells, 0.5, size, torch.Generator().manual_seed(1), torch.float64)
        torch.testing.assert_close(render_masks(grids, shifts, size), rise_masks_literal(grids, shifts, size))


def test_rise_matches_the_formula_with_the_same_masks():
    ctx = linear_context(size=12, smooth=False)
    result = method_spec("rise", "image").image(ctx, masks=30, cells=3, batch_size=8, seed=3)
    calls = ctx.calls
    grids, shifts = generate_masks(30, 3, 0.5, (12, 12), torch.Generator().manual_seed(3), torch.float64)
    masks = rise_masks_literal(grids, shifts, (12, 12))
    for b in range(2):
        expected = rise_literal(lambda x: ctx.score_images(x)[0], ctx.pixels[b : b + 1], masks, 0.5)
        torch.testing.assert_close(result.maps[b], expected)
    assert result.maps.shape == (2, 2, 12, 12) and result.input_size == (12, 12)
    assert calls == 2 * 4 + 1  # 30 masks in batches of 8 per image, then the unperturbed scores


@pytest.mark.parametrize("seed", [0, 1])
def test_rise_converges_to_its_analytic_expectation(seed):
    # for a linear score, E[RISE] = p sum(a) + c + (1 - p) K a K^T: the contribution map a = W * x blurred
    # by the masks' kernel, plus a constant. 20000 masks on a 16 px image.
    ctx = linear_context(size=16, texts=1, seed=seed)
    result = method_spec("rise", "image").image(ctx, masks=20000, cells=4, batch_size=5000, seed=seed)
    truth = contribution(ctx)  # (B, 1, H, W)
    expected = rise_expectation_reference(truth, ctx.offsets[None, :, None, None], cells=4, p1=0.5)
    for b in range(2):
        assert torch.corrcoef(torch.stack([result.maps[b, 0].flatten(), expected[b, 0].flatten()]))[0, 1] > 0.98
        assert torch.corrcoef(torch.stack([result.maps[b, 0].flatten(), truth[b, 0].flatten()]))[0, 1] > 0.7


def test_rise_is_seeded():
    ctx = linear_context(size=12)
    a = method_spec("rise", "image").image(ctx, masks=20, seed=5).maps
    b = method_spec("rise", "image").image(ctx, masks=20, seed=5).maps
    c = method_spec("rise", "image").image(ctx, masks=20, seed=6).maps
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_occlusion_single_pixel_window_is_the_linear_contribution():
    ctx = linear_context(size=10, smooth=False)
    result = method_spec("occlusion", "image").image(ctx, window=1, stride=1)
    torch.testing.assert_close(result.maps, contribution(ctx))
    assert result.input_size == (10, 10)


@pytest.mark.parametrize("window,stride,fill", [(3, 2, 0.0), (4, 3, 0.5), (10, 1, 0.0)])
def test_occlusion_matches_window_loop(window, stride, fill):
    ctx = linear_context(size=10, smooth=False)
    result = method_spec("occlusion", "image").image(ctx, window=window, stride=stride, fill=fill, batch_size=7)
    for b in range(2):
        expected = occlusion_literal(lambda x: ctx.score_images(x)[0], ctx.pixels[b : b + 1], window, stride, fill)
        torch.testing.assert_close(result.maps[b], expected)


def test_occlusion_baseline_copies_the_reference_image_into_each_window():
    ctx = linear_context(size=10, smooth=False)
    reference = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    result = method_spec("occlusion", "image").image(ctx, window=3, stride=2, baseline=reference, batch_size=7)
    for b in range(2):
        expected = occlusion_literal(
            lambda x: ctx.score_images(x)[0], ctx.pixels[b : b + 1], 3, 2, fill=reference[b : b + 1]
        )
        torch.testing.assert_close(result.maps[b], expected)
    assert result.options["baseline"] == "given" and result.options["fill"] is None


def test_occlusion_baseline_single_pixel_window_is_the_contribution_of_the_difference():
    """On a linear score a one-pixel window restoring the baseline drops sum_c W_kc (x - b)_c at that pixel."""
    ctx = linear_context(size=8, smooth=False)
    reference = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result = method_spec("occlusion", "image").image(ctx, window=1, stride=1, baseline=reference)
    expected = torch.einsum("bchw,kchw->bkhw", ctx.pixels - reference, ctx.weights)
    torch.testing.assert_close(result.maps, expected)


def test_occlusion_baseline_is_zero_where_image_and_baseline_agree():
    """A real model: the baseline differs from the image in one corner block only, so every window that
    misses the block leaves the input unchanged and every pixel covered only by such windows gets 0."""
    handle, pixels, ids = handle_and_inputs(SHAPES[1])
    ctx = context(handle, pixels[:1], ids[:1])
    baseline = ctx.pixels.clone()
    baseline[..., :8, :8] = 0.0
    result = method_spec("occlusion", "image").image(ctx, window=8, stride=8, baseline=baseline)
    maps = result.maps[0, 0]  # (48, 48): the windows tile the image
    assert maps[:8, :8].abs().max() > 1e-4
    torch.testing.assert_close(maps[8:], torch.zeros_like(maps[8:]), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[:8, 8:], torch.zeros_like(maps[:8, 8:]), atol=1e-5, rtol=0)
    same = method_spec("occlusion", "image").image(ctx, window=8, stride=8, baseline=ctx.pixels[0])
    torch.testing.assert_close(same.maps, torch.zeros_like(same.maps), atol=1e-5, rtol=0)


def test_occlusion_baseline_refuses_a_wrong_count_or_size():
    ctx = linear_context(size=8, smooth=False)
    spec = method_spec("occlusion", "image")
    with pytest.raises(faithclip.errors.MethodError, match="3 images for 2"):
        spec.image(ctx, window=2, baseline=[ctx.pixels[0]] * 3)
    with pytest.raises(faithclip.errors.MethodError, match="must be 2 or 1 image"):
        spec.image(ctx, window=2, baseline=torch.zeros(3, 6, 6, dtype=torch.float64))
    with pytest.raises(faithclip.errors.MethodError, match="a constant is fill="):
        spec.image(ctx, window=2, baseline=3)


def test_occlusion_text_deletes_each_token():
    handle, pixels, ids = handle_and_inputs(SHAPES[0])
    explanations = faithclip.explain_text(handle, pixels, ids, method="occlusion")
    image_embeds = handle.encode_image(pixels).detach()
    for index, explanation in enumerate(explanations):
        b, k = divmod(index, 2)
        row = [int(t) for t in ids[k] if t != 0]  # [start, words..., end]
        base = F.cosine_similarity(image_embeds[b], handle.encode_text(handle.tokens(torch.tensor([row])))[0], dim=0)
        expected = torch.zeros(ids.shape[1])
        for j in range(1, len(row) - 1):
            deleted = torch.tensor([row[:j] + row[j + 1 :]])
            expected[j] = base - F.cosine_similarity(
                image_embeds[b], handle.encode_text(handle.tokens(deleted))[0], dim=0
            )
        torch.testing.assert_close(explanation.map, expected, rtol=1e-4, atol=1e-6)


# ---- contract ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,options",
    [
        ("maskclip", {}),
        ("clip_surgery", {}),
        ("m2ib", {"steps": 1, "samples": 2}),
        ("rise", {"masks": 16}),
        ("occlusion", {"window": 8, "stride": 8}),
    ],
)
def test_image_maps_shapes_and_scores(method, options):
    handle, pixels, ids = handle_and_inputs(SHAPES[1])
    explanations = faithclip.explain(handle, pixels, ids, method=method, **options)
    pixel_level = method in ("rise", "occlusion")
    for explanation in explanations:
        assert explanation.map.shape == ((48, 48) if pixel_level else (6, 6))
        assert explanation.input_size == (48, 48)
        assert torch.isfinite(explanation.map).all()
        assert_rounding_close(explanation.score, explanation.model_score, torch.float32)


def test_clip_surgery_empty_prompt_with_the_real_tokenizer(b32_handle):
    from faithclip.methods.clip_surgery import empty_prompt

    ctx = Context(
        handle=b32_handle,
        side="image",
        pixels=torch.zeros(1, 3, 224, 224),
        text=b32_handle.tokens("a cat"),
        target=Target(),
    )
    batch = empty_prompt(ctx)
    assert batch.input_ids.tolist() == [[49406, 49407]] and batch.eos_positions.tolist() == [1]


def test_occlusion_points_at_the_named_shape_on_the_shipped_model():
    # ground truth by construction: one object covering ~5 % of the image; chance of a hit ~ 0.05 per scene
    from PIL import Image

    from faithclip.models.loading import shipped_models
    from faithclip.shapes.world import ShapesWorld

    if "shapes-clip" not in shipped_models():
        pytest.skip("the shipped shapes-clip model is not available")
    handle = faithclip.load("shapes-clip")
    scenes = ShapesWorld(handle.image_size, seed=0).single_object_set(4, seed=5)
    hits = 0
    for index in range(len(scenes)):
        explanation = faithclip.explain(
            handle, Image.fromarray(scenes.images[index]), scenes.captions[index], method="occlusion"
        )
        mask = torch.tensor(scenes.target_masks[index]).flatten()
        hits += bool(mask[explanation.map.flatten().argmax()])
    assert hits >= 3


def test_occlusion_segments_drop_each_region_and_average_over_overlaps():
    """Regions instead of windows: on a linear score, setting a region to the baseline drops the contribution
    of (x - b) summed over the region; a pixel gets the mean drop of the regions covering it, 0 if none."""
    ctx = linear_context(size=6, smooth=False)
    reference = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    segments = torch.zeros(3, 6, 6, dtype=torch.bool)
    segments[0, :2, :3] = True
    segments[1, 1:4, 2:5] = True  # overlaps region 0 at (1, 2)
    segments[2, 5, 5] = True
    result = method_spec("occlusion", "image").image(ctx, baseline=reference, segments=segments)
    part = torch.einsum("bchw,kchw->bkhw", ctx.pixels - reference, ctx.weights)  # (B, K, H, W)
    drops = [part[..., mask].sum(-1) for mask in segments]  # each (B, K)
    expected = torch.zeros_like(part)
    for row in range(6):
        for column in range(6):
            over = [drop for drop, mask in zip(drops, segments) if mask[row, column]]
            if over:
                expected[..., row, column] = sum(over) / len(over)
    torch.testing.assert_close(result.maps, expected)
    assert result.options["segments"] == [3, 3] and result.options["window"] is None
    one_each = method_spec("occlusion", "image").image(ctx, baseline=reference, segments=[segments[:1], segments[2:]])
    torch.testing.assert_close(one_each.maps[0], drops[0][0][:, None, None] * segments[0])  # region 0 alone
    torch.testing.assert_close(one_each.maps[1], part[1] * segments[2])  # a one-pixel region: its own contribution


def test_occlusion_segments_refuse_what_is_not_masks_of_the_image():
    ctx = linear_context(size=6, smooth=False)
    spec = method_spec("occlusion", "image")
    for bad, words in [
        (torch.zeros(2, 5, 6, dtype=torch.bool), "must be boolean masks"),
        (torch.zeros(2, 6, 6), "must be boolean masks"),
        (torch.zeros(0, 6, 6, dtype=torch.bool), "N >= 1"),
        ([torch.ones(1, 6, 6, dtype=torch.bool)] * 3, "3 sets for 2"),
        ("objects", "only P2's harness knows"),
    ]:
        with pytest.raises(faithclip.errors.MethodError, match=words):
            spec.image(ctx, segments=bad)
