"""Zero-shot classification accuracy (Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021).

Each class ``c`` gets a classifier weight from its prompts (several templates are ensembled as in
OpenAI's ImageNet notebook and Grad-ECLIP's ``build_zero_shot_classifier``):

    w_c = normalize( mean_t normalize(encode_text(template_t(c))) )

and an image ``x`` is classified as ``argmax_c cos(encode_image(x), w_c)``:

    top-1 accuracy = mean_i 1[ argmax_c cos(x_i, w_c) = y_i ]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from faithclip.data.templates import DEFAULT_TEMPLATE, fill
from faithclip.metrics import MetricSpec, register_metric
from faithclip.metrics.case import MetricCase, MetricValue
from faithclip.models.clip import ModelHandle, TextBatch


@dataclass
class PromptSet:
    """The classes of a data set as the model sees them.

    ``weights`` ``(K, D)`` unit classifier weights; ``prompts`` one representative text per class (what a
    method that reads the text is given); ``templates`` how the weights were built.
    """

    class_names: list[str]
    prompts: list[str]
    weights: torch.Tensor  # (K, D)
    templates: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.class_names)

    def text_batch(self, handle: ModelHandle, indices: Sequence[int] | None = None) -> TextBatch:
        """Tokens of the representative prompts (all classes, or ``indices``)."""
        chosen = range(len(self.prompts)) if indices is None else indices
        return handle.tokens([self.prompts[i] for i in chosen])


def classifier_weights(
    handle: ModelHandle, class_names: Sequence[str], templates: Sequence[str] = ("{}",), batch_size: int = 256
) -> torch.Tensor:
    """``(K, D)`` zero-shot weights: per class, what the family's score reads for its filled templates
    (``Family.class_weights``; CLIP: the renormalised mean of the unit template embeddings)."""
    return handle.family.class_weights(handle, [fill(tuple(templates), name) for name in class_names], batch_size)


def build_prompt_set(
    handle: ModelHandle,
    class_names: Sequence[str],
    templates: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
) -> PromptSet:
    """Classifier weights from ``templates`` filled with the class names, or from ready ``prompts``
    (one per class, e.g. the shapes world's "a red circle"). A model without a text side (a classifier)
    reads the class names themselves: its texts are its classes."""
    handle.family.check_class_names(handle.model, list(class_names))
    if not handle.family.has_side("text"):
        weights = classifier_weights(handle, list(class_names), ("{}",))
        return PromptSet(list(class_names), list(class_names), weights, ("{}",))
    if prompts is not None:
        if len(prompts) != len(class_names):
            raise ValueError(f"{len(prompts)} prompts for {len(class_names)} classes; give one prompt per class")
        weights = classifier_weights(handle, list(prompts), ("{}",))
        return PromptSet(list(class_names), list(prompts), weights, ("{}",))
    templates = tuple(templates or (DEFAULT_TEMPLATE,))
    weights = classifier_weights(handle, class_names, templates)
    representative = DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in templates else templates[0]
    return PromptSet(list(class_names), [representative.format(c) for c in class_names], weights, templates)


def top1_correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` scores, ``(N,)`` labels -> ``(N,)`` 1.0 where the top class is the label."""
    return (scores.argmax(-1) == labels).to(torch.float64)


def run_zeroshot(case: MetricCase) -> MetricValue:
    logits = case.unperturbed_logits()  # (1, K): the unperturbed image against all classes
    correct = top1_correct(logits, torch.tensor([case.label], device=logits.device))
    probability = case.label_probability(logits)[0]
    return MetricValue(
        values={"top1": float(correct[0]), "prob": float(probability)}, details={"predicted": int(logits.argmax())}
    )


register_metric(
    MetricSpec(
        name="zeroshot",
        category="accuracy",
        higher_is_better=True,
        protocol="zero-shot",
        summary="top-1 accuracy of the model on the labelled images against the data set's prompts",
        paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
        run=run_zeroshot,
        outputs={"top1": "top-1 accuracy", "prob": "label probability"},
        per_method=False,
    )
)
