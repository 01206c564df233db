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
