"""``TextBatch``: texts as a model's text tower reads them. A leaf (it imports no faithclip module), so that
the family adapters (``models/families``) and the handle (``models/clip.py``) both build it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TextBatch:
    """Token ids ``(K, L)`` with their attention mask, end positions and (when known) token strings."""

    input_ids: torch.Tensor  # (K, L)
    attention_mask: torch.Tensor  # (K, L)
    eos_positions: torch.Tensor  # (K,) index of the pooled (end-of-text) token
    texts: list[str | None]
    tokens: list[list[str] | None]
    truncated: list[bool] = field(default_factory=list)
    embeds: torch.Tensor | None = None  # (K, E) text embeddings, when computed once and reused
    unknown: list[list[str]] = field(default_factory=list)  # per text: words the tokenizer read as its unknown token

    def unknown_note(self, k: int) -> str | None:
        """A warning for text ``k`` if the tokenizer did not know some of its words (``None``: it knew all)."""
        if not self.unknown or not self.unknown[k]:
            return None
        words = ", ".join(repr(word) for word in self.unknown[k])
        seen = " ".join((self.tokens[k] or [])[: int(self.eos_positions[k]) + 1])  # through the end token
        return (
            f"{words} {'is' if len(self.unknown[k]) == 1 else 'are'} not in the model's vocabulary and read as "
            f"the unknown token: the model scores {seen!r}, so every text differing only there gets the "
            "same map. Use words the model knows."
        )
