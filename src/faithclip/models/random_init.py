"""A CLIP of a real architecture with RANDOM weights, from a transformers config directory.

No pretrained weights can be downloaded where faithclip is developed; shape, speed, memory and drift
checks run on the true architecture (e.g. OpenAI's ViT-B/32 config, or B/16 with ``patch_size=16``)
with random weights and the real tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from faithclip.errors import ModelError
from faithclip.models.clip import ModelHandle

# Shipped with the package (data files only; provenance and MIT licence in reference/README.md).
SHIPPED = Path(__file__).parent / "reference"
ARCHITECTURE_DIRS = {"B/32": SHIPPED / "vit-b-32", "B/16": SHIPPED / "vit-b-16", "L/14": SHIPPED / "vit-l-14"}
TOKENIZER_DIR = SHIPPED / "tokenizer"


def find_reference(directory: str | Path | None, architecture: str = "B/32") -> Path:
    """The directory holding a transformers CLIP ``config.json``: the one given, else the shipped config of
    ``architecture`` (ViT-B/32, B/16 or L/14)."""
    candidate = Path(directory) if directory else ARCHITECTURE_DIRS[architecture]
    if (candidate / "config.json").is_file():
        return candidate
    raise ModelError(
        f"no CLIP config.json in {candidate}; pass a directory with config.json (and tokenizer "
        "files), or leave the option out to use the shipped ViT-B/32, B/16 and L/14 configs."
    )


def random_clip(
    directory: str | Path | None = None,
    *,
    seed: int = 0,
    patch_size: int | None = None,
    name: str | None = None,
    architecture: str = "B/32",
) -> ModelHandle:
    """The directory's CLIP architecture (default: the shipped config of ``architecture``) with weights drawn
    by transformers' initialiser (under ``torch.manual_seed(seed)``; the caller's random state is left as it
    was), eager attention, the directory's tokenizer (the shipped OpenAI CLIP tokenizer when the directory has
    none) and preprocessing."""
    import transformers

    from faithclip.models.loading import from_hf
    from faithclip.models.preprocess import ImagePreprocess

    reference = find_reference(directory, architecture)
    config = transformers.CLIPConfig.from_pretrained(reference)
    if patch_size is not None:
        config.vision_config.patch_size = patch_size
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):  # seeded without reseeding the caller's stream
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config).eval()
    model.set_attn_implementation("eager")
    has_tokenizer = any((reference / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(reference if has_tokenizer else TOKENIZER_DIR)
    except (OSError, ValueError):
        tokenizer = None
    processor = reference / "preprocessor_config.json"
    size = int(config.vision_config.image_size)
    preprocess = (
        ImagePreprocess.from_json(processor)
        if processor.is_file()
        else ImagePreprocess(size=size, crop_height=size, crop_width=size)
    )
    if name is None:
        patch = config.vision_config.patch_size
        name = f"{reference.name} architecture, patch {patch} (random weights, seed {seed})"
    return from_hf(model, tokenizer, preprocess=preprocess, name=name)


def random_weights_clip(directory: str | Path | None, seed: int = 0) -> ModelHandle:
    """The directory's CLIP architecture (default: the shipped ViT-B/32 config) with random weights drawn with
    ``seed``, named after the directory and the seed (the model ``faithclip audit --random-weights`` audits)."""
    name = Path(directory or find_reference(None)).name
    return random_clip(directory, seed=seed, name=f"{name} (random weights, seed {seed})")


def random_b32(directory: str | Path | None = None, seed: int = 0, patch_size: int = 32) -> ModelHandle:
    """The real ViT-B/32 (or B/16 with ``patch_size=16``) architecture with random weights."""
    return random_clip(
        directory,
        seed=seed,
        patch_size=patch_size,
        architecture="B/16" if patch_size == 16 else "B/32",
        name=f"ViT-B/{patch_size} architecture (random weights)",
    )
