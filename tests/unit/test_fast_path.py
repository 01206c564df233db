"""The last-layer fast path gives the same maps as the full backward pass (issue: one-forward explanations)."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import random_clip, token_ids
from faithclip.api import method_spec
from faithclip.methods.context import Context
from faithclip.models.loading import from_hf
from faithclip.targets import Target
from tolerance import assert_rounding_close


def _maps(handle, pixels, ids, method, fast, target=Target(), layers=1):
    ctx = Context(handle, "image", pixels, handle.tokens(ids), target, fast=fast, grad_chunk=3)
    return method_spec(method, "image").image(ctx, layers=layers, relu="none")


@pytest.mark.parametrize(
    "shape", [dict(heads=1, layers=1), dict(heads=4, layers=2), dict(heads=2, layers=3, patch_size=4)]
)
@pytest.mark.parametrize("method", ["attention_eclip", "grad_eclip"])
def test_fast_equals_full_backward(shape, method):
    handle = from_hf(random_clip(seed=7, **shape))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    ids = token_ids([1, 2, 3, 4, 5, 6, 7])  # 7 prompts, chunks of 3: exercises the batching
    for target in (Target(), Target("logit")):
        fast = _maps(handle, pixels, ids, method, True, target)
        full = _maps(handle, pixels, ids, method, False, target)
        assert_rounding_close(fast.scores, full.scores, torch.float32)  # one-token forward vs the full one
        assert fast.maps.shape == full.maps.shape == (3, 7, *fast.maps.shape[2:])
        for a, b in zip(fast.maps.flatten(0, 1), full.maps.flatten(0, 1)):
            assert_rounding_close(a, b, torch.float32, kind="map")


def test_fast_path_matches_per_pair_results():
    handle = from_hf(random_clip(seed=9, heads=4, layers=2))
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([2, 3, 4])
    batched = _maps(handle, pixels, ids, "attention_eclip", True)
    for b in range(2):
        for k in range(3):
            single = _maps(handle, pixels[b : b + 1], ids[k : k + 1], "attention_eclip", False)
            assert_rounding_close(single.maps[0, 0], batched.maps[b, k], torch.float32, kind="map")


def test_precomputed_prompts_give_the_same_maps(tiny):
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([2, 3])
    prompts = tiny.prompts(ids)
    assert prompts.embeds.shape == (2, 16)
    import faithclip

    a = faithclip.explain(tiny, pixels, prompts)
    b = faithclip.explain(tiny, pixels, ids)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.map, y.map)


def test_non_standard_last_block_falls_back_with_a_warning():
    model = random_clip(seed=1, heads=2, layers=2)
    block = model.vision_model.encoder.layers[-1]
    offset = torch.linspace(-1, 1, 32)  # not constant over channels, so LayerNorm does not cancel it
    handle_hook = block.register_forward_hook(lambda m, a, out: out + offset)  # a block the fast path cannot mirror
    try:
        handle = from_hf(model)
        pixels = torch.randn(1, 3, 32, 32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast = _maps(handle, pixels, token_ids([2]), "grad_eclip", True)
        assert any("not a standard CLIP block" in str(w.message) for w in caught)
        full = _maps(handle, pixels, token_ids([2]), "grad_eclip", False)
        torch.testing.assert_close(fast.maps, full.maps)
    finally:
        handle_hook.remove()


def test_fast_path_builds_no_graph_and_leaves_parameters_alone(tiny):
    flags = [p.requires_grad for p in tiny.model.parameters()]
    ctx = Context(tiny, "image", torch.randn(1, 3, 32, 32), tiny.tokens(token_ids([2])), Target())
    scores, caps, grads = ctx.pooled_query_gradients([-1], "attn", ("q", "k", "attn"))
    assert not scores.requires_grad and not caps[1].attn.requires_grad
    assert grads[0].shape == (1, 1, 4, 17)
    assert [p.requires_grad for p in tiny.model.parameters()] == flags
    assert all(p.grad is None for p in tiny.model.parameters())


def test_model_score_is_not_taken_from_an_intervened_forward(tiny):
    """An intervention hook (as M2IB attaches) must not leak into the P1 reference score."""
    ctx = Context(tiny, "image", torch.randn(1, 3, 32, 32), tiny.tokens(token_ids([2])), Target())
    own = ctx.model_scores().clone()
    ctx = Context(tiny, "image", ctx.pixels, ctx.text, Target())
    layer = tiny.model.vision_model.encoder.layers[0]
    hook = layer.register_forward_hook(lambda m, a, out: out + torch.linspace(-1, 1, out.shape[-1]))
    try:
        scores, _ = ctx.probe_forward([-1], ("attn",))
    finally:
        hook.remove()
    assert not torch.allclose(scores.detach(), own)  # the intervened forward differs ...
    torch.testing.assert_close(ctx.model_scores(), own)  # ... and was not kept as the model's own score
