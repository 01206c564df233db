"""A CLIP of a real architecture with RANDOM weights, from a transformers config directory.

No pretrained weights can be downloaded where faithclip is developed; shape, speed, memory and drift
checks run on the true architecture (e.g. OpenAI's ViT-B/32 config, or B/16 with ``patch_size=16``)
with random weights and the real tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from faithclip.errors import ModelError
from faithclip.models.clip import ClipHandle

REFERENCE_DIRS = (Path("../shared/reference/openai-clip-vit-base-patch32"),)


def find_reference(directory: str | Path | None) -> Path:
    """The directory holding a transformers CLIP ``config.json`` (default: the OpenAI ViT-B/32 reference)."""
    candidates = [Path(directory)] if directory else list(REFERENCE_DIRS)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelError(f"no CLIP config found in {', '.join(map(str, candidates))}; "
                     "pass a directory with config.json (and tokenizer files).")


def random_clip(directory: str | Path | None = None, *, seed: int = 0, patch_size: int | None = None,
                name: str | None = None) -> ClipHandle:
    """The directory's CLIP architecture with weights drawn by transformers' initialiser (seeded), eager
    attention, the directory's tokenizer (if any) and preprocessing."""
    import transformers

    from faithclip.models.loading import from_hf
    from faithclip.models.preprocess import ClipPreprocess

    reference = find_reference(directory)
    config = transformers.CLIPConfig.from_pretrained(reference)
    if patch_size is not None:
        config.vision_config.patch_size = patch_size
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    model.set_attn_implementation("eager")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(reference)
    except (OSError, ValueError):
        tokenizer = None
    processor = reference / "preprocessor_config.json"
    size = int(config.vision_config.image_size)
    preprocess = (ClipPreprocess.from_json(processor) if processor.is_file()
                  else ClipPreprocess(size=size, crop_height=size, crop_width=size))
    if name is None:
        patch = config.vision_config.patch_size
        name = f"{reference.name} architecture, patch {patch} (random weights, seed {seed})"
    return from_hf(model, tokenizer, preprocess=preprocess, name=name)


def random_b32(directory: str | Path | None = None, seed: int = 0, patch_size: int = 32) -> ClipHandle:
    """The real ViT-B/32 (or B/16 with ``patch_size=16``) architecture with random weights."""
    return random_clip(directory, seed=seed, patch_size=patch_size,
                       name=f"ViT-B/{patch_size} architecture (random weights)")
