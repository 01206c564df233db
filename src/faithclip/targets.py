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

BLIP's image-text matching head defines two more (``ITM_KINDS``; only the BLIP family offers them, and its
``Family.score`` computes them): they are NOT functions of pooled embeddings. The ITM score runs BLIP's text
encoder with cross-attention over EVERY token of the image tower's last hidden state, and its 2-way head
reads the text [CLS] output:

    itm           softmax(itm_head(h_cls))[1], the match probability (the published BLIP demo's ITM score)
    itm_log_odds  itm_head(h_cls)[1] - itm_head(h_cls)[0] = log(p / (1 - p)), the same score before the
                  softmax saturates it (a probability near 1 moves little however much the image changes)

Such a target reads image tokens, not a pooled embedding (``Target.pooled`` is False): the image side's
"embedding" is the tower's whole last hidden state and the text side's "embedding" the token batch itself.
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
        if self.kind in NO_OTHER_TEXTS and self.extra_texts:
            raise MethodError(
                f"the {self.kind} target uses no other texts, but {len(self.extra_texts)} were given; "
                "drop them, or choose the contrast or probability target."
            )
        if self.kind == "contrast" and len(self.extra_texts) != 1:
            raise MethodError(
                f"the contrast target needs exactly one other text to contrast with, got "
                f"{len(self.extra_texts)} (e.g. others=['a dog'])."
            )
        # probability without other prompts: a per-pair score for a family whose probability is a sigmoid
        # (SigLIP); a family whose probability is a softmax over a prompt set refuses it (Family.check_target)

    @property
    def pooled(self) -> bool:
        """Whether the score reads the image only through its pooled embedding (the class token's path, for
        CLIP-style towers). False for BLIP's ITM scores, which cross-attend to every image token: methods whose
        formula assumes the pooled path refuse them (``MethodSpec.assumes_pooled_score``)."""
        return self.kind not in ITM_KINDS

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
        if not self.pooled:
            raise MethodError(
                f"the {self.kind} target is BLIP's image-text matching score; only a BLIP model "
                "computes it (Family.score), not a pair of embeddings."
            )
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


ITM_KINDS = ("itm", "itm_log_odds")
TARGET_KINDS = ("cosine", "logit", "probability", "contrast") + ITM_KINDS
#: the targets that use no other texts (``--other`` / ``others=`` is refused with them)
NO_OTHER_TEXTS = ("cosine", "logit") + ITM_KINDS


def itm_score(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """BLIP's ITM target from the head's two logits ``(..., 2)`` (index 1: "match"), in at least float32:
    ``itm`` the match probability softmax(logits)[1], ``itm_log_odds`` logits[1] - logits[0]."""
    logits = logits.to(accumulation_dtype(logits.dtype))
    if kind == "itm":
        return logits.softmax(dim=-1)[..., 1]
    if kind == "itm_log_odds":
        return logits[..., 1] - logits[..., 0]
    raise MethodError(f"{kind!r} is not an ITM target; choose from {', '.join(ITM_KINDS)}.")


def make_target(kind: str | Target = "cosine", others: Sequence[str] = ()) -> Target:
    """A ``Target`` from a name and the other texts it needs (``probability``: the prompt set; ``contrast``: t')."""
    if isinstance(kind, Target):
        return kind
    return Target(kind=kind, extra_texts=tuple(others))
