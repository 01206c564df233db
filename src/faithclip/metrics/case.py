"""What a metric receives for one (image, method) pair, and what it returns.

Every tensor is in the coordinates of the SCORED image: the model's resized and centre-cropped input
``(H, W)``. The map is the method's raw patch-grid map ``(gh, gw)`` for the labelled class; metrics that
need pixels upsample it themselves (bilinear, ``align_corners=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from faithclip.methods.context import Context
from faithclip.models.clip import ModelHandle


@dataclass
class MetricCase:
    """One image, its label, the map one method gave for that label, and ways to call the model.

    ``score_ctx`` is an image-side ``Context`` over the image and ALL class prompts of the data set
    (the family's default target), so ``score_ctx.score_images(pixels)`` gives ``(N, K)`` scores of perturbed images.
    ``explain(handle)`` recomputes the same method's map for the same image and label on another model
    (used by the randomisation test).
    """

    score_ctx: Context
    rgb: torch.Tensor  # (3, H, W) float in [0, 255]: the scored crop before normalisation
    patch_map: torch.Tensor  # (gh, gw) raw map of the labelled class
    label: int  # index of the labelled class among the prompts
    seed: int
    mask: torch.Tensor | None = None  # (H, W) bool, the labelled object
    ignore: torch.Tensor | None = None  # (H, W) bool, pixels that count neither as object nor as background
    explain: Callable[[ModelHandle], torch.Tensor] | None = None

    @property
    def handle(self) -> ModelHandle:
        return self.score_ctx.handle

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.rgb.shape[-2:])

    def to_pixels(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` values in [0, 255] -> normalised model input, as ``ImagePreprocess.normalize``."""
        return normalize_rgb(rgb, self.handle.preprocess.mean, self.handle.preprocess.std)

    def class_logits(self, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``(N, K)`` class logits of normalised images against all classes (``Family.class_logits``;
        CLIP: the zero-shot ``exp(logit_scale) * cos``)."""
        scores = self.score_ctx.score_images(pixels, batch_size=batch_size)  # (N, K)
        return self.handle.family.class_logits(self.handle.model, scores)

    def unperturbed_logits(self) -> torch.Tensor:
        """``(1, K)`` logits of the scored image itself (computed once per context, then cached)."""
        return self.handle.family.class_logits(self.handle.model, self.score_ctx.model_scores())

    def label_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N,)`` float64: the label's probability from class logits (``Family.label_probability``; CLIP:
        the softmax over all prompts, SigLIP: the sigmoid of its logit)."""
        return self.handle.family.label_probability(logits, self.label)


@dataclass
class MetricValue:
    """Scalars (keys of the spec's ``outputs``) and optional curves ``name -> (x, y)`` for one pair."""

    values: dict[str, float]
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def normalize_rgb(rgb: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(..., 3, H, W)`` in [0, 255] -> ``(x / 255 - mean) / std`` in float32 (the preprocessing's own order)."""
    pixels = rgb.to(torch.float32) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32, device=rgb.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=rgb.device).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def pixel_map(patch_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map at the scored image's resolution: bilinear (``align_corners=False``) unless already that size."""
    values = patch_map.detach().to(torch.float64)
    if tuple(values.shape) == tuple(size):
        return values
    return F.interpolate(values[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]  # (H, W)
