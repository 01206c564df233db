"""Heat-map overlays as PNG bytes (PIL + matplotlib's colour maps; no OpenCV)."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def colorize(normalized_map: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(normalized_map, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay_array(image: Image.Image | np.ndarray, normalized_map: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map (any grid, resized bilinearly to the image) over an RGB image: ``(H, W, 3)`` uint8."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    height, width = rgb.shape[:2]
    grid = normalized_map.detach().double()
    if grid.dim() == 1:
        raise ValueError("overlays are for image-side maps")
    resized = F.interpolate(grid[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    colours = colorize(resized.clamp(0, 1).numpy()).astype(np.float64)
    return np.clip(rgb * (1 - alpha) + colours * alpha, 0, 255).astype(np.uint8)


def overlay_png(image: Image.Image | np.ndarray, normalized_map: torch.Tensor, alpha: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(overlay_array(image, normalized_map, alpha)).save(buffer, format="PNG")
    return buffer.getvalue()
