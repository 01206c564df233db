"""The word-level tokenizer: CLIP-like framing, standard files, and end-token pooling in CLIPTextModel."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
)

from faithclip.shapes.tokenizer import (
    END,
    PAD,
    START,
    UNK,
    build_word_tokenizer,
    save_word_tokenizer,
)

WORDS = ["red", "green", "blue", "circle", "square", "ring"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_word_tokenizer(directory, WORDS, max_length=16)
    return directory


def test_round_trip_and_framing():
    tokenizer = build_word_tokenizer(WORDS)
    encoding = tokenizer.encode("A photo of a Red circle")
    assert encoding.tokens == [START, "a", "photo", "of", "a", "red", "circle", END]
    assert tokenizer.decode(encoding.ids) == "a photo of a red circle"
    assert tokenizer.encode("a purple circle").tokens[2] == UNK


def test_special_token_ids_and_end_is_not_two():
    vocab = build_word_tokenizer(WORDS).get_vocab()
    assert (vocab[PAD], vocab[START], vocab[UNK], vocab[END]) == (0, 1, 2, 3)
    assert vocab[END] != 2  # id 2 would switch CLIPTextModel to its legacy argmax pooling


def test_auto_tokenizer_loads_saved_directory_and_pads(saved):
    for tokenizer in (
        AutoTokenizer.from_pretrained(saved),
        PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"), pad_token=PAD),
    ):
        batch = tokenizer(["a red circle", "a blue ring and a green square"], padding="max_length", max_length=16)
        first = batch["input_ids"][0]
        assert first[:5] == [1, tokenizer.convert_tokens_to_ids("a"), tokenizer.convert_tokens_to_ids("red"),
                             tokenizer.convert_tokens_to_ids("circle"), 3]  # fmt: skip
        assert first[5:] == [0] * 11 and batch["attention_mask"][0] == [1] * 5 + [0] * 11
        assert tokenizer.decode(first, skip_special_tokens=True) == "a red circle"
    loaded = AutoTokenizer.from_pretrained(saved)
    assert loaded.model_max_length == 16
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (START, END, PAD, UNK)
    assert json.loads((saved / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"


def test_truncation_keeps_the_end_token(saved):
    tokenizer = AutoTokenizer.from_pretrained(saved)
    ids = tokenizer(" ".join(["red"] * 40), truncation=True)["input_ids"]
    assert len(ids) == 16 and ids[0] == 1 and ids[-1] == 3


def test_clip_text_model_pools_the_end_position_despite_padding(saved):
    tokenizer = AutoTokenizer.from_pretrained(saved)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    batch = tokenizer(["a red circle", "a blue ring and a green square"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    end_positions = [4, 8]  # <start> + words, independently counted
    expected = out.last_hidden_state[torch.arange(2), end_positions]
    torch.testing.assert_close(out.pooler_output, expected)
    assert batch["input_ids"][torch.arange(2), end_positions].tolist() == [3, 3]
