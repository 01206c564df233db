"""The per-token readings every family declares (``Family.token_head``, ``Family.block_mlp``), and the
per-token methods that use them (MaskCLIP, LeGrad, M2IB, CLIP Surgery) on every family that supports them.

Oracles, independent of the code under test:
- the head: on CLIP, BLIP, ViT and DeiT the class token passes through ``token_head`` to become the model's
  own image embedding, so ``token_head(last block's output)[:, 0]`` equals ``encode_image`` (the model's
  forward). SigLIP pools by attention; its per-token head is, by construction, what the model's own pooling
  head returns for a sequence whose tokens all equal that token;
- the block: ``block_mlp(block, x + out_proj(attention))`` equals the block's own output, read by the probe.
MaskCLIP's value path is ``token_head(block_mlp(x + out_proj(v)))``: its two family-specific parts are the
ones checked here; the methods then run end to end on each family they declare.
"""

from __future__ import annotations

import pytest
import torch
from test_every_family_commands import classifier, siglip

import faithclip
from blip_fixtures import blip_tokenizer, random_blip
from faithclip.errors import MethodError
from faithclip.models.loading import from_hf
from faithclip.probe import Probe, encoder_layers
from faithclip.registry import METHODS
from tolerance import assert_rounding_close

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_clip():
    from faithclip.models.loading import load

    return load("shapes-clip")


def handles(tmp_path) -> dict:
    return {
        "clip": tiny_clip(),
        "vit": classifier("vit"),
        "deit": classifier("deit"),
        "siglip": siglip(),
        "blip": from_hf(random_blip(seed=2), blip_tokenizer(tmp_path / "tok"), name="tiny-blip"),
    }


def pixels_of(handle, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = handle.preprocess.crop_height, handle.preprocess.crop_width
    return torch.randn((2, 3, *size), generator=generator).to(handle.dtype)


def random_photo(handle, seed: int = 3):
    import numpy as np
    from PIL import Image

    size = handle.preprocess.crop_width, handle.preprocess.crop_height
    array = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array)


def last_block(handle, pixels):
    """The last vision block's input, attention output (before out_proj) and output, read by the probe."""
    last = len(encoder_layers(handle.model, "vision")) - 1  # the last block (SigLIP's pooling head is after it)
    with (
        torch.no_grad(),
        Probe(handle.model, "vision", layer_indices=[last], capture=("hidden_in", "attn_out", "hidden_out")) as probe,
    ):
        handle.encode_image(pixels)
    return probe.captures[last].require("hidden_in", "attn_out", "hidden_out")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return handles(tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("name", ["clip", "blip", "vit", "deit"])
def test_the_class_token_through_the_head_is_the_models_own_embedding(models, name):
    handle = models[name]
    pixels = pixels_of(handle)
    _, _, hidden_out = last_block(handle, pixels)
    with torch.no_grad():
        own = handle.encode_image(pixels)  # (B, E): the model's forward
        headed = handle.family.token_head(handle.model, hidden_out)[:, 0]
    assert_rounding_close(headed, own, what=f"{name} class token through token_head")


def test_siglip_per_token_head_is_its_pooling_head_on_identical_tokens(models):
    handle = models["siglip"]
    _, _, hidden_out = last_block(handle, pixels_of(handle))  # (B, T, D)
    vision = handle.model.vision_model
    with torch.no_grad():
        per_token = handle.family.token_head(handle.model, hidden_out)  # (B, T, E)
        for j in (0, hidden_out.shape[1] - 1):
            repeated = hidden_out[:, j : j + 1].expand_as(hidden_out).contiguous()  # every token = token j
            pooled = vision.head(vision.post_layernorm(repeated))  # the model's own pooling head
            assert_rounding_close(per_token[:, j], pooled, what=f"siglip token {j}")


@pytest.mark.parametrize("name", ["clip", "blip", "vit", "deit", "siglip"])
def test_block_mlp_completes_the_blocks_own_forward(models, name):
    handle = models[name]
    hidden_in, attn_out, hidden_out = last_block(handle, pixels_of(handle, 1))
    block = encoder_layers(handle.model, "vision")[-1]
    with torch.no_grad():
        mid = hidden_in + handle.family.attention(block).out(attn_out)
        assert_rounding_close(handle.family.block_mlp(block, mid), hidden_out, what=f"{name} block MLP")


EXPECTED = {  # the per-token methods' families (the one declaration: MethodSpec.families)
    "maskclip": {"clip", "blip", "vit", "deit", "siglip"},
    "legrad": {"clip", "blip", "vit", "deit", "siglip"},
    "m2ib": {"clip", "blip", "vit", "deit", "siglip"},
    "clip_surgery": {"clip", "blip"},
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_per_token_methods_run_on_every_family_they_declare_and_refuse_the_rest_in_one_line(models, method):
    spec = METHODS.get(method)
    assert set(spec.family_names()) == EXPECTED[method]
    for name, handle in models.items():
        image = random_photo(handle)
        labels = handle.class_names if hasattr(handle, "class_names") and handle.class_names else None
        prompts = list(labels[:2]) if labels else ["a red square", "a blue circle"]
        if name not in EXPECTED[method]:
            with pytest.raises(MethodError) as error:
                faithclip.explain(
                    handle, image, prompts, method=method, **({"steps": 1, "samples": 1} if method == "m2ib" else {})
                )
            assert "\n" not in str(error.value) and f"not available for {name}" in str(error.value)
            continue
        options = {"steps": 2, "samples": 2} if method == "m2ib" else {}
        target = "cosine" if method == "clip_surgery" else None
        explained = faithclip.explain(handle, image, prompts, method=method, target=target, **options)
        maps = torch.stack([e.map for e in explained])
        grid = handle.preprocess.crop_height // handle.patch_size
        assert maps.shape[-2:] == (grid, grid) and bool(torch.isfinite(maps).all()), (name, method)
        assert float(maps.abs().max()) > 0, (name, method)
        if "text" in spec.sides_on(handle.family):  # M2IB's bottleneck in the text tower of BLIP and SigLIP too
            for token_map in faithclip.explain_text(handle, image, prompts[:1], method=method, **options):
                assert bool(torch.isfinite(token_map.map).all()) and float(token_map.map.abs().max()) > 0, name


def test_a_new_family_gets_every_method_its_adapter_allows_without_a_method_edit(monkeypatch):
    """Support is declared once, from the adapter: a family registered under a new name with CLIP's adapter
    (a stand-in for "a new CLIP-like family") is offered exactly CLIP's methods and sides, CLIP Surgery
    included, and one with a classifier's adapter exactly the classifier's; no method file names it."""
    from faithclip.models.families import FAMILIES, _load_families
    from faithclip.registry import METHODS

    _load_families()
    for base, new in (("clip", "newclip"), ("vit", "newvit")):
        family = type(f"New{base}", (type(FAMILIES[base]),), {"name": new, "model_types": (new,)})()
        monkeypatch.setitem(FAMILIES, new, family)
        for spec in METHODS:
            assert spec.sides_on(family) == spec.sides_on(FAMILIES[base]), (spec.name, new)
