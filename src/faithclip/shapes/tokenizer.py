"""A word-level tokenizer for the shapes world, saved in the standard ``tokenizer.json`` format.

Built with the ``tokenizers`` library (WordLevel model, lower-case normaliser, whitespace
pre-tokenizer) with a template post-processor, so that ``"a red circle"`` encodes as
``<start> a red circle <end>``, like CLIP's BPE tokenizer. Saved directories load with plain
``transformers.AutoTokenizer.from_pretrained(dir)``.

Special token ids are fixed: ``<pad>`` 0, ``<start>`` 1, ``<unk>`` 2, ``<end>`` 3. The end id is
deliberately not 2: ``CLIPTextModel`` pools the first position whose id equals
``text_config.eos_token_id``, except when that id is 2, where it falls back to the legacy rule
"position of the largest id", which would pool a word instead of the end token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, START, UNK, END = "<pad>", "<start>", "<unk>", "<end>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, START, UNK, END)  # ids 0, 1, 2, 3
FILLER_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "picture", "image", "of", "and", "with", "shape", "object", "scene",
)  # fmt: skip
DEFAULT_MAX_LENGTH = 16


def build_word_tokenizer(words: Iterable[str]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` over the special tokens, ``FILLER_WORDS`` and ``words`` (deduplicated)."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *FILLER_WORDS, *(w.lower() for w in words)):
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: marks them special
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}",
        pair=f"{START} $A {END} $B {END}",
        special_tokens=[(START, vocab[START]), (END, vocab[END])],
    )
    return tokenizer


def as_transformers_tokenizer(tokenizer: Tokenizer, max_length: int = DEFAULT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Wrap for ``transformers``: pads with ``<pad>`` on the right, truncates to ``max_length``."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=START,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
    )


def save_word_tokenizer(
    directory: str | Path, words: Iterable[str], max_length: int = DEFAULT_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Build the tokenizer for ``words`` and write ``tokenizer.json`` plus its config into ``directory``."""
    wrapped = as_transformers_tokenizer(build_word_tokenizer(words), max_length)
    wrapped.save_pretrained(str(directory))
    return wrapped
