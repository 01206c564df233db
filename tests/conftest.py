"""Shared fixtures: tiny random CLIPs of several shapes, and the real ViT-B/32 architecture.

Nothing here downloads anything: models are built from configs with random weights; the real
tokenizer and config come from ../shared/reference (read-only).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Nothing may be fetched at test time: the hub is off for the whole suite.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import transformers

# The README's command runs the suite in parallel processes (pytest-xdist, ``-n auto``): each worker takes its
# share of the cores for torch's intra-op threads, so two workers on two cores do not fight over four threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from faithclip.models.loading import from_hf

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
B32_DIR = REFERENCE / "openai-clip-vit-base-patch32"
VOC_DIR = REFERENCE / "voc2011-samples"

BOS, EOS, PAD = 48, 49, 0

# Tests that read ../shared/reference (CI lays it beside the clone) skip with this reason elsewhere.
needs_reference = pytest.mark.skipif(
    not (B32_DIR.is_dir() and VOC_DIR.is_dir()), reason="../shared/reference is not available"
)


def tiny_config(
    heads: int = 4,
    layers: int = 2,
    width: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    text_heads: int | None = None,
    text_layers: int | None = None,
    context: int = 16,
) -> transformers.CLIPConfig:
    """A small CLIP config (vocab 50: start 48, end 49, pad 0)."""
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=50,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=text_layers or layers,
            num_attention_heads=text_heads or heads,
            max_position_embeddings=context,
            eos_token_id=EOS,
            bos_token_id=BOS,
            pad_token_id=PAD,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=16,
    )
    config._attn_implementation = "eager"
    return config


def random_clip(seed: int = 0, dtype: torch.dtype = torch.float32, **shape) -> transformers.CLIPModel:
    """A random CLIP whose LayerNorms and biases are randomised too (nothing is trivially an identity)."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(tiny_config(**shape))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.set_attn_implementation("eager")
    return model.to(dtype).eval()


def token_ids(lengths: list[int], context: int = 16, seed: int = 0) -> torch.Tensor:
    """Token rows ``[start, words..., end, pad...]`` with ``lengths`` words each, padded to the longest."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    rows = torch.full((len(lengths), width), PAD, dtype=torch.long)
    for row, length in enumerate(lengths):
        rows[row, 0] = BOS
        rows[row, 1 : 1 + length] = torch.randint(1, 40, (length,), generator=generator)
        rows[row, 1 + length] = EOS
    return rows


@pytest.fixture
def tiny():
    """A 4-head, 2-layer random CLIP on 32 px images with 8 px patches, wrapped."""
    return from_hf(random_clip())


@pytest.fixture(scope="session")
def b32_handle():
    """The real ViT-B/32 architecture with random weights and the real CLIP tokenizer."""
    if not B32_DIR.is_dir():
        pytest.skip("../shared/reference is not available")
    from faithclip.models.random_init import random_clip

    return random_clip(B32_DIR, seed=0, name="ViT-B/32 (random weights)")


def save_reference_checkpoint(directory: Path, layers: int) -> Path:
    """The real B/32 config and tokenizer with ``layers`` random layers per tower, saved as a transformers
    directory (what a user's checkpoint directory looks like)."""
    config = transformers.CLIPConfig.from_pretrained(B32_DIR)
    config.vision_config.num_hidden_layers = layers
    config.text_config.num_hidden_layers = layers
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(directory)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
    ):
        shutil.copy(B32_DIR / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def one_thread():
    """Two cores are shared: intra-op threads only thrash on tiny models. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
