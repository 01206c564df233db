"""Inputs for ``faithclip verify``: the user's, or sensible defaults per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithclip.models.clip import ModelHandle

VOC_TEXTS = ("a photo of a bus", "a photo of a person", "a photo of a chair")


def default_inputs(model: ModelHandle, images: list[str], texts: list[str] | None) -> tuple[list[Any], list[str]]:
    """The user's images and texts, or: shapes-world scenes and prompts for a shapes model; VOC photos otherwise."""
    if images:
        return [model.rgb(p) for p in images], list(texts or VOC_TEXTS)
    if model.trained_on_shapes:
        from faithclip.shapes.world import ShapesWorld

        world = ShapesWorld(image_size=model.image_size)
        scenes = world.multi_object_set(4, seed=2024).scenes()
        return [s.image for s in scenes], list(texts or [s.caption for s in scenes][:2])
    voc = Path("../shared/reference/voc2011-samples/JPEGImages")
    if voc.is_dir():
        return [model.rgb(p) for p in sorted(voc.glob("*.jpg"))], list(texts or VOC_TEXTS)
    # No photos at hand (a plain install): shapes-world scenes at a photo-like, non-square size, so that
    # the model's own resize and crop run as they would on a photo.
    from faithclip.shapes.world import ShapesWorld

    scenes = ShapesWorld(image_size=model.image_size).multi_object_set(3, seed=2024).scenes()
    size = (model.image_size * 4 // 3, model.image_size)
    return [s.image.resize(size) for s in scenes], list(texts or VOC_TEXTS)
