"""Public API: loading, inputs, targets, bad input, explanation records."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import faithclip
from conftest import VOC_DIR, needs_reference, random_clip, save_reference_checkpoint, token_ids
from faithclip.errors import MethodError, ModelError, TextError
from faithclip.models.loading import from_hf, load
from faithclip.targets import Target, cosine_matrix
from tolerance import assert_rounding_close


@pytest.fixture(scope="module")
def saved_b32_dir(tmp_path_factory):
    return save_reference_checkpoint(tmp_path_factory.mktemp("b32"), layers=1)


@needs_reference
def test_load_directory_and_explain_real_photo(saved_b32_dir, tmp_path):
    model = load(saved_b32_dir)
    assert model.model.config._attn_implementation == "eager"
    assert model.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    image = VOC_DIR / "JPEGImages" / "2011_000006.jpg"
    ex = faithclip.explain(model, image, "a chair")
    assert ex.map.shape == (7, 7) and ex.input_size == (224, 224)
    assert ex.score == pytest.approx(ex.model_score, rel=1e-6) and ex.p1_gap < 1e-5
    assert ex.method == "attention_eclip" and not ex.modifies_model and ex.model_id == str(saved_b32_dir)
    tx = faithclip.explain_text(model, image, "a chair by a sofa")
    assert tx.tokens[0] == "<|startoftext|>" and tx.map.shape == (len(tx.tokens),)
    path = ex.save_json(tmp_path / "ex.json")
    record = json.loads(path.read_text())
    assert record["map_shape"] == [7, 7] and record["version"] == faithclip.__version__
    overlay = ex.save_overlay(tmp_path / "overlay.png", model.preprocess.crop_image(model.rgb(image)))
    assert overlay.stat().st_size > 0


def test_unsupported_family_directory(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        ModelError, match="a .bert. model, which faithclip does not support; supported model types: .*'clip'"
    ):
        load(tmp_path)


def test_unknown_shipped_name_or_offline_hub_id_is_explained():
    with pytest.raises(ModelError, match="local directory"):
        load("no-such-org/no-such-clip-model-xyz")


def test_model_without_class_token():
    class NoCls(torch.nn.Module):
        config = transformers.CLIPConfig()

    with pytest.raises(ModelError):
        from_hf(NoCls())
    model = random_clip()
    del model.vision_model.embeddings.class_embedding
    with pytest.raises(ModelError, match="class token"):
        from_hf(model)


def test_sdpa_model_switched_to_eager_with_notice(caplog):
    model = random_clip()
    model.set_attn_implementation("sdpa")
    with caplog.at_level("WARNING"):
        handle = from_hf(model)
    assert "eager" in caplog.text and handle.model.config._attn_implementation == "eager"


def test_text_inputs(b32_handle):
    with pytest.raises(TextError, match="empty"):
        b32_handle.tokens("   ")
    with pytest.warns(UserWarning, match="truncated"):
        batch = b32_handle.tokens("word " * 100)
    assert batch.input_ids.shape[1] == 77 and batch.truncated == [True]
    assert batch.input_ids[0, -1] == 49407 and batch.eos_positions.tolist() == [76]
    ids = torch.tensor([[49406, 320, 2368, 49407]])
    assert b32_handle.tokens(ids).eos_positions.tolist() == [3]
    with pytest.raises(TextError, match="context"):
        b32_handle.tokens(torch.ones(1, 80, dtype=torch.long))


def test_truncation_recorded_in_explanation(b32_handle):
    pixels = torch.zeros(1, 3, 224, 224)
    with pytest.warns(UserWarning):
        tx = faithclip.explain_text(b32_handle, pixels, "word " * 100)
    assert tx.warnings and "truncated" in tx.warnings[0]


def test_unknown_method_lists_valid_ones(tiny):
    with pytest.raises(MethodError, match="attention_eclip"):
        faithclip.explain(tiny, torch.zeros(1, 3, 32, 32), token_ids([2]), method="nope")
    with pytest.raises(MethodError, match="layers"):
        faithclip.explain(tiny, torch.zeros(1, 3, 32, 32), token_ids([2]), method="grad_eclip", bogus=1)


def test_constant_query_key_cosine_gives_defined_map():
    model = random_clip(heads=2, layers=1)
    with torch.no_grad():  # constant keys: every patch's key equals the bias, so all cosines are equal
        model.vision_model.encoder.layers[0].self_attn.k_proj.weight.zero_()
    handle = from_hf(model)
    for method in ("grad_eclip", "attention_eclip"):
        ex = faithclip.explain(handle, torch.randn(1, 3, 32, 32), token_ids([2]), method=method)
        assert torch.isfinite(ex.map).all()
    without = faithclip.explain(
        handle,
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        token_ids([2]),
        method="grad_eclip",
        use_lambda=False,
    )
    with_lambda = faithclip.explain(
        handle,
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        token_ids([2]),
        method="grad_eclip",
    )
    assert torch.equal(without.map, with_lambda.map)  # lambda == 1 when undefined


def test_targets_are_the_models_own_scores(tiny):
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([2, 3])
    with torch.no_grad():
        image = tiny.encode_image(pixels)
        text = tiny.encode_text(tiny.tokens(ids))
        logits = tiny.model(pixel_values=pixels, input_ids=ids).logits_per_image
    cosine = cosine_matrix(image, text)
    torch.testing.assert_close(Target("logit").scores(image, text, tiny.logit_scale), logits)
    extra = text[1:]
    probability = Target("probability", ("x",)).scores(image, text[:1], tiny.logit_scale, extra)
    torch.testing.assert_close(probability[:, 0], logits.softmax(-1)[:, 0])
    contrast = Target("contrast", ("x",)).scores(image, text[:1], tiny.logit_scale, extra)
    torch.testing.assert_close(contrast[:, 0], cosine[:, 0] - cosine[:, 1])
    with pytest.raises(MethodError):
        Target("contrast")
    with pytest.raises(MethodError, match="cosine"):
        Target("kl")


def test_the_default_target_is_decided_by_the_family_alone(tiny, monkeypatch):
    """Every path that explains without a named target (explain, the published pipeline's helper, P1's
    check through family_target) takes Family.default_target_kind: changing it there changes them all."""
    from PIL import Image

    from faithclip.api import family_target, grad_eclip_official_explain

    assert tiny.family.default_target_kind == "cosine" == family_target(tiny, None).kind
    monkeypatch.setattr(type(tiny.family), "target_kinds", ("logit", "cosine", "probability", "contrast"))
    assert family_target(tiny, None).kind == "logit" == tiny.family.default_target().kind
    assert faithclip.explain(tiny, torch.randn(1, 3, 32, 32), token_ids([2])).target == "logit"
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    assert grad_eclip_official_explain(tiny, image, token_ids([2]))[0].target == "logit"


def test_qk_is_a_deprecated_alias_of_lambda_qk(tiny):
    """grad_eclip_official's ``qk`` is ``lambda_qk`` under its old name, for one release: same map, a
    DeprecationWarning pointing at the caller's line (so Python's default filter shows it in a script)."""
    from PIL import Image

    image = Image.new("RGB", (32, 32), (120, 30, 200))
    new = faithclip.explain(tiny, image, token_ids([2]), "grad_eclip_official", lambda_qk="raw")
    with pytest.warns(DeprecationWarning, match="option qk is deprecated.*use lambda_qk") as caught:
        old = faithclip.explain(tiny, image, token_ids([2]), "grad_eclip_official", qk="raw")
    assert torch.equal(old.map, new.map)  # the same computation by construction
    assert old.options["lambda_qk"] == "raw" and "qk" not in old.options
    assert [w.filename for w in caught if w.category is DeprecationWarning] == [__file__]
    with pytest.raises(MethodError, match="disagree"), pytest.warns(DeprecationWarning):
        faithclip.explain(tiny, image, token_ids([2]), "grad_eclip_official", lambda_qk="raw", qk="out_proj")
    with pytest.warns(DeprecationWarning):
        text = faithclip.explain_text(tiny, image, token_ids([2]), "grad_eclip_official", qk="raw")
    assert text.options["lambda_qk"] == "raw"


def test_layer_options_have_one_meaning_each_and_a_wrong_one_is_refused_before_any_work(tiny):
    """``layers`` counts last layers, ``layer`` indexes one, ``start_layer`` indexes the first of a range:
    giving one to a method that takes another is a MethodError that says both meanings, on every path
    (issue 24: grad_cam with layers ended in Python's "unexpected keyword")."""
    from PIL import Image

    from faithclip.api import grad_eclip_official_explain

    pixels, ids = torch.randn(1, 3, 32, 32), token_ids([2])
    with pytest.raises(
        MethodError,
        match=r"layers is not an option of grad_cam; its options are layer \(layers: a "
        r"count of last layers; layer: the index of one layer\)\.$",
    ):
        faithclip.explain(tiny, pixels, ids, "grad_cam", layers=2)
    with pytest.raises(MethodError, match="layer is not an option of grad_eclip_official; .*layer: the index of one"):
        grad_eclip_official_explain(tiny, Image.new("RGB", (32, 32)), ids, layer=1)
    assert faithclip.explain(tiny, pixels, ids, "grad_cam", layer=0).layer_indices == [0]


def test_every_target_explains_with_matching_model_score(b32_handle):
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for kind, others in [("cosine", ()), ("logit", ()), ("probability", ("a dog", "a car")), ("contrast", ("a dog",))]:
        ex = faithclip.explain(b32_handle, pixels, "a cat", target=kind, others=others)
        assert ex.target.startswith(kind)
        assert ex.p1_gap < 1e-5
        tx = faithclip.explain_text(b32_handle, pixels, "a cat", target=kind, others=others)
        assert tx.p1_gap < 1e-5


def test_batches_are_image_major(tiny):
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([1, 2, 3])
    many = faithclip.explain(tiny, pixels, ids)
    assert len(many) == 6
    for index, ex in enumerate(many):
        b, k = divmod(index, 3)
        single = faithclip.explain(tiny, pixels[b], ids[k : k + 1])
        assert_rounding_close(ex.map, single.map, torch.float32, kind="map")  # batch of 2 vs 1: other kernels
