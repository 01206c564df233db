"""Reading images of any common kind into 8-bit RGB, with a defined result or a clear error.

Conversions (each a documented, tested choice):
- RGBA / LA / palette with transparency: composited onto WHITE, then RGB (as transformers' CLIP processor does);
- greyscale ``L`` / bilevel ``1`` / CMYK / YCbCr / palette: PIL's own conversion to RGB;
- 16-bit greyscale (``I;16*``) and 32-bit integer ``I`` holding 16-bit data: divided by 257 (65535 -> 255);
- 32-bit float ``F``: values in [0, 1] are scaled by 255, otherwise clipped to [0, 255];
- animated images (GIF, APNG, multi-page TIFF): the FIRST frame, with a warning;
- unreadable, truncated or empty files, directories, FIFOs, symlink loops, and images of more pixels than
  ``max_pixels()`` (Pillow's limit, ``--max-pixels``): ``ImageError`` naming the file and what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
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
    ``faithclip.models.preprocess``) needs the image before any conversion. An image of more pixels than
    ``max_pixels()`` is refused before it is decoded (a guard against decompression bombs).
    """
    path = check_image_path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit and refuses above twice it; faithclip refuses above it, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            check_pixels(image.width, image.height, str(path))
            image.load()  # decode now, so a truncated file fails here and not later
            frame = first_frame(image, name=str(path))
            frame.load()
            return frame.copy()
    except Image.DecompressionBombError as error:
        raise _bomb(path, error) from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"{path} is not an image PIL can read ({error}). Pass a JPEG, PNG, GIF, TIFF, BMP or WebP file."
        ) from error
    except OSError as error:
        if error.errno is not None:  # the file could not be read (EIO, EACCES ...), not a decoding problem
            raise ImageError(f"cannot read {path}: {error.strerror or error}.") from error
        raise ImageError(
            f"{path} could not be decoded ({error}); the file is probably truncated or corrupt. Re-export it and try again."
        ) from error
    except (SyntaxError, ValueError) as error:
        raise ImageError(
            f"{path} could not be decoded ({error}); the file is probably truncated or corrupt. Re-export it and try again."
        ) from error


def _bomb(path: Path, error: Exception) -> ImageError:
    """The one line for an image Pillow refuses to open (twice over its limit)."""
    size = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(size.group(1)):,} pixels" if size else "more pixels than Pillow allows"
    return ImageError(f"{path} has {pixels}, more than {limit_words()}.")


def max_pixels() -> int | None:
    """The largest image faithclip decodes, in pixels: Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (its default,
    89,478,485, is about 9,500 x 9,500; ``None``: no limit). The command line's ``--max-pixels`` sets it."""
    return Image.MAX_IMAGE_PIXELS


def limit_words() -> str:
    return (
        f"the limit of {max_pixels():,} pixels (a guard against decompression bombs); to read it, raise the "
        "limit with --max-pixels N (in Python: PIL.Image.MAX_IMAGE_PIXELS = N)"
    )


def check_pixels(width: int, height: int, name: str = "image") -> None:
    """``ImageError`` when a ``width`` x ``height`` image is over ``max_pixels()``."""
    limit = max_pixels()
    if limit is not None and width * height > limit:
        raise ImageError(f"{name} is {width} x {height} = {width * height:,} pixels, more than {limit_words()}.")


def check_image_path(path: str | Path) -> Path:
    """``path`` if it names a regular file that can be opened; else one ``ImageError`` line that says what
    it names instead (nothing, a directory, a FIFO or device, a symlink loop, a file it may not read)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        dangling = " (a symlink to a missing file)" if path.is_symlink() else ""
        raise ImageError(f"image not found: {path}{dangling}. Pass the path of an existing image file.") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError(f"{path} is a symlink loop, not an image file; pass the image itself.") from None
        raise ImageError(f"cannot read {path}: {error.strerror or error}.") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path} is a directory, not an image file; pass the images in it (e.g. {path}/*.jpg).")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a special file"
        )
        raise ImageError(f"{path} is {kind}, not an image file; save the image to a file and pass that.")
    if not os.access(path, os.R_OK):
        raise ImageError(f"cannot read {path}: permission denied.")
    return path


def check_image_file(path: str | Path) -> Path:
    """``check_image_path``, then the size from the file's header (nothing decoded) against ``max_pixels()``:
    a command refuses an image that is too large before it loads a model or computes anything. A header
    PIL cannot read is left to ``decode_image``, which says what is wrong with the file."""
    path = check_image_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
    except Image.DecompressionBombError as error:  # twice over the limit: Pillow refuses to open it at all
        raise _bomb(path, error) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return path
    check_pixels(size[0], size[1], str(path))
    return path


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
