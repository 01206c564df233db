"""CLIP's standard image preprocessing, written with PIL, numpy and torch.

Every CLIP checkpoint was trained with the same four steps; the pipelines that publish them differ in
three small rounding/ordering rules, and the model only predicts from the input ITS pipeline makes.
Principle P1 says an explanation must be computed on exactly that tensor, so each rule is a named field
of ``ImagePreprocess`` and every loader sets the rules of the pipeline its checkpoint ships with:

1. RGB conversion (``rgb_conversion``):
   - ``"composite_white_first"`` (transformers' ``convert_to_rgb``): transparency is composited onto
     WHITE before anything else (the rules of ``faithclip.models.images.to_rgb``);
   - ``"pil_convert_after_crop"`` (OpenAI CLIP's ``_transform``, open_clip's default transform): the
     image is resized and cropped in its OWN mode and only then ``Image.convert("RGB")``-ed, which drops
     the alpha channel. PIL resizes RGBA premultiplied, so fully transparent areas come out BLACK where
     transformers makes them white (an image already at the target size is not resampled and shows the
     colour stored under the alpha), and palette images are resized with nearest neighbour (PIL's rule
     for mode ``P``). The two rules agree on RGB and greyscale images.
2. Resize so the SHORTEST edge equals ``size``, bicubic (PIL's ``Image.BICUBIC`` on 8-bit pixels). The
   longer edge (``resize_rounding``) is ``floor(size * long / short)`` in both pipelines: transformers'
   ``get_resize_output_image_size`` and torchvision's ``_compute_resized_output_size`` (used by
   ``Resize(int)``) both truncate the float ``size * long / short``, which for these positive integers is
   the exact floor. One rule, named ``"floor"``, so a saved config states it.
3. Centre crop to ``crop_height x crop_width`` at offset (``crop_rounding``):
   - ``"floor"`` (transformers' ``center_crop``): ``(dim - crop) // 2``;
   - ``"round_half_even"`` (torchvision's ``CenterCrop``): ``int(round((dim - crop) / 2))`` with
     Python's ``round``, i.e. halves go to the even neighbour: 53.5 -> 54 but 52.5 -> 52. The two rules
     differ by one pixel exactly when ``dim - crop`` is odd and ``(dim - crop - 1) / 2`` is odd
     (e.g. a 500x338 photo: resized 331x224, left edge 53 under floor, 54 under torchvision).
4. Scale to [0, 1] and normalise with the CLIP mean and standard deviation.

Other families' processors (ViT, DeiT, SigLIP, BLIP) resize differently, and that is a field too
(``resize``): ``"shortest_edge"`` (CLIP, above) or ``"exact"`` (a processor whose ``size`` is
``{"height", "width"}``: the whole image is resized to ``size x size``, aspect ratio NOT kept), and the
centre crop may be off (``center_crop=False``: ViT, SigLIP and BLIP predict from the whole, squashed
image; DeiT resizes to 256 x 256 and crops 224).

Before all of this, the image file is read, and the pipelines differ in one more rule
(``exif_orientation``), applied by ``orient`` when a path or PIL image is decoded
(``ModelHandle.decoded``):
   - ``"apply"`` (transformers' ``image_utils.load_image``, which its pipelines call on paths, URLs and
     PIL images alike): ``PIL.ImageOps.exif_transpose``, so a phone photo stored sideways with an
     orientation tag is explained upright, as displayed;
   - ``"ignore"`` (OpenAI CLIP's and open_clip's ``preprocess(Image.open(path))``): the pixels as stored,
     tag ignored; the model predicts from the sideways image, so that is what is explained (with a
     warning in the explanation).

``to_dict`` records the rules under ``"faithclip_rules"`` (transformers ignores the key) and
``from_dict`` reads them back; a config without the key is a transformers config and gets its rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from faithclip.deprecation import deprecated_names
from faithclip.errors import ImageError, ModelError
from faithclip.models.images import to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CROP_ROUNDINGS = ("floor", "round_half_even")
RESIZE_ROUNDINGS = ("floor",)
RGB_CONVERSIONS = ("composite_white_first", "pil_convert_after_crop")
EXIF_ORIENTATIONS = ("apply", "ignore")
EXIF_ORIENTATION_TAG = 0x0112
RESIZE_MODES = ("shortest_edge", "exact")

# The published rules of each pipeline (see the module docstring for where each comes from).
PIPELINE_RULES: dict[str, dict[str, str]] = {
    "transformers": {
        "crop_rounding": "floor",
        "resize_rounding": "floor",
        "rgb_conversion": "composite_white_first",
        "exif_orientation": "apply",
    },
    "openai": {
        "crop_rounding": "round_half_even",
        "resize_rounding": "floor",
        "rgb_conversion": "pil_convert_after_crop",
        "exif_orientation": "ignore",
    },
}
RULES_KEY = "faithclip_rules"


# Processors whose integer ``size`` means ``size x size`` (transformers' default ``default_to_square=True``;
# CLIP's processor sets it False: an integer is the shortest edge). Named by the type a saved config records.
SQUARE_INT_SIZE_PROCESSORS = ("ViTImageProcessor", "ViTFeatureExtractor", "DeiTImageProcessor", "DeiTFeatureExtractor")


def _square_int_size(config: dict) -> bool:
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    return kind.removesuffix("Fast").removesuffix("Pil") in SQUARE_INT_SIZE_PROCESSORS


@dataclass(frozen=True)
class ImagePreprocess:
    """Shortest-edge resize, centre crop, normalise. ``__call__`` maps a PIL image to ``(3, H, W)``.

    ``crop_rounding``, ``resize_rounding``, ``rgb_conversion`` and ``exif_orientation`` are the pipeline's rules (module
    docstring); the defaults are transformers', ``for_pipeline("openai", size)`` gives OpenAI's and
    open_clip's.
    """

    size: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = Image.BICUBIC
    crop_rounding: str = "floor"
    resize_rounding: str = "floor"
    rgb_conversion: str = "composite_white_first"
    exif_orientation: str = "apply"
    resize: str = "shortest_edge"
    center_crop: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ModelError(f"unknown resize {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}.")
        if not self.center_crop and (self.crop_height, self.crop_width) != (self.size, self.size):
            raise ModelError("without a centre crop the model input is the resized image: crop size must equal size.")
        for name, allowed in (
            ("crop_rounding", CROP_ROUNDINGS),
            ("resize_rounding", RESIZE_ROUNDINGS),
            ("rgb_conversion", RGB_CONVERSIONS),
            ("exif_orientation", EXIF_ORIENTATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ModelError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}.")

    @classmethod
    def for_pipeline(cls, pipeline: str, size: int) -> "ImagePreprocess":
        """A square ``size`` preprocessing with the published rules of ``pipeline`` (``PIPELINE_RULES``)."""
        if pipeline not in PIPELINE_RULES:
            raise ModelError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINE_RULES)}.")
        return cls(size=size, crop_height=size, crop_width=size, **PIPELINE_RULES[pipeline])

    @property
    def rules(self) -> dict[str, str]:
        """The pipeline rules, as ``to_dict`` records them."""
        return {
            "crop_rounding": self.crop_rounding,
            "resize_rounding": self.resize_rounding,
            "rgb_conversion": self.rgb_conversion,
            "exif_orientation": self.exif_orientation,
        }

    @property
    def pipeline(self) -> str:
        """``"transformers"`` or ``"openai"`` when the rules are that pipeline's, else ``"custom"``."""
        return next((name for name, rules in PIPELINE_RULES.items() if rules == self.rules), "custom")

    @classmethod
    def from_json(cls, path: str | Path) -> "ImagePreprocess":
        """Read a transformers ``preprocessor_config.json`` (CLIPImageProcessor fields)."""
        config = json.loads(Path(path).read_text())
        return cls.from_dict(config)

    @classmethod
    def from_dict(cls, config: dict) -> "ImagePreprocess":
        """Settings from a ``preprocessor_config.json`` dict; its ``faithclip_rules`` if present, else
        transformers' rules (the pipeline that reads such a file)."""
        size = config.get("size", 224)
        resize = "shortest_edge"
        if isinstance(size, int) and _square_int_size(config):  # transformers' get_size_dict(default_to_square=True)
            size = {"height": size, "width": size}
        if isinstance(size, dict):
            if "shortest_edge" not in size and "height" in size:
                resize = "exact"
                if size.get("width", size["height"]) != size["height"]:
                    raise ModelError(f"a non-square resize {size} is not supported; faithclip's inputs are square.")
            size = size.get("shortest_edge", size.get("height", 224))
        center_crop = bool(config.get("do_center_crop", resize == "shortest_edge"))
        crop = config.get("crop_size", size) if center_crop else size
        if isinstance(crop, dict):
            crop_h, crop_w = crop.get("height", size), crop.get("width", size)
        else:
            crop_h = crop_w = int(crop)
        recorded = config.get(RULES_KEY) or {}
        if not isinstance(recorded, dict):
            raise ModelError(f"{RULES_KEY} must map rule names to values; got {recorded!r}. Fix or remove it.")
        recorded = {key: str(value) for key, value in recorded.items() if key in PIPELINE_RULES["transformers"]}
        # Rules a config does not record (it was saved before they were named) are those of the pipeline
        # whose recorded rules it matches; transformers' when none matches.
        base = next(
            (rules for rules in PIPELINE_RULES.values() if all(rules[key] == value for key, value in recorded.items())),
            PIPELINE_RULES["transformers"],
        )
        rules = {**base, **recorded}
        return cls(
            size=int(size),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(config.get("image_std", OPENAI_CLIP_STD)),
            resample=int(config.get("resample", Image.BICUBIC)),
            resize=resize,
            center_crop=center_crop,
            **rules,
        )

    def to_dict(self) -> dict:
        """The transformers ``preprocessor_config.json`` form of these settings, plus ``faithclip_rules``."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.size}
            if self.resize == "shortest_edge"
            else {"height": self.size, "width": self.size},
            "resample": self.resample,
            "do_center_crop": self.center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
            RULES_KEY: self.rules,
        }

    def orient(self, image: Image.Image) -> tuple[Image.Image, dict | None]:
        """The image under ``exif_orientation``, and what was done: ``None`` when it has no orientation tag
        (or tag 1, upright), else ``{"tag": t, "rule": ..., "applied": bool}``."""
        try:
            tag = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
        except (OSError, ValueError, SyntaxError):  # unreadable EXIF block: PIL's own readers ignore it too
            return image, None
        if tag == 1:
            return image, None
        applied = self.exif_orientation == "apply" and 2 <= tag <= 8
        if applied:
            image = ImageOps.exif_transpose(image)
        return image, {"tag": tag, "rule": self.exif_orientation, "applied": applied}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize: ``exact``: (size, size); ``shortest_edge``: the short edge becomes
        ``size``, the long edge ``floor(size * long / short)``."""
        if self.resize == "exact":
            return self.size, self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, self.size * long // short  # exact integer floor
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_offset(self, extent: int, crop: int) -> int:
        """Where a centred ``crop`` starts inside ``extent`` pixels, under ``crop_rounding``."""
        excess = extent - crop
        if self.crop_rounding == "floor":
            return excess // 2
        return round(excess / 2)  # Python's round: an exact .5 goes to the even integer

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop in the resized image's coordinates.

        Every place that needs the crop (masks, overlays, audit grids) must ask here, so it follows the
        model's own rule."""
        rw, rh = self.resized_size(width, height)
        if rw < self.crop_width or rh < self.crop_height:
            raise ValueError(f"resized image {rw}x{rh} is smaller than the crop {self.crop_width}x{self.crop_height}")
        left, top = self.crop_offset(rw, self.crop_width), self.crop_offset(rh, self.crop_height)
        return left, top, left + self.crop_width, top + self.crop_height

    def crop_image(self, image: Image.Image) -> Image.Image:
        """Resize and centre-crop an image of any mode: the RGB pixels the model sees, before normalisation.

        Pass the image as decoded (``faithclip.models.images.decode_image``), not already converted to
        RGB, for ``rgb_conversion`` to apply; an RGB image is the same under both rules."""
        if self.rgb_conversion == "composite_white_first" and image.mode != "RGB":
            image = to_rgb(image)
        width, height = image.size
        size, box = self.resized_size(width, height), self.crop_box(width, height)
        try:
            cropped = image.resize(size, resample=self.resample).crop(box)
            return cropped if cropped.mode == "RGB" else cropped.convert("RGB")
        except (OSError, ValueError) as error:  # PIL cannot resize or convert this mode
            raise ImageError(
                f"a {width}x{height} image of mode {image.mode!r} could not be preprocessed ({error}); "
                "convert it to RGB first (faithclip.models.images.to_rgb)."
            ) from error

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
        """PIL image (any mode, converted under ``rgb_conversion``) -> normalised pixels ``(3, crop_height, crop_width)``."""
        return self.normalize(np.asarray(self.crop_image(image), dtype=np.uint8))


__getattr__ = deprecated_names(__name__, {"ClipPreprocess": ("ImagePreprocess", ImagePreprocess)})
