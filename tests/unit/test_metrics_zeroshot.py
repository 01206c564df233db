"""Zero-shot accuracy and the template ensemble, checked by hand on a tiny model with a word tokenizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_clip
from faithclip.data.templates import OPENAI_IMAGENET_TEMPLATES, fill
from faithclip.metrics import METRICS
from faithclip.metrics.zeroshot import (
    build_prompt_set,
    classifier_weights,
    top1_correct,
)
from faithclip.models.loading import from_hf
from faithclip.shapes.tokenizer import as_transformers_tokenizer, build_word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_80_openai_templates():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(OPENAI_IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)
    assert (
        OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
        and OPENAI_IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    )
    assert fill(("a {} b",), "cat") == ["a cat b"]


def test_top1_correct():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    assert top1_correct(scores, torch.tensor([1, 2, 2])).tolist() == [1.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def handle():
    model = random_clip(seed=4)
    model.config.text_config.eos_token_id = 3  # the word tokenizer's end id
    tokenizer = as_transformers_tokenizer(build_word_tokenizer(["red", "blue", "circle", "square", "bad", "good"]))
    return from_hf(model, tokenizer)


def test_ensemble_weight_is_the_renormalised_mean_of_unit_embeddings(handle):
    templates = ("a {}", "a good {}", "a bad {}")
    weights = classifier_weights(handle, ["red circle", "blue square"], templates)
    with torch.no_grad():
        for row, name in enumerate(["red circle", "blue square"]):
            by_hand = torch.zeros(weights.shape[1])
            for template in templates:
                by_hand += F.normalize(handle.encode_text(handle.tokens(template.format(name)))[0], dim=-1) / 3
            assert torch.allclose(weights[row], by_hand / by_hand.norm(), atol=1e-6)
    prompt_set = build_prompt_set(handle, ["red circle", "blue square"], templates)
    assert prompt_set.prompts == ["a red circle", "a blue square"] and len(prompt_set) == 2
    own = build_prompt_set(handle, ["c1", "c2"], prompts=["a red circle", "a blue square"])
    assert own.prompts == ["a red circle", "a blue square"]
    with pytest.raises(ValueError, match="one prompt per class"):
        build_prompt_set(handle, ["c1"], prompts=["a", "b"])


def test_registry_metadata():
    spec = METRICS.get("zeroshot")
    assert spec.category == "accuracy" and spec.higher_is_better and not spec.per_method
