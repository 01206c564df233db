"""The probe reads internals without changing anything, and cleans up after itself."""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import random_clip, tiny_config, token_ids
from faithclip.errors import ProbeError
from faithclip.probe import CAPTURABLE, Probe
from reference.clip_manual import vision_forward


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_embeddings_bit_identical_under_probe():
    model = random_clip(heads=4, layers=3)
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([2, 5])
    # The reference runs in the same grad mode as the probed forward (grad on: the parameters require it), on
    # the same shapes: the only difference is the probe's hooks, so equality is exact by construction.
    image_ref = model.get_image_features(pixel_values=pixels).pooler_output.detach()
    text_ref = model.get_text_features(input_ids=ids).pooler_output.detach()
    for grad_from in (None, 0, 2):
        with Probe(model, "vision", layer_indices=[0, -1], grad_from=grad_from):
            image = model.get_image_features(pixel_values=pixels).pooler_output
        with Probe(model, "text", layer_indices=[1], grad_from=grad_from):
            text = model.get_text_features(input_ids=ids).pooler_output
        assert torch.equal(image, image_ref)
        assert torch.equal(text, text_ref)


def test_captures_match_independent_forward():
    model = random_clip(heads=2, layers=2, dtype=torch.float64)
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with Probe(model, "vision", layer_indices=[-1]) as probe:
        model.get_image_features(pixel_values=pixels)
    _, internals = vision_forward(model, pixels)
    capture = probe.captures[1]
    for name in ("q", "k", "v", "attn", "attn_out"):
        torch.testing.assert_close(getattr(capture, name), internals[-1][name], rtol=1e-7, atol=1e-9)
    assert capture.attn.shape == (1, 2, 17, 17)
    assert torch.allclose(capture.attn.sum(-1), torch.ones(1, 2, 17, dtype=torch.float64), atol=1e-6)
    assert capture.hidden_in.shape == capture.hidden_out.shape == (1, 17, 32)


def test_gradients_reachable_and_graph_starts_at_grad_from():
    model = random_clip(heads=2, layers=3)
    pixels = torch.randn(1, 3, 32, 32)
    with Probe(model, "vision", layer_indices=[0, 2], grad_from=2) as probe:
        out = model.get_image_features(pixel_values=pixels).pooler_output
    assert out.requires_grad
    assert probe.captures[2].attn.requires_grad
    assert not probe.captures[0].attn.requires_grad  # below grad_from: no graph was built
    grad = torch.autograd.grad(out.sum(), probe.captures[2].attn)[0]
    assert grad.shape == (1, 2, 17, 17) and grad.abs().sum() > 0


def test_hooks_removed_and_flags_restored_even_when_forward_raises():
    model = random_clip()
    model.train()
    model.text_model.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    before = _hook_count(model)
    with pytest.raises(ValueError, match="doesn.t match"):
        with Probe(model, "vision", layer_indices=[-1], grad_from=0):
            assert not model.training  # eval_mode=True for the duration
            assert not any(p.requires_grad for p in model.parameters())
            model.get_image_features(pixel_values=torch.randn(1, 3, 31, 31))  # wrong size: raises
    assert _hook_count(model) == before
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_error_when_attention_not_materialised():
    config = tiny_config()
    model = transformers.CLIPModel(config)
    model.set_attn_implementation("sdpa")
    with pytest.raises(ProbeError, match="eager"):
        with Probe(model, "vision", capture=("attn",)):
            pass
    assert _hook_count(model) == 0


def test_error_when_attention_returns_none():
    model = random_clip()
    handle = model.vision_model.encoder.layers[-1].self_attn.register_forward_hook(lambda m, a, out: (out[0], None))
    try:
        with pytest.raises(ProbeError, match="did not return attention probabilities"):
            with Probe(model, "vision", layer_indices=[-1], capture=("attn",)):
                model.get_image_features(pixel_values=torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "bad", [dict(layer_indices=[5]), dict(layer_indices=[-3]), dict(capture=("queries",)), dict(tower="audio")]
)
def test_bad_configuration_is_explained(bad):
    model = random_clip(layers=2)
    kwargs = dict(tower="vision", layer_indices=[-1], capture=CAPTURABLE) | bad
    with pytest.raises(ProbeError):
        Probe(model, kwargs.pop("tower"), **kwargs)
