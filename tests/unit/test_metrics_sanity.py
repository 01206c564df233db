"""Cascading randomisation: the cascade order, and the user's model untouched (Spearman itself: test_mapmath.py)."""

from __future__ import annotations

import pytest
import torch

import faithclip
from conftest import random_clip, token_ids
from faithclip.metrics import METRICS
from faithclip.metrics.sanity import cascade_blocks, cascading_randomisation, reinitialise
from faithclip.models.loading import from_hf

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    handle = from_hf(random_clip(seed=5, layers=3, image_size=32, patch_size=8))
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = token_ids([3])

    def explain(h):
        return faithclip.explain(h, pixels, ids, "grad_eclip").map

    return handle, explain


def test_cascade_goes_top_first():
    names = [name for name, _ in cascade_blocks(random_clip(layers=3))]
    assert names == ["visual_projection", "post_layernorm", "layer 2", "layer 1", "layer 0", "embeddings"]


def test_randomising_a_layer_changes_a_gradient_map_and_leaves_the_users_model_untouched(setup):
    handle, explain = setup
    before = {name: p.detach().clone() for name, p in handle.model.named_parameters()}
    original = explain(handle)
    names, correlations = cascading_randomisation(handle, explain, seed=3)
    assert len(names) == len(correlations) == 6
    assert all(-1 <= c <= 1 for c in correlations)
    assert correlations[-1] < 0.9  # the map of a fully random tower is not the original map
    for name, parameter in handle.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    assert torch.equal(explain(handle), original)
    assert cascading_randomisation(handle, explain, seed=3) == (names, correlations)  # seeded


def test_reinitialising_the_top_layer_alone_changes_the_map(setup):
    import copy

    handle, explain = setup
    copied = copy.deepcopy(handle.model)
    layer = copied.vision_model.encoder.layers[-1]
    reinitialise([layer], torch.Generator().manual_seed(0))
    changed = from_hf(copied)
    assert not torch.allclose(explain(changed), explain(handle))
    assert torch.equal(layer.layer_norm1.weight, torch.ones_like(layer.layer_norm1.weight))
    untouched = copied.vision_model.encoder.layers[0].self_attn.q_proj.weight
    assert torch.equal(untouched, handle.model.vision_model.encoder.layers[0].self_attn.q_proj.weight)


def test_registry_metadata():
    spec = METRICS.get("sanity_cascade")
    assert spec.category == "sanity" and spec.higher_is_better is False


def test_rise_under_the_cascade_makes_its_masks_once_and_gives_each_models_literal_map(monkeypatch):
    """The sanity cascade recomputes RISE's map on every randomised model: the masks (same seed, so the same
    masks) are made once and reused, and each model's map is still RISE's literal formula on that model
    with those masks (``rise_literal``, mask by mask, scipy's upsampling), and equals the map made with
    the masks drawn and rendered again for that model (the computation before they were kept)."""
    from faithclip.api import method_spec
    from faithclip.methods import rise as rise_module
    from faithclip.methods.context import Context
    from faithclip.targets import Target
    from reference.perturbation_methods_reference import rise_literal, rise_masks_literal
    from tolerance import assert_rounding_close

    handle = from_hf(random_clip(seed=2, layers=2, image_size=16, patch_size=8))
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ids = token_ids([3])
    options = dict(masks=40, cells=3, prob=0.5, batch_size=16, seed=7)
    rise = method_spec("rise", "image").image
    grids, shifts = rise_module.generate_masks(40, 3, 0.5, (16, 16), torch.Generator().manual_seed(7))
    literal_masks = rise_masks_literal(grids, shifts, (16, 16))  # (40, 16, 16)
    rendered = []
    render = rise_module.render_masks
    monkeypatch.setattr(rise_module, "render_masks", lambda *a: (rendered.append(1), render(*a))[1])
    rise_module.kept_masks.cache_clear()

    def context(h):
        return Context(handle=h, side="image", pixels=h.pixels(pixels), text=h.tokens(ids), target=Target())

    kept = []

    def explain(h):  # what the evaluator's sanity check does: RISE on each model, the masks kept
        kept.append(rise(context(h), **options).maps[0, 0])  # (16, 16)
        return kept[-1]

    names, correlations = cascading_randomisation(handle, explain, seed=3)
    assert len(kept) == 1 + len(names) == 1 + 5  # the original, then projection, post_layernorm, 2 layers, embeddings
    assert len(rendered) == 3  # 40 masks in batches of 16, made for the first model only

    oracle = []

    def literal(h):  # the same seeded cascade again: each model's map made as before, and RISE's formula
        ctx = context(h)
        rise_module.kept_masks.cache_clear()  # the masks drawn and rendered for this model alone
        remade = rise(ctx, **options).maps[0, 0]
        model = len(oracle)
        assert torch.equal(kept[model], remade)  # the same masks' bits and the same forwards: the same computation
        expected = rise_literal(lambda x: ctx.score_images(x)[0], ctx.pixels, literal_masks, 0.5)[0]
        assert_rounding_close(kept[model], expected, kind="map", what=f"RISE on model {model}")
        oracle.append(remade)
        return remade

    assert cascading_randomisation(handle, literal, seed=3) == (names, correlations)
    assert len({m.sum().item() for m in oracle}) == len(oracle)  # each model its own map: the models differ
