"""The BLIP retrieval family: probe, P1, preprocessing, every supported method against a slow oracle, the
published pipeline, and the family's one-line errors. Models are random (blip_fixtures); the oracles are
tests/reference/blip_reference.py (a hand-written forward from the weights) and the shared literal forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import faithclip
from blip_fixtures import blip_tokenizer, load_float64, pixels_for, random_blip, save_random_blip
from faithclip.errors import MethodError
from faithclip.methods.context import Context
from faithclip.models.loading import from_hf
from faithclip.numerics import relative_difference
from faithclip.probe import Probe
from faithclip.registry import METHODS
from faithclip.targets import make_target
from reference import attention_methods_reference as literal
from reference import blip_reference as ref
from reference.grad_eclip_official_reference import keep_size_input
from reference.perturbation_methods_reference import occlusion_literal, rise_literal, rise_masks_literal

TEXTS = ["a red circle", "a photo of a dog in a car"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_random_blip(tmp_path_factory.mktemp("blip"), seed=1)


@pytest.fixture(scope="module")
def tiny64(saved):
    return load_float64(saved)


def features(handle, pixels, texts):
    with torch.no_grad():
        return handle.encode_image(pixels), handle.encode_text(handle.tokens(texts))


# ---- the adapter -----------------------------------------------------------------------------------------
def test_probe_slices_the_fused_qkv_and_changes_nothing(tiny64):
    model, pixels = tiny64.model, pixels_for(tiny64)
    with torch.no_grad():
        before = tiny64.encode_image(pixels)
        with Probe(model, "vision", layer_indices=[0, -1]) as probe:
            under = tiny64.encode_image(pixels)
        after = tiny64.encode_image(pixels)
    assert torch.equal(before, under) and torch.equal(before, after)
    width = model.config.vision_config.hidden_size
    for index, block in ((0, model.vision_model.encoder.layers[0]), (2, model.vision_model.encoder.layers[-1])):
        cap = probe.captures[index]
        normed = ref.layer_norm(cap.hidden_in, block.layer_norm1)
        weight, bias = block.self_attn.qkv.weight, block.self_attn.qkv.bias
        for part, name in enumerate(("q", "k", "v")):
            rows = slice(part * width, (part + 1) * width)
            torch.testing.assert_close(getattr(cap, name), normed @ weight[rows].T + bias[rows], rtol=1e-12, atol=1e-12)
        assert cap.attn.shape == (2, 4, 17, 17) and cap.attn_out.shape == (2, 17, width)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_text_probe_is_bit_identical(tiny64):
    batch = tiny64.tokens(TEXTS)
    with torch.no_grad():
        before = tiny64.encode_text(batch)
        with Probe(tiny64.model, "text", layer_indices=[-1]) as probe:
            under = tiny64.encode_text(batch)
    assert torch.equal(before, under) and probe.captures[2].attn.shape == (2, 4, 10, 10)


def test_score_is_the_models_itc_score_p1(tiny64):
    pixels, batch = pixels_for(tiny64), tiny64.tokens(TEXTS)
    with torch.no_grad():
        own = tiny64.model(
            input_ids=batch.input_ids, pixel_values=pixels, attention_mask=batch.attention_mask, use_itm_head=False
        ).itm_score  # (B, K)
    for side, run in (("image", faithclip.explain), ("text", faithclip.explain_text)):
        for index, explanation in enumerate(run(tiny64, pixels, TEXTS, "grad_eclip")):
            b, k = divmod(index, len(TEXTS))
            assert explanation.score == explanation.model_score == pytest.approx(float(own[b, k]), abs=1e-12)
    assert [e.tokens[:5] for e in faithclip.explain_text(tiny64, pixels[:1], TEXTS[:1], "grad_eclip")] == [
        ["[CLS]", "a", "red", "circle", "[SEP]"]
    ]
    assert batch.eos_positions.tolist() == [4, 9]


def test_family_declarations_and_errors(tiny64):
    pixels = pixels_for(tiny64, 1)
    assert tiny64.family.name == "blip" and not tiny64.family.fast_path
    for kind in ("logit", "probability"):
        with pytest.raises(MethodError, match="no '" + kind):
            faithclip.explain(
                tiny64, pixels, "a dog", "grad_eclip", target=kind, others=["a cat"] * (kind == "probability")
            )
    with pytest.raises(MethodError, match="defines its map for the cosine target only"):
        faithclip.explain(tiny64, pixels, "a dog", "clip_surgery", target="contrast", others=["a cat"])
    with pytest.raises(MethodError, match="no text side for blip"):
        faithclip.explain_text(tiny64, pixels, "a dog", "grad_eclip_official")
    supported = {s.name for s in METHODS if s.supports("blip")}
    assert supported == {
        "grad_eclip",
        "attention_eclip",
        "self_attention",
        "rollout",
        "game",
        "grad_cam",
        "occlusion",
        "rise",
        "grad_eclip_official",
        "maskclip",
        "legrad",
        "m2ib",
        "clip_surgery",
    }
    contrast = faithclip.explain(tiny64, pixels, "a dog", "grad_eclip", target="contrast", others=["a cat"])
    with torch.no_grad():
        image, text = features(tiny64, pixels, ["a dog", "a cat"])
    cos = ref.cosine(image[0], text[0]) - ref.cosine(image[0], text[1])
    assert contrast.score == pytest.approx(float(cos), abs=1e-12)


def test_load_reads_the_blip_image_processor(saved):
    handle = faithclip.load(str(saved))
    assert (handle.preprocess.resize, handle.preprocess.center_crop, handle.preprocess.size) == ("exact", False, 32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    expected = transformers.BlipImageProcessorPil.from_pretrained(saved)(image, return_tensors="pt")["pixel_values"]
    assert (handle.pixels(image) - expected).abs().max() < 2e-2  # same squash; resamplers may round apart
    published = from_hf(random_blip(size="tiny")).preprocess  # no processor file: BLIP's rules at its size
    assert (published.resize, published.center_crop, published.mean) == ("exact", False, handle.preprocess.mean)


# ---- ECLIP against the oracle ----------------------------------------------------------------------------
def eclip_image_expected(handle, pixels, texts, method, layers, relu="per_layer"):
    model = handle.model.double()
    _, text_feats = features(handle, pixels, texts)
    return torch.stack(
        [
            torch.stack(
                [
                    ref.eclip_image_map(
                        model, pixels[b : b + 1].double(), text_feats[k].double(), method, layers, relu
                    )[0]
                    for k in range(len(texts))
                ]
            )
            for b in range(pixels.shape[0])
        ]
    )  # (B, K, T-1)


def eclip_text_expected(handle, pixels, texts, method, layers, span):
    model, batch = handle.model.double(), handle.tokens(texts)
    image_feats, _ = features(handle, pixels, texts)
    return torch.stack(
        [
            torch.stack(
                [
                    ref.eclip_text_map(
                        model,
                        batch.input_ids[k],
                        batch.attention_mask[k],
                        int(batch.eos_positions[k]),
                        image_feats[b].double(),
                        method,
                        layers,
                        span,
                    )[0]
                    for k in range(len(texts))
                ]
            )
            for b in range(pixels.shape[0])
        ]
    )  # (B, K, L)


@pytest.mark.parametrize("layers", [1, 2])
def test_eclip_image_maps_match_the_oracle_float64(tiny64, layers):
    pixels = pixels_for(tiny64)
    for method in ("grad_eclip", "attention_eclip"):
        expected = eclip_image_expected(tiny64, pixels, TEXTS, method, layers)
        got = torch.stack([e.map.flatten() for e in faithclip.explain(tiny64, pixels, TEXTS, method, layers=layers)])
        assert relative_difference(expected.reshape(got.shape), got, 0.0) <= 1e-10


@pytest.mark.parametrize("layers,span", [(1, "inner"), (2, "inner"), (1, "context"), (3, "context")])
def test_eclip_text_maps_match_the_oracle_float64(tiny64, layers, span):
    pixels = pixels_for(tiny64)
    for method in ("grad_eclip", "attention_eclip"):
        expected = eclip_text_expected(tiny64, pixels, TEXTS, method, layers, span)
        got = torch.stack(
            [e.map for e in faithclip.explain_text(tiny64, pixels, TEXTS, method, layers=layers, lambda_span=span)]
        )
        assert relative_difference(expected.reshape(got.shape), got, 0.0) <= 1e-10
        assert (got.sum(-1) - 1).abs().max() < 1e-12


def test_eclip_float32_within_1e5_of_the_float64_oracle(saved):
    handle = faithclip.load(str(saved))
    pixels = pixels_for(handle)
    for method in ("grad_eclip", "attention_eclip"):
        image = torch.stack([e.map.flatten() for e in faithclip.explain(handle, pixels, TEXTS, method)])
        text = torch.stack([e.map for e in faithclip.explain_text(handle, pixels, TEXTS, method)])
        expected_image = eclip_image_expected(handle, pixels.double(), TEXTS, method, 1).reshape(image.shape)
        expected_text = eclip_text_expected(handle, pixels.double(), TEXTS, method, 1, "context").reshape(text.shape)
        handle.model.float()
        for got, expected in ((image, expected_image), (text, expected_text)):
            for x, y in zip(expected, got):
                assert relative_difference(x, y.double(), 0.0) <= 1e-5


@pytest.fixture(scope="module")
def published_sizes(tmp_path_factory):
    # Salesforce/blip-itm-base-coco's widths, heads, patch, image size and vocabulary; depth 2 to stay fast
    model = random_blip(seed=5, dtype=torch.float64, size="full", depth=2)
    return from_hf(model, blip_tokenizer(tmp_path_factory.mktemp("blip-full")))


@pytest.mark.parametrize("side", ["image", "text"])
def test_published_sizes_float64(published_sizes, side):
    handle = published_sizes
    pixels = pixels_for(handle, 1)
    texts = "a photo of a dog"
    if side == "image":
        expected = eclip_image_expected(handle, pixels, [texts], "grad_eclip", 1).reshape(1, -1)
        got = [
            faithclip.explain(handle, pixels, texts, m).map.flatten()[None] for m in ("grad_eclip", "attention_eclip")
        ]
        assert expected.shape == (1, 576)
    else:
        expected = eclip_text_expected(handle, pixels, [texts], "grad_eclip", 1, "context").reshape(1, -1)
        got = [faithclip.explain_text(handle, pixels, texts, m).map[None] for m in ("grad_eclip", "attention_eclip")]
    for maps in got:
        assert relative_difference(expected, maps, 0.0) <= 1e-10


# ---- the attention methods and the perturbation methods --------------------------------------------------
def reference_internals(handle, pixels, texts, side):
    """Per (b, k): the oracle's score and internals of the explained input."""
    model, batch = handle.model.double(), handle.tokens(texts)
    image_feats, text_feats = features(handle, pixels, texts)
    out = {}
    for b in range(pixels.shape[0]):
        for k in range(len(texts)):
            if side == "image":
                feat, internals = ref.vision_forward(model, pixels[b : b + 1])
                out[b, k] = ref.cosine(feat, text_feats[k]), internals
            else:
                feat, internals = ref.text_forward(model, batch.input_ids[k], batch.attention_mask[k])
                out[b, k] = ref.cosine(image_feats[b], feat), internals
    return out, batch


@pytest.mark.parametrize("side", ["image", "text"])
def test_attention_methods_match_literal_forms(tiny64, side):
    pixels = pixels_for(tiny64)
    run = faithclip.explain if side == "image" else faithclip.explain_text
    oracle, batch = reference_internals(tiny64, pixels, TEXTS, side)

    def keep(row, k):  # the map's support: patches, or the words between [CLS] and [SEP]
        if side == "image":
            return row[1:]
        sep = int(batch.eos_positions[k])
        return torch.where((torch.arange(row.shape[0]) > 0) & (torch.arange(row.shape[0]) < sep), row, 0 * row)

    cases = {
        "self_attention": lambda s, inside: literal.self_attention_literal(inside[-1]["attn"][0].detach(), 0),
        "rollout": lambda s, inside: literal.rollout_literal([i["attn"][0].detach() for i in inside], 0, 0),
        "game": lambda s, inside: literal.game_literal(s, [i["attn"] for i in inside], 0, 0),
    }
    if side == "image":
        cases["grad_cam"] = lambda s, inside: torch.cat(
            [torch.zeros(1, dtype=s.dtype), literal.grad_cam_literal(s, inside[-1]["hidden_in"])]
        )
    for method, oracle_map in cases.items():
        got = [e.map.flatten() for e in run(tiny64, pixels, TEXTS, method)]
        for index, (key, (score, inside)) in enumerate(oracle.items()):
            expected = keep(oracle_map(score, inside), key[1])
            assert relative_difference(expected, got[index], 0.0) <= 1e-10, method


def test_game_last_layer_and_rollout_start(tiny64):
    pixels = pixels_for(tiny64, 1)
    oracle, _ = reference_internals(tiny64, pixels, TEXTS[:1], "image")
    score, inside = oracle[0, 0]
    for start in (-1, 1):
        got = faithclip.explain(tiny64, pixels, TEXTS[0], "game", start_layer=start).map.flatten()
        assert (
            relative_difference(literal.game_literal(score, [i["attn"] for i in inside], 0, start)[1:], got, 0.0)
            <= 1e-10
        )
        got = faithclip.explain(tiny64, pixels, TEXTS[0], "rollout", start_layer=start).map.flatten()
        rows = literal.rollout_literal([i["attn"][0].detach() for i in inside], 0, start)[1:]
        assert relative_difference(rows, got, 0.0) <= 1e-10


def test_occlusion_and_rise_match_literal_forms(tiny64):
    pixels = pixels_for(tiny64, 1)
    model = tiny64.model.double()
    _, text_feats = features(tiny64, pixels, TEXTS)

    def score_fn(image):  # the oracle's forward: (1, 3, H, W) -> (K,)
        with torch.no_grad():
            feat = ref.vision_forward(model, image)[0]
            return torch.stack([ref.cosine(feat, t) for t in text_feats])

    result = faithclip.explain(tiny64, pixels, TEXTS, "occlusion", window=8, stride=8)
    expected = occlusion_literal(score_fn, pixels, 8, 8)
    for k, explanation in enumerate(result):
        assert relative_difference(expected[k], explanation.map, 0.0) <= 1e-10
    from faithclip.methods.rise import generate_masks

    result = faithclip.explain(tiny64, pixels, TEXTS, "rise", masks=6, cells=2, seed=4)
    grids, shifts = generate_masks(6, 2, 0.5, (32, 32), torch.Generator().manual_seed(4), torch.float64)
    expected = rise_literal(score_fn, pixels, rise_masks_literal(grids, shifts, (32, 32)), 0.5)
    for k, explanation in enumerate(result):
        assert relative_difference(expected[k], explanation.map, 0.0) <= 1e-10
    text = faithclip.explain_text(tiny64, pixels, TEXTS[1], "occlusion").map  # token deletion
    batch = tiny64.tokens(TEXTS[1])
    image_feat = features(tiny64, pixels, TEXTS)[0][0]
    ids, mask = batch.input_ids[0], batch.attention_mask[0]
    base = ref.cosine(image_feat, ref.text_forward(model, ids, mask)[0]).detach()
    for j in range(1, int(batch.eos_positions[0])):
        keep = torch.arange(ids.shape[0]) != j
        feat = ref.text_forward(model, ids[keep], mask[keep])[0]
        assert float(text[j]) == pytest.approx(float(base - ref.cosine(image_feat, feat).detach()), abs=1e-12)


# ---- the published pipeline ------------------------------------------------------------------------------
def test_grad_eclip_official_matches_the_published_formula(tiny64):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (41, 58, 3), dtype=np.uint8))
    pixels = tiny64.pixels(image)
    results = faithclip.explain(tiny64, image, TEXTS, "grad_eclip_official")
    keep = keep_size_input(image, 8, None).double()  # (1, 3, 40, 56): no cap, each side to a patch multiple
    _, text_feats = features(tiny64, pixels, TEXTS)
    for k, explanation in enumerate(results):
        expected, score = ref.official_image_map(tiny64.model.double(), keep, text_feats[k])
        assert explanation.map.shape == (5, 7) and explanation.options["lambda_qk"] == "raw"
        assert explanation.options["cap"] is None
        assert relative_difference(expected, explanation.map.flatten(), 0.0) <= 1e-10
        assert explanation.score == pytest.approx(float(score.detach()), abs=1e-12)
        assert abs(explanation.score - explanation.model_score) > 1e-6  # it explains another forward


def test_official_rewrite_with_the_models_heads_is_the_model(tiny64):
    from faithclip.methods.official.blip import encode_image_rewritten

    pixels = pixels_for(tiny64)
    with torch.no_grad():
        own = tiny64.encode_image(pixels)
        rewritten, _, grid = encode_image_rewritten(tiny64.model, pixels, heads=None, layers=2)
        one_head = encode_image_rewritten(tiny64.model, pixels, heads=1, layers=1)[0]
    assert grid == (4, 4) and relative_difference(own, rewritten, 0.0) <= 1e-12
    assert relative_difference(own, one_head, 0.0) > 1e-3
    ctx = Context(handle=tiny64, side="image", pixels=pixels[:1], text=tiny64.tokens(TEXTS), target=make_target())
    assert ctx.family.official.lambda_qk == ("raw",)


# ---- the figures docs/equivalence.md quotes (pytest -s prints them) -----------------------------------------
@pytest.mark.slow  # regenerates the figures docs/equivalence.md prints
def test_blip_equivalence_figures(saved, published_sizes, capsys):
    """Max relative differences, Grad-ECLIP vs Attention-ECLIP and each vs the float64 oracle, per tower and dtype."""
    rows = []
    for name, handle, texts in (("tiny", faithclip.load(str(saved)), TEXTS), ("published", published_sizes, TEXTS[1:])):
        for dtype in (torch.float32, torch.float64) if name == "tiny" else (torch.float64,):
            handle.model.to(dtype)
            pixels = pixels_for(handle, 1, seed=3)
            for side, run in (("image", faithclip.explain), ("text", faithclip.explain_text)):
                grad, attention = (
                    [e.map.flatten() for e in run(handle, pixels, texts, m, relu="none")]
                    for m in ("grad_eclip", "attention_eclip")
                )
                pair = max(relative_difference(g.double(), a.double(), 0.0) for g, a in zip(grad, attention))
                maps = [e.map.flatten() for e in run(handle, pixels, texts, "grad_eclip")]
                handle.model.double()
                expected = (
                    eclip_image_expected(handle, pixels.double(), texts, "grad_eclip", 1)
                    if side == "image"
                    else eclip_text_expected(handle, pixels.double(), texts, "grad_eclip", 1, "context")
                )[0]
                handle.model.to(dtype)
                oracle = max(relative_difference(e.flatten(), m.double(), 0.0) for e, m in zip(expected, maps))
                rows.append((name, side, str(dtype).replace("torch.", ""), pair, oracle))
                assert pair <= (1e-10 if dtype == torch.float64 else 1e-5)
                assert oracle <= (1e-10 if dtype == torch.float64 else 1e-5)
    with capsys.disabled():
        print("\nmodel      side   dtype    grad vs attention (signed)  grad_eclip vs oracle")
        for name, side, dtype, pair, oracle in rows:
            print(f"{name:<10} {side:<6} {dtype:<8} {pair:>26.3e}  {oracle:>20.3e}")


def test_audit_departure_runs_on_blip(saved):
    from faithclip.audit.data import shapes_data
    from faithclip.audit.departure import MAP_ARMS, audit_departure, map_arms
    from faithclip.models.families import FAMILIES
    from faithclip.report.audit_report import format_audit

    handle = faithclip.load(str(saved))
    assert map_arms(FAMILIES["clip"]) == MAP_ARMS  # CLIP's ablation is unchanged
    assert map_arms(handle.family) == {
        "faithful": (False, False, "raw"),
        "one_head": (True, False, "raw"),
        "keep_size": (False, True, "raw"),
        "published": (True, True, "raw"),
    }
    result = audit_departure(handle, shapes_data(4, raw_size=48, seed=1), map_images=1)
    assert result["cap"] is None and result["text"] is None
    assert result["arms"]["original"]["embedding_cosine_mean"] == pytest.approx(1.0)
    assert result["arms"]["official"]["embedding_cosine_mean"] < 1 - 1e-4
    assert result["maps"]["mean"]["spearman_faithful_vs_grad_eclip"] == pytest.approx(1.0)
    assert "published (one head + keep size, raw q/k)" in format_audit(result)
