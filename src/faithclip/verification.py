"""Inputs for ``faithclip verify``: the user's, or sensible defaults per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithclip.models.clip import ModelHandle

VOC_TEXTS = ("a photo of a bus", "a photo of a person", "a photo of a chair")


VOC_DIR = Path("../shared/reference/voc2011-samples/JPEGImages")  # relative to the working directory


def input_source(model: ModelHandle, images: list[str]) -> str:
    """Which inputs ``default_inputs`` takes: ``"given"``, ``"shapes"`` (a model trained on the shapes world),
    ``"voc"`` (``VOC_DIR`` exists below the working directory) or ``"resized shapes"`` (no photos at hand). The
    one place the choice is made; ``input_origin`` says it in words."""
    if images:
        return "given"
    if model.trained_on_shapes:
        return "shapes"
    return "voc" if VOC_DIR.is_dir() else "resized shapes"


def photo_like_size(model: ModelHandle) -> tuple[int, int]:
    """``(W, H)`` of the resized scenes taken when no photos are at hand: non-square, as a photo's."""
    return model.image_size * 4 // 3, model.image_size


def input_origin(model: ModelHandle, images: list[str]) -> str:
    """Which inputs ``default_inputs`` takes, in words (``faithclip verify`` says it: with no images given, the
    choice depends on the model and on whether ``VOC_DIR`` exists below the working directory)."""
    source = input_source(model, images)
    if source == "given":
        return f"the {len(images)} given image(s)"
    if source == "shapes":
        return "4 shapes-world scenes (the model was trained on them)"
    if source == "voc":
        return f"the VOC photos in {VOC_DIR.resolve()}"
    width, height = photo_like_size(model)
    return f"3 shapes-world scenes resized to a photo-like {width} x {height} (no photos in {VOC_DIR})"


def default_inputs(model: ModelHandle, images: list[str], texts: list[str] | None) -> tuple[list[Any], list[str]]:
    """The user's images and texts, or: shapes-world scenes and prompts for a shapes model; VOC photos otherwise
    (``VOC_DIR``, when it exists below the working directory). ``input_source`` chooses, ``input_origin`` says
    which."""
    source = input_source(model, images)
    if source == "given":
        return [model.rgb(p) for p in images], list(texts or VOC_TEXTS)
    if source == "voc":
        return [model.rgb(p) for p in sorted(VOC_DIR.glob("*.jpg"))], list(texts or VOC_TEXTS)
    from faithclip.shapes.world import ShapesWorld

    if source == "shapes":
        scenes = ShapesWorld(image_size=model.image_size).multi_object_set(4, seed=2024).scenes()
        return [s.image for s in scenes], list(texts or [s.caption for s in scenes][:2])
    # No photos at hand (a plain install): shapes-world scenes at a photo-like, non-square size, so that
    # the model's own resize and crop run as they would on a photo.
    scenes = ShapesWorld(image_size=model.image_size).multi_object_set(3, seed=2024).scenes()
    return [s.image.resize(photo_like_size(model)) for s in scenes], list(texts or VOC_TEXTS)
