"""CLIP's standard image preprocessing, written with PIL, numpy and torch.

The pipeline is the one every CLIP checkpoint was trained with and the one transformers'
``CLIPImageProcessor`` applies:

1. convert to RGB (transparency composited onto white, as transformers does; see ``faithclip.models.images``);
2. resize so the SHORTEST edge equals ``size`` (the longer edge becomes ``int(size * long / short)``),
   bicubic (PIL's ``Image.BICUBIC``, on 8-bit pixels);
3. centre crop to ``crop_height x crop_width`` (offset ``(dim - crop) // 2``);
4. scale to [0, 1] and normalise with the CLIP mean and standard deviation.

The result is the input the model predicts from. Principle P1 says an explanation must be computed on
exactly this tensor, so every method receives it and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """Shortest-edge resize, centre crop, normalise. ``__call__`` maps an RGB PIL image to ``(3, H, W)``."""

    size: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = Image.BICUBIC

    @classmethod
    def from_json(cls, path: str | Path) -> "ClipPreprocess":
        """Read a transformers ``preprocessor_config.json`` (CLIPImageProcessor fields)."""
        config = json.loads(Path(path).read_text())
        return cls.from_dict(config)

    @classmethod
    def from_dict(cls, config: dict) -> "ClipPreprocess":
        size = config.get("size", 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge", size.get("height", 224))
        crop = config.get("crop_size", size)
        if isinstance(crop, dict):
            crop_h, crop_w = crop.get("height", size), crop.get("width", size)
        else:
            crop_h = crop_w = int(crop)
        return cls(
            size=int(size),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(config.get("image_std", OPENAI_CLIP_STD)),
            resample=int(config.get("resample", Image.BICUBIC)),
        )

    def to_dict(self) -> dict:
        """The transformers ``preprocessor_config.json`` form of these settings."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.size},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shortest-edge resize, rounded down as transformers does."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop in the resized image's coordinates."""
        rw, rh = self.resized_size(width, height)
        if rw < self.crop_width or rh < self.crop_height:
            raise ValueError(f"resized image {rw}x{rh} is smaller than the crop {self.crop_width}x{self.crop_height}")
        left, top = (rw - self.crop_width) // 2, (rh - self.crop_height) // 2
        return left, top, left + self.crop_width, top + self.crop_height

    def crop_image(self, image: Image.Image) -> Image.Image:
        """Resize and centre-crop an RGB image: the pixels the model sees, before normalisation."""
        width, height = image.size
        resized = image.resize(self.resized_size(width, height), resample=self.resample)
        return resized.crop(self.crop_box(width, height))

    def normalize(self, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8-range RGB ``(H, W, 3)`` (or ``(N, H, W, 3)``) -> normalised ``(3, H, W)`` (or ``(N, 3, H, W)``)."""
        pixels = torch.tensor(np.asarray(rgb), dtype=torch.float32) / 255.0  # (..., H, W, 3), copied
        pixels = pixels.movedim(-1, -3)  # (..., 3, H, W)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (pixels - mean) / std

    def denormalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize``: ``(..., 3, H, W)`` -> values in [0, 255] (float), channels first."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
        return (pixels * std + mean) * 255.0

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised pixels ``(3, crop_height, crop_width)``."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}; use faithclip.models.images.to_rgb")
        return self.normalize(np.asarray(self.crop_image(image), dtype=np.uint8))
