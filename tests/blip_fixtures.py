"""BLIP retrieval models with random weights and a small BERT tokenizer, for tests and the audit run.

``blip_config(size="full")`` has the published sizes of Salesforce/blip-itm-base-coco (vision: hidden 768,
12 layers, 12 heads, patch 16, image 384; text: BERT-base 768 / 12 layers / 12 heads, vocabulary 30524,
512 positions; ITC width 256); ``"tiny"`` a small variant. The tokenizer is a ``BertTokenizer`` over a
vocabulary file written here ([PAD] 0, [UNK], [CLS], [SEP], [MASK], then words), so the configs set
``pad_token_id``/``sep_token_id`` to its ids (the published config's 0/102 are BERT's).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "a",
    "an",
    "the",
    "photo",
    "of",
    "in",
    "on",
    "dog",
    "cat",
    "car",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "cyan",
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "picture",
    "small",
    "big",
    ".",
]
SIZES = {
    "full": dict(
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            patch_size=16,
            image_size=384,
        ),
        text=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            vocab_size=30524,
            max_position_embeddings=512,
        ),
        itc=256,
    ),
    "tiny": dict(
        vision=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            patch_size=8,
            image_size=32,
        ),
        text=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            vocab_size=len(SPECIALS) + len(WORDS),
            max_position_embeddings=40,
        ),
        itc=16,
    ),
}


def blip_config(size: str = "tiny", depth: int | None = None, **vision) -> transformers.BlipConfig:
    """``depth`` (optional) sets both towers' number of layers."""
    sizes = SIZES[size]
    text = dict(sizes["text"], pad_token_id=0, sep_token_id=SPECIALS.index("[SEP]"), bos_token_id=2)
    if depth is not None:
        text["num_hidden_layers"] = vision["num_hidden_layers"] = depth
    return transformers.BlipConfig(
        vision_config={**sizes["vision"], **vision}, text_config=text, image_text_hidden_size=sizes["itc"]
    )


def random_blip(
    seed: int = 0, dtype: torch.dtype = torch.float32, size: str = "tiny", depth: int | None = None, **vision
):
    """A random BLIP retrieval model whose LayerNorms and biases are randomised too (nothing is an identity)."""
    torch.manual_seed(seed)
    model = transformers.BlipForImageTextRetrieval(blip_config(size, depth, **vision))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
            elif "embedding" in name or "class_embedding" in name:
                parameter.normal_(0, 0.5)
            elif parameter.dim() >= 2:
                parameter.normal_(0, 1.0 / parameter.shape[-1] ** 0.5)
    return model.to(dtype).eval()


def blip_tokenizer(directory: str | Path) -> transformers.BertTokenizer:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    return transformers.BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True)


def save_random_blip(directory: str | Path, seed: int = 0, size: str = "tiny", **vision) -> Path:
    """``save_pretrained`` of a random BLIP, its tokenizer and a BlipImageProcessor config."""
    directory = Path(directory)
    model = random_blip(seed, size=size, **vision)
    model.save_pretrained(directory)
    blip_tokenizer(directory).save_pretrained(directory)
    image_size = model.config.vision_config.image_size
    transformers.BlipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory


def load_float64(directory: str | Path):
    """The saved BLIP loaded by faithclip, its weights then cast to float64 (the oracles' precision)."""
    import faithclip

    handle = faithclip.load(str(directory), dtype=torch.float32)
    handle.model.to(torch.float64)
    return handle


def pixels_for(handle, count: int = 2, seed: int = 0) -> torch.Tensor:
    """``count`` seeded random images at the model's input size and dtype."""
    size = handle.image_size
    return torch.randn(count, 3, size, size, dtype=handle.dtype, generator=torch.Generator().manual_seed(seed))
