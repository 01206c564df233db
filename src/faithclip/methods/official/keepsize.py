"""The official Grad-ECLIP explanation input: the whole image at (nearly) its own size.

From github.com/Cyang-Zhao/Grad-Eclip ``generate_emap.py``:

1. ``__main__``: if the short side exceeds 640 px, ``scale = min(w, h) / 640`` and the image is resized
   to ``(int(w / scale), int(h / scale))`` with PIL's default filter (``img.resize((ws, hs))``);
2. ``imgprocess_keepsize``: resized (bicubic) to ``nw = int(w / p + 0.5) * p``, ``nh = int(h / p + 0.5) * p``
   for patch size ``p``, NO centre crop; then scaled to [0, 1] and normalised with the CLIP mean/std.

The model, meanwhile, predicts from its standard shortest-edge resize + centre crop
(``faithclip.models.preprocess.ImagePreprocess``), so the two inputs differ in size, aspect and content.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from faithclip.models.preprocess import ImagePreprocess

OFFICIAL_SHORT_SIDE_CAP = 640


def cap_short_side(image: Image.Image, cap: int | None = OFFICIAL_SHORT_SIDE_CAP) -> Image.Image:
    """The official evaluation loop's cap: shrink so the short side is ``cap`` when it is longer."""
    w, h = image.size
    if cap is None or min(w, h) <= cap:
        return image
    scale = min(w, h) / cap
    return image.resize((int(w / scale), int(h / scale)))  # PIL's default filter, as the official call


def keep_size_size(width: int, height: int, patch: int) -> tuple[int, int]:
    """``(nw, nh)``: each side rounded to the nearest multiple of the patch size (``int(x / p + 0.5) * p``)."""
    return int(width / patch + 0.5) * patch, int(height / patch + 0.5) * patch


def keep_size_pixels(
    image: Image.Image, patch: int, preprocess: ImagePreprocess, cap: int | None = OFFICIAL_SHORT_SIDE_CAP
) -> torch.Tensor:
    """Normalised pixels ``(3, nh, nw)`` of the official explanation input for an RGB PIL image."""
    image = cap_short_side(image.convert("RGB"), cap)
    size = keep_size_size(*image.size, patch)
    if min(size) == 0:
        raise ValueError(f"image {image.size} is smaller than half a patch ({patch} px); nothing to explain")
    resized = image.resize(size, resample=Image.BICUBIC)
    return preprocess.normalize(np.asarray(resized, dtype=np.uint8))


__all__ = ["cap_short_side", "keep_size_size", "keep_size_pixels", "OFFICIAL_SHORT_SIDE_CAP"]
