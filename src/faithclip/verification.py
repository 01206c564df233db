"""Inputs for ``faithclip verify``: the user's, or sensible defaults per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from faithclip.errors import ModelError
from faithclip.models.clip import ClipHandle

REFERENCE_DIRS = (Path("../shared/reference/openai-clip-vit-base-patch32"),)
VOC_TEXTS = ("a photo of a bus", "a photo of a person", "a photo of a chair")


def find_reference(directory: str | Path | None) -> Path:
    """The directory holding the OpenAI ViT-B/32 transformers config and tokenizer."""
    candidates = [Path(directory)] if directory else list(REFERENCE_DIRS)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelError("no ViT-B/32 reference config found; pass --reference DIR (config.json + tokenizer files).")


def random_b32(directory: str | Path | None = None, seed: int = 0, patch_size: int = 32) -> ClipHandle:
    """The real ViT-B/32 (or B/16 with ``patch_size=16``) architecture with random weights and the real tokenizer."""
    import transformers

    from faithclip.models.loading import from_hf
    from faithclip.models.preprocess import ClipPreprocess

    reference = find_reference(directory)
    config = transformers.CLIPConfig.from_pretrained(reference)
    config.vision_config.patch_size = patch_size
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    model.set_attn_implementation("eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(reference)
    preprocess = ClipPreprocess.from_json(reference / "preprocessor_config.json")
    return from_hf(model, tokenizer, preprocess=preprocess, name=f"ViT-B/{patch_size} architecture (random weights)")


def default_inputs(model: ClipHandle, images: list[str], texts: list[str] | None) -> tuple[list[Any], list[str]]:
    """The user's images and texts, or: shapes-world scenes and prompts for a shapes model; VOC photos otherwise."""
    if images:
        return [model.rgb(p) for p in images], list(texts or VOC_TEXTS)
    if model.name == "shapes-clip" or "shapes" in model.name:
        from faithclip.data.shapes import ShapesWorld

        world = ShapesWorld(image_size=model.image_size)
        scenes = world.multi_object_set(4, seed=2024).scenes()
        return [s.image for s in scenes], list(texts or [s.caption for s in scenes][:2])
    voc = Path("../shared/reference/voc2011-samples/JPEGImages")
    if voc.is_dir():
        return [model.rgb(p) for p in sorted(voc.glob("*.jpg"))], list(texts or VOC_TEXTS)
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(3, model.image_size, model.image_size, generator=generator)], list(texts or ["a photo"])
