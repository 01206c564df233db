"""What scalar is explained: the model's own image-text score.

A target maps image embeddings ``(B, D)`` and text embeddings ``(K, D)`` (projected, not normalised)
to scores ``(B, K)``: entry ``[b, k]`` is the scalar whose explanation is asked for image ``b`` and text
``k``. Targets are pure functions of the embeddings, so an explanation can always state the number it
explained and compare it with the model's own score (principle P1).

    cosine       s(i, t) = <i, t> / (|i| |t|)                                   (default)
    logit        exp(logit_scale) * s(i, t)
    probability  softmax of the logits over {t_k} + the extra prompts (the OTHER prompts of the set), entry t_k
                 (a family may define its own: SigLIP's is sigmoid(logit + bias) per pair, ``Family.score``)
    contrast     s(i, t) - s(i, t')   for one other text t'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from faithclip.errors import MethodError


def cosine_matrix(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every image with every text: ``(B, D), (K, D) -> (B, K)``, computed in at
    least float32: a bfloat16 cosine keeps 3 significant digits, and the perturbation methods subtract
    nearly equal scores (float32 and float64 inputs are untouched)."""
    dtype = accumulation_dtype(image_embeds.dtype)
    return F.normalize(image_embeds.to(dtype), dim=-1) @ F.normalize(text_embeds.to(dtype), dim=-1).T


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and scores are taken in: float32 for a half-precision model, else ``dtype`` itself."""
    return torch.promote_types(dtype, torch.float32)


@dataclass(frozen=True)
class Target:
    """A named scalar of the model. ``extra_texts`` are prompts the target needs beyond the explained ones."""

    kind: str = "cosine"
    extra_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise MethodError(f"unknown target {self.kind!r}; choose from {', '.join(TARGET_KINDS)}.")
        if self.kind in ("cosine", "logit") and self.extra_texts:
            raise MethodError(f"the {self.kind} target uses no other texts, but {len(self.extra_texts)} were given; "
                              "drop them, or choose the contrast or probability target.")
        if self.kind == "contrast" and len(self.extra_texts) != 1:
            raise MethodError(f"the contrast target needs exactly one other text to contrast with, got "
                              f"{len(self.extra_texts)} (e.g. others=['a dog']).")
        # probability without other prompts: a per-pair score for a family whose probability is a sigmoid
        # (SigLIP); a family whose probability is a softmax over a prompt set refuses it (Family.check_target)

    @property
    def name(self) -> str:
        return self.kind if not self.extra_texts else f"{self.kind}[{' | '.join(self.extra_texts)}]"

    def scores(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        extra_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores ``(B, K)``; ``extra_embeds`` ``(M, D)`` are the embeddings of ``extra_texts``."""
        cosine = cosine_matrix(image_embeds, text_embeds)  # (B, K)
        if self.kind == "cosine":
            return cosine
        if self.kind == "logit":
            return logit_scale * cosine
        if extra_embeds is None:
            raise MethodError(f"the {self.kind} target needs the embeddings of its extra texts.")
        extra = cosine_matrix(image_embeds, extra_embeds)  # (B, M)
        if self.kind == "contrast":
            return cosine - extra  # (B, K) - (B, 1)
        # probability of text k within the set {t_k} U extra prompts, one softmax per explained text
        logits = logit_scale * cosine  # (B, K)
        extra_logits = logit_scale * extra  # (B, M)
        normaliser = torch.logsumexp(extra_logits, dim=-1, keepdim=True)  # (B, 1)
        return torch.exp(logits - torch.logaddexp(logits, normaliser))


TARGET_KINDS = ("cosine", "logit", "probability", "contrast")


def make_target(kind: str | Target = "cosine", others: Sequence[str] = ()) -> Target:
    """A ``Target`` from a name and the other texts it needs (``probability``: the prompt set; ``contrast``: t')."""
    if isinstance(kind, Target):
        return kind
    return Target(kind=kind, extra_texts=tuple(others))
