"""Inputs of the audit: shapes scenes rendered larger than the model's input, or image files.

The shapes model sees 64 px. The official pipeline's keep-size input is the photo at (nearly) its own
size, typically about twice the model's resolution and not square (ImageNet photos ~500x375 against a
224 crop). The fair analogue chosen here: the same scene world rendered at ``raw_size`` (default 128 px,
i.e. 2x), so the model's standard preprocessing resizes it to 64 px while the official pipeline explains
a 16x16 grid with position embeddings interpolated from 8x8. ``aspect`` < 1 additionally crops the
render to ``raw_size x round(raw_size * aspect)`` (width x height), so that, as with photos, the model's
centre crop loses the sides the official input keeps (objects partly outside the crop stay labelled:
that is the official setting too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from faithclip.audit.departure import AuditData
from faithclip.models.images import open_image
from faithclip.shapes.world import ShapesWorld


def shapes_data(
    n: int, *, raw_size: int = 128, seed: int = 0, kind: str = "single", aspect: float = 1.0, world_seed: int = 0
) -> AuditData:
    """``n`` scenes (``kind`` ``single``: one object, balanced classes; ``multi``: 2-4 objects, one named)."""
    world = ShapesWorld(image_size=raw_size, seed=world_seed)
    batch = world.single_object_set(n, seed=seed) if kind == "single" else world.multi_object_set(n, seed=seed)
    images, masks = batch.images, batch.target_masks  # (N, S, S, 3), (N, S, S)
    if aspect != 1.0:
        height = int(round(raw_size * aspect))
        top = (raw_size - height) // 2
        images, masks = images[:, top : top + height], masks[:, top : top + height]
    return AuditData(
        images=[Image.fromarray(np.ascontiguousarray(image), mode="RGB") for image in images],
        prompts=list(world.prompts),
        labels=[int(label) for label in batch.target_labels],
        masks=[np.ascontiguousarray(mask) for mask in masks],
        name=f"shapes {kind}-object scenes rendered at {raw_size}x{images.shape[1]} (seed {seed})",
    )


def folder_data(paths: Sequence[str | Path], prompts: Sequence[str], name: str = "") -> AuditData:
    """Image files with a prompt set and no labels (the explained prompt is the model's own top-1)."""
    return AuditData(
        images=[open_image(p) for p in paths], prompts=list(prompts), name=name or f"{len(paths)} image files"
    )


def read_class_names(path: str | Path) -> list[str]:
    """The class names of a file, one a line, stripped; blank lines and names starting with ``_`` (a
    background or ignore class, as in VOC's list) skipped. An unreadable file raises ``OSError``."""
    lines = Path(path).read_text().splitlines()
    return [name.strip() for name in lines if name.strip() and not name.startswith("_")]


__all__ = ["folder_data", "read_class_names", "shapes_data"]
