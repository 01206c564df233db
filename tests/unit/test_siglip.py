"""SigLIP: the family adapter, the attention-pooling head as the image tower's pooled query, and the
methods against the oracles of ``reference/siglip_reference.py`` (written from the formulas)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import faithclip
from faithclip.errors import MethodError, ProbeError
from faithclip.models.loading import from_hf
from faithclip.numerics import relative_difference
from reference.siglip_reference import image_oracle, rollout_oracle, text_oracle

pytestmark = pytest.mark.usefixtures("one_thread")
EOS = 1  # the published SentencePiece layout: words, then "</s>" = 1, which also pads; no start token


def tiny_siglip(
    seed=0,
    dtype=torch.float64,
    width=32,
    heads=4,
    layers=2,
    image_size=32,
    patch_size=8,
    context=10,
    text_heads=None,
    vocab=50,
    **text,
) -> transformers.SiglipModel:
    torch.manual_seed(seed)
    text_config = dict(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=text_heads or heads,
        max_position_embeddings=context,
        eos_token_id=EOS,
        pad_token_id=EOS,
        bos_token_id=None,
        **text,
    )
    vision_config = dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = transformers.SiglipConfig(text_config=text_config, vision_config=vision_config)
    model = transformers.SiglipModel._from_config(config, attn_implementation="eager").to(dtype).eval()
    with torch.no_grad():  # a scale and bias away from 0 and 1, so that a dropped bias or scale shows
        model.logit_scale.fill_(1.7)
        model.logit_bias.fill_(-0.6)
    return model


def sentencepiece_ids(words: list[int], context: int, seed: int = 0) -> torch.Tensor:
    """Rows ``[w_1 .. w_n, </s>, </s> ...]`` padded to the whole context, as SigLIP's tokenizer lays them out."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.full((len(words), context), EOS, dtype=torch.long)
    for row, count in enumerate(words):
        rows[row, :count] = torch.randint(3, 40, (count,), generator=generator)
    return rows


def maps(results) -> torch.Tensor:
    return torch.stack([e.map for e in (results if isinstance(results, list) else [results])])


SHAPES = [
    dict(width=16, heads=1, layers=1, image_size=16, patch_size=8),
    dict(width=32, heads=4, layers=2, image_size=32, patch_size=8, text_heads=2),
]


@pytest.mark.parametrize("shape", SHAPES, ids=["h1-l1", "h4-l2"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_grad_eclip_equals_attention_eclip_on_both_towers(shape, dtype, tolerance):
    handle = from_hf(tiny_siglip(seed=1, dtype=dtype, **shape))
    size = shape["image_size"]
    pixels = torch.randn(2, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ids = sentencepiece_ids([1, 3, 6], context=10)
    for side, run in (("image", faithclip.explain), ("text", faithclip.explain_text)):
        for relu in (None, "none"):
            a = maps(run(handle, pixels, ids, "grad_eclip", relu=relu))
            b = maps(run(handle, pixels, ids, "attention_eclip", relu=relu))
            if relu == "none":
                assert (a.flatten(1).abs().amax(1) > 0).all()
            assert max(relative_difference(x.double(), y.double(), 0.0) for x, y in zip(a, b)) <= tolerance


def test_image_methods_match_the_head_oracle():
    model = tiny_siglip(seed=3)
    handle = from_hf(model)
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ids = sentencepiece_ids([2, 4], context=10)
    with torch.no_grad():
        own = model(input_ids=ids, pixel_values=pixels).logits_per_image  # (B, K): the model's own scores
        text_embeds = model.get_text_features(input_ids=ids).pooler_output
    results = {
        name: faithclip.explain(handle, pixels, ids, name, **options)
        for name, options in [
            ("grad_eclip", {}),
            ("attention_eclip", {}),
            ("self_attention", {}),
            ("game", {"start_layer": -1}),
            ("rollout", {}),
            ("grad_cam", {}),
        ]
    }
    probability = faithclip.explain(handle, pixels, ids, "grad_eclip", target="probability")
    for index in range(4):
        b, k = divmod(index, 2)
        oracle = image_oracle(model, pixels[b : b + 1], text_embeds[k])
        for name in ("grad_eclip", "attention_eclip", "self_attention"):
            torch.testing.assert_close(results[name][index].map.flatten(), oracle[name], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(results["game"][index].map.flatten(), oracle["game_head"], rtol=1e-9, atol=1e-12)
        expected_rollout = rollout_oracle(model, pixels[b : b + 1], oracle["attention"])
        # Grad-CAM at the head: features x = the head's input, weights = token mean of dS/dx, by autograd
        # through transformers' own head module
        x = model.vision_model(pixel_values=pixels[b : b + 1]).last_hidden_state.detach().requires_grad_(True)
        embed = model.vision_model.head(x)[0]
        cos = torch.dot(embed, text_embeds[k]) / (embed.norm() * text_embeds[k].norm())
        (dx,) = torch.autograd.grad(model.logit_scale.exp() * cos + model.logit_bias, x)
        expected_cam = torch.relu(x[0].detach() @ dx[0].mean(0))
        torch.testing.assert_close(results["grad_cam"][index].map.flatten(), expected_cam, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(results["rollout"][index].map.flatten(), expected_rollout, rtol=1e-9, atol=1e-12)
        # P1: the explained score IS the model's own logits_per_image entry; probability is its sigmoid
        for name in results:
            assert results[name][index].score == pytest.approx(float(own[b, k]), rel=1e-12, abs=1e-14)
        assert float(oracle["score"]) == pytest.approx(float(own[b, k]), rel=1e-12)
        assert probability[index].score == pytest.approx(float(torch.sigmoid(own[b, k])), rel=1e-12)
        probability_oracle = image_oracle(model, pixels[b : b + 1], text_embeds[k], kind="probability")
        torch.testing.assert_close(
            probability[index].map.flatten(), probability_oracle["grad_eclip"], rtol=1e-9, atol=1e-12
        )


def test_game_over_all_layers_propagates_the_head_row():
    """GAME from start_layer=0: the head's row mean_h ReLU(dS/dA A) (its query is not a token: no e_q), then
    r <- r + r mean_h ReLU(dS/dA_l A_l) down the blocks, with the blocks' dS/dA through the model's own
    attentions (output_attentions) and the head's from the oracle."""
    model = tiny_siglip(seed=5)
    handle = from_hf(model)
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ids = sentencepiece_ids([3], context=10)
    with torch.no_grad():
        text_embed = model.get_text_features(input_ids=ids).pooler_output[0]
    oracle = image_oracle(model, pixels, text_embed)
    outputs = model.vision_model(pixel_values=pixels, output_attentions=True)
    image_embed = outputs.pooler_output[0]
    cos = torch.dot(image_embed, text_embed) / (image_embed.norm() * text_embed.norm())
    score = model.logit_scale.exp() * cos + model.logit_bias
    grads = torch.autograd.grad(score, outputs.attentions)
    row = oracle["game_head"]
    for attention, grad in zip(reversed(outputs.attentions), reversed(grads)):
        weighted = torch.relu(grad[0] * attention[0]).mean(0).detach()  # (T, T)
        row = row + row @ weighted
    result = faithclip.explain(handle, pixels, ids, "game", start_layer=0)
    torch.testing.assert_close(result.map.flatten(), row, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["logit", "probability"])
def test_text_methods_match_the_last_block_oracle(kind):
    model = tiny_siglip(seed=7, text_heads=2)
    handle = from_hf(model)
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    ids = sentencepiece_ids([1, 3, 5], context=10)
    with torch.no_grad():
        own = model(input_ids=ids, pixel_values=pixels).logits_per_image[0]
        image_embed = model.get_image_features(pixel_values=pixels).pooler_output[0]
    for method in ("grad_eclip", "attention_eclip"):
        results = faithclip.explain_text(handle, pixels, ids, method, target=kind)
        for k, explanation in enumerate(results):
            eos = int((ids[k] == EOS).nonzero()[0])
            oracle = text_oracle(model, ids[k : k + 1], eos, image_embed, kind=kind)
            torch.testing.assert_close(explanation.map, oracle[method], rtol=1e-9, atol=1e-12)
            expected = float(own[k]) if kind == "logit" else float(torch.sigmoid(own[k]))
            assert explanation.score == pytest.approx(expected, rel=1e-12)
            assert explanation.model_score == pytest.approx(expected, rel=1e-12)
            assert (explanation.map[eos:] == 0).all()  # words only: the end token and padding are not mapped


def test_text_attention_methods_use_the_last_position():
    model = tiny_siglip(seed=9)
    handle = from_hf(model)
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    ids = sentencepiece_ids([4], context=10)
    attentions = model.text_model(input_ids=ids, output_attentions=True).attentions
    last = attentions[-1][0].mean(0)[-1].detach()  # head-averaged row of the LAST position
    result = faithclip.explain_text(handle, pixels, ids, "self_attention")
    torch.testing.assert_close(result.map[:4], last[:4])
    assert (result.map[4:] == 0).all()
    rollout = faithclip.explain_text(handle, pixels, ids, "rollout")
    row = torch.zeros(10, dtype=torch.float64)
    row[-1] = 1
    for attention in reversed(attentions):
        augmented = attention[0].mean(0).detach() + torch.eye(10, dtype=torch.float64)
        row = row @ (augmented / augmented.sum(-1, keepdim=True))
    torch.testing.assert_close(rollout.map[:4], row[:4])
    game = faithclip.explain_text(handle, pixels, ids, "game")
    assert game.map[:4].abs().sum() > 0 and (game.map[4:] == 0).all()


def test_refusals_and_checks():
    model = tiny_siglip(seed=11)
    handle = from_hf(model)
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ids = sentencepiece_ids([2], context=10)
    with pytest.raises(MethodError, match="layers=2 is not defined on the vision tower"):
        faithclip.explain(handle, pixels, ids, "grad_eclip", layers=2)
    with pytest.raises(MethodError, match="self_attention at layer=-2"):
        faithclip.explain(handle, pixels, ids, "self_attention", layer=-2)
    with pytest.raises(MethodError, match="uses no other prompts"):
        faithclip.explain(handle, pixels, ids, "grad_eclip", target="probability", others=["x"])
    with pytest.raises(MethodError, match="not available for siglip models"):
        faithclip.explain(handle, pixels, ids, "grad_eclip_official")
    # the recomputed head is checked against the module's own output: an intervention that changes the head's
    # output is detected, and a head with parts the identity does not model is refused, never explained
    attention = model.vision_model.head.attention
    hook = attention.register_forward_hook(lambda module, args, output: (output[0] * 1.1, output[1]))
    try:
        with pytest.raises(ProbeError, match="output recomputed from its input and parameters differs"):
            faithclip.explain(handle, pixels, ids, "grad_eclip")
    finally:
        hook.remove()
    attention.bias_k = torch.nn.Parameter(torch.zeros(1, 1, 32, dtype=torch.float64))
    attention.bias_v = torch.nn.Parameter(torch.zeros(1, 1, 32, dtype=torch.float64))
    with pytest.raises(ProbeError, match="no bias_k/bias_v"):
        faithclip.explain(handle, pixels, ids, "grad_eclip")


def test_probe_leaves_the_model_bit_identical():
    model = tiny_siglip(seed=12, dtype=torch.float32)
    handle = from_hf(model)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    ids = sentencepiece_ids([2, 5], context=10)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=pixels).logits_per_image
    explained = faithclip.explain(handle, pixels, ids, "attention_eclip")
    with torch.no_grad():
        after = model(input_ids=ids, pixel_values=pixels).logits_per_image
    assert torch.equal(before, after)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    gaps = [abs(e.score - float(before[i // 2, i % 2])) for i, e in enumerate(explained)]
    assert max(gaps) <= 1e-5  # float32: our cosine is image @ text.T, the model's text @ image.T


def test_perturbation_methods_score_through_the_model():
    model = tiny_siglip(seed=14)
    handle = from_hf(model)
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    ids = sentencepiece_ids([3], context=10)
    occluded = faithclip.explain(handle, pixels, ids, "occlusion", window=16, stride=16)
    masked = pixels.clone()
    masked[..., :16, :16] = 0
    with torch.no_grad():
        base = model(input_ids=ids, pixel_values=pixels).logits_per_image[0, 0]
        drop = base - model(input_ids=ids, pixel_values=masked).logits_per_image[0, 0]
    assert float(occluded.map[0, 0]) == pytest.approx(float(drop), rel=1e-10)
    deleted = faithclip.explain_text(handle, pixels, ids, "occlusion")  # every word, the first included
    shorter = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
    with torch.no_grad():
        drop = base - model(input_ids=shorter, pixel_values=pixels).logits_per_image[0, 0]
    assert float(deleted.map[0]) == pytest.approx(float(drop), rel=1e-10)
    assert (deleted.map[3:] == 0).all()
    rise = faithclip.explain(handle, pixels, ids, "rise", masks=16, batch_size=8)
    assert rise.map.shape == (32, 32) and torch.isfinite(rise.map).all()


BASE_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16
)
BASE_TEXT = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=64,
)
# the other tower, small but with the 768-wide embedding the score compares (the vision embedding is its width)
SMALL_VISION = dict(
    hidden_size=768, intermediate_size=256, num_hidden_layers=1, num_attention_heads=12, image_size=224, patch_size=32
)
SMALL_TEXT = dict(
    vocab_size=32000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=64,
    projection_size=768,
)


def random_siglip(text_config: dict, vision_config: dict, seed: int = 0) -> transformers.SiglipModel:
    """A SiglipModel with N(0, 0.02) weights (layer norms 1 and 0) drawn directly: transformers' own
    initialisation of a 200M-parameter model takes several times longer and is not what is tested."""
    from transformers.initialization import no_init_weights

    config = transformers.SiglipConfig(text_config=text_config, vision_config=vision_config)
    with no_init_weights():
        model = transformers.SiglipModel._from_config(config, attn_implementation="eager").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                parameter.normal_(0, 0.02 if parameter.numel() > 1 else 1.0, generator=generator)
    return model


@pytest.mark.parametrize("tower", ["image", "text"])
def test_full_size_base_patch16_224_architecture(tower):
    """google/siglip-base-patch16-224's published sizes for the explained tower (vision: 768 wide, 12 layers,
    12 heads, patch 16 at 224 px; text: 768 wide, 12 layers, 12 heads, 32,000 ids, 64 positions), random
    weights, float32; the other tower small. The text config leaves eos_token_id at transformers' default
    (CLIP's 49407, outside the vocabulary), so the adapter's fallback to "</s>" = 1 is exercised. Prints
    the figures docs/equivalence.md quotes (pytest -s)."""
    image = tower == "image"
    model = random_siglip(SMALL_TEXT if image else BASE_TEXT, BASE_VISION if image else SMALL_VISION)
    handle = from_hf(model)
    assert handle.family.eos_token_id(model) == 1 and handle.context_length == 64
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = sentencepiece_ids([3, 7], context=64)
    with torch.no_grad():
        own = model(input_ids=ids, pixel_values=pixels).logits_per_image  # (1, 2)
    run = faithclip.explain if image else faithclip.explain_text
    a = run(handle, pixels, ids, "grad_eclip", relu="none")
    b = run(handle, pixels, ids, "attention_eclip", relu="none")
    figures = {
        "grad_eclip vs attention_eclip": max(
            relative_difference(x.map.double(), y.map.double(), 0.0) for x, y in zip(a, b)
        ),
        "P1": max(abs(e.score - float(own[0, k])) / abs(float(own[0, k])) for k, e in enumerate(a)),
    }
    assert a[0].map.shape == ((14, 14) if image else (64,))
    assert figures["grad_eclip vs attention_eclip"] <= 1e-5 and figures["P1"] <= 1e-5
    if image:  # the float32 head against the float64 oracle of the head
        with torch.no_grad():
            text_embed = model.get_text_features(input_ids=ids).pooler_output[1]
        explained = torch.relu(a[1].map.double().flatten())  # one layer, lambda >= 0: ReLU(signed) = the map
        figures["vs float64 oracle"] = relative_difference(
            explained, image_oracle(model, pixels, text_embed)["grad_eclip"], 0.0
        )
        assert figures["vs float64 oracle"] <= 1e-4
    print(
        f"\nsiglip-base-patch16-224 {tower} tower (random weights, float32): "
        + json.dumps({k: f"{v:.2e}" for k, v in figures.items()})
    )


def save_shapes_like_siglip(directory, image_size=32, patch_size=8, context=16):
    """A tiny SigLIP saved as the shapes stand-in is (save_pretrained, the faithclip word tokenizer with
    right padding to ``context``, a ``SiglipImageProcessor`` config with mean = std = 0.5)."""
    from faithclip.shapes.tokenizer import as_transformers_tokenizer, build_word_tokenizer

    tokenizer = as_transformers_tokenizer(build_word_tokenizer(["red", "blue", "circle", "square"]), context)
    model = tiny_siglip(
        seed=16,
        dtype=torch.float32,
        image_size=image_size,
        patch_size=patch_size,
        context=context,
        vocab=len(tokenizer),
    )
    model.config.text_config.eos_token_id = tokenizer.eos_token_id
    model.config.text_config.bos_token_id = tokenizer.bos_token_id
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(directory)
    return model, tokenizer


def test_load_a_saved_siglip_and_explain_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from faithclip.cli.main import main

    directory = tmp_path / "tiny-siglip"
    model, tokenizer = save_shapes_like_siglip(directory)
    handle = faithclip.load(directory)
    assert handle.family.name == "siglip" and type(handle.model).__name__ == "SiglipModel"
    preprocess = handle.preprocess
    assert (preprocess.resize, preprocess.center_crop, preprocess.mean, preprocess.std) == (
        "exact",
        False,
        (0.5,) * 3,
        (0.5,) * 3,
    )
    batch = handle.tokens(["a red circle", "blue"])
    expected = tokenizer(["a red circle", "blue"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert torch.equal(batch.input_ids, expected) and batch.input_ids.shape == (2, 16)  # padded to the context
    ctx = faithclip.methods.context.Context(
        handle=handle,
        side="text",
        pixels=torch.zeros(1, 3, 32, 32),
        text=batch,
        target=faithclip.targets.make_target("logit"),
    )
    assert ctx.support_mask()[0].nonzero().flatten().tolist() == [1, 2, 3]  # the words: no <start>, no <end>
    assert ctx.query_positions.tolist() == [15, 15]  # the last position
    image = Image.new("RGB", (48, 32), (200, 30, 30))  # not square: squashed to 32 x 32, not cropped
    image.paste((20, 20, 220), (0, 0, 24, 16))
    image.save(tmp_path / "scene.png")
    pixels = handle.pixels(tmp_path / "scene.png")
    reference = transformers.SiglipImageProcessorPil.from_pretrained(directory)(image, return_tensors="pt").pixel_values
    assert (pixels - reference).abs().max() <= 1e-5
    with torch.no_grad():
        own = model(input_ids=expected[:1], pixel_values=reference).logits_per_image[0, 0]
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                str(tmp_path / "scene.png"),
                "--text",
                "a red circle",
                "--model",
                str(directory),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "logit=" in capsys.readouterr().out  # the family's default score
    record = json.loads((out / "scene__a-red-circle__attention_eclip.json").read_text())
    assert record["score"] == pytest.approx(float(own), rel=1e-5) and record["model_score"] == pytest.approx(
        float(own), rel=1e-5
    )
    assert (
        main(
            [
                "explain",
                str(tmp_path / "scene.png"),
                "--text",
                "a red circle",
                "--model",
                str(directory),
                "--target",
                "probability",
                "--side",
                "text",
                "--out",
                str(tmp_path / "text"),
                "--no-progress",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "text" / "scene__a-red-circle__attention_eclip.json").read_text())
    assert record["score"] == pytest.approx(float(torch.sigmoid(own)), rel=1e-5)


def test_bfloat16_runs_every_method_near_float32():
    """bfloat16 on the CPU: the head's recomputation is checked at 1e-2 and its dS/dA taken in float32; every
    method stays within 0.1 of float32 relative to the map's largest value (measured: <= 0.06, text occlusion)."""
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    ids = sentencepiece_ids([3], context=10)
    full, half = from_hf(tiny_siglip(seed=3, dtype=torch.float32)), from_hf(tiny_siglip(seed=3, dtype=torch.bfloat16))
    for side, run in (("image", faithclip.explain), ("text", faithclip.explain_text)):
        for method in ("grad_eclip", "attention_eclip", "self_attention", "rollout", "game", "grad_cam", "occlusion"):
            if side == "text" and method == "grad_cam":
                continue
            a = run(full, pixels, ids, method).map
            b = run(half, pixels.bfloat16(), ids, method).map.float()
            assert float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) <= 0.1, (side, method)
