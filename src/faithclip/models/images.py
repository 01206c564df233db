"""Reading images of any common kind into 8-bit RGB, with a defined result or a clear error.

Conversions (each a documented, tested choice):
- RGBA / LA / palette with transparency: composited onto WHITE, then RGB (as transformers' CLIP processor does);
- greyscale ``L`` / bilevel ``1`` / CMYK / YCbCr / palette: PIL's own conversion to RGB;
- 16-bit greyscale (``I;16*``) and 32-bit integer ``I`` holding 16-bit data: divided by 257 (65535 -> 255);
- 32-bit float ``F``: values in [0, 1] are scaled by 255, otherwise clipped to [0, 255];
- animated images (GIF, APNG, multi-page TIFF): the FIRST frame, with a warning;
- unreadable, truncated or empty files: ``ImageError`` naming the file and what to do.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from faithclip.errors import ImageError

logger = logging.getLogger(__name__)


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, converted to RGB."""
    return to_rgb(decode_image(path), name=str(path))


def decode_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file in its OWN mode (the first frame of an animation, with a warning).

    Preprocessing that converts to RGB after resizing (OpenAI's pipeline, see
    ``faithclip.models.preprocess``) needs the image before any conversion.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}. Pass the path of an existing image file.")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            frame = first_frame(image, name=str(path))
            frame.load()
            return frame.copy()
    except UnidentifiedImageError as error:
        raise ImageError(f"{path} is not an image PIL can read ({error}). Pass a JPEG, PNG, GIF, TIFF, BMP or WebP file.") from error
    except (OSError, SyntaxError) as error:
        raise ImageError(f"{path} could not be decoded ({error}); the file is probably truncated or corrupt. Re-export it and try again.") from error


def first_frame(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` positioned on its first frame; warns when there are more (only the first is explained)."""
    if getattr(image, "n_frames", 1) > 1:
        warnings.warn(f"{name} has {image.n_frames} frames; explaining the first one only.", stacklevel=3)
        image.seek(0)
    return image


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB following the rules in this module's docstring."""
    image = first_frame(image, name)
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name} is empty ({image.width}x{image.height} pixels).")
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 65535 or values.min(initial=0) < 0:
            raise ImageError(f"{name} holds 32-bit integers outside 0..65535; convert it to 8 or 16 bits first.")
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageError(f"{name} holds NaN or infinite values; clean it before explaining.")
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageError(f"{name} has mode {mode!r}, which cannot be converted to RGB ({error}).") from error
