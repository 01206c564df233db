"""``Explanation``: one raw map with the score it explains and everything needed to reproduce it.

Maps are RAW: no ReLU, normalisation or resizing beyond what the method's formula states. Normalising
and upsampling are explicit, named steps (``normalized``, ``upsampled``), never applied behind the user's back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from faithclip._version import __version__
from faithclip.deprecation import renamed_fields
from faithclip.files import (  # noqa: F401 (re-exported)
    dumps_strict,
    fsync_directory,
    json_bytes,
    strict_json,
    write_atomic,
)
from faithclip.mapmath import minmax, upsample


@renamed_fields({"layers": "layer_indices"})
@dataclass
class Explanation:
    """An explanation of one image-text score.

    ``map`` is ``(gh, gw)`` on the patch grid for the image side, ``(L,)`` per token position for the
    text side (zero outside the explained span). ``score`` is the value of the target the method
    differentiated (or perturbed); ``model_score`` is the model's own value of the same target for the
    same pair under its standard preprocessing. The two agree for methods that explain the model's own
    forward (principle P1); ``p1_gap`` says by how much they differ.

    ``image`` is the image file explained (``None`` when given as a PIL image or tensor);
    ``exif_orientation`` what was done with the image's EXIF orientation tag (``None``: it had none):
    ``{"tag": 6, "rule": "apply", "applied": True}`` (rule of the model's pipeline,
    ``faithclip.models.preprocess``).

    ``region`` is the ``(left, top, right, bottom)`` box of the image (in its own pixels, as read) that the
    map covers: the model's centre crop for methods that explain the model's input, the whole image for
    the official Grad-ECLIP pipeline's keep-size input. ``source_image`` is that image (RGB, as read) for
    figures; it is not written to JSON.

    ``layer_indices`` are the indices of the layers the map was computed from (0 = the first block); its old
    name ``layers`` (a keyword and an attribute, the same list) is deprecated: ``layers`` is a method option's
    count of last layers everywhere else.
    """

    map: torch.Tensor
    score: float
    method: str
    side: str
    target: str = "cosine"
    model_score: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    layer_indices: list[int] = field(default_factory=list)
    model_id: str = ""
    modifies_model: bool = False
    modifies_input: bool = False
    text: str | None = None
    image: str | None = None
    exif_orientation: dict[str, Any] | None = None
    tokens: list[str] | None = None
    input_size: tuple[int, int] | None = None  # (H, W) of the pixels the map refers to
    warnings: list[str] = field(default_factory=list)
    region: tuple[float, float, float, float] | None = None
    version: str = __version__
    source_image: Any = field(default=None, repr=False, compare=False)

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def p1_gap(self) -> float | None:
        """Relative difference between the explained score and the model's own score (P1 check)."""
        if self.model_score is None:
            return None
        return abs(self.score - self.model_score) / max(abs(self.model_score), 1e-12)

    def normalized(self) -> torch.Tensor:
        """Min-max normalised float64 copy of the map in [0, 1]; a constant map gives all zeros (never NaN).
        A map holding NaN or infinite values is refused (``ValueError``)."""
        values = self.map.detach().double()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("map holds NaN or infinite values")
        return minmax(values)

    def upsampled(self, size: tuple[int, int] | None = None, mode: str = "bilinear") -> torch.Tensor:
        """Image-side map resized to ``size`` (default: the scored input's ``(H, W)``), ``align_corners=False``."""
        if self.side != "image":
            raise ValueError("only image-side maps can be upsampled")
        size = size or self.input_size
        if size is None:
            raise ValueError("give the size to upsample to")
        return upsample(self.map, size, mode)

    def to_numpy(self, space: str = "patch", image_size: tuple[int, int] | None = None):
        """The map as a float64 numpy array, for other tools (Quantus, Captum; format in docs/interop.md).

        ``"patch"``: the raw ``(gh, gw)`` map (text side: the ``(L,)`` token map). ``"crop"``: upsampled
        bilinearly (``align_corners=False``) to the model's input ``(H, W)``, the resized and centre-cropped
        image (``upsampled()``). ``"image"``: ``(H0, W0)`` on the image as read, NaN outside ``region`` (the
        model's crop in the image's pixels; the map says nothing there), and inside it the map upsampled
        bilinearly to the region's size rounded to whole pixels, placed at its rounded corner, as the
        figures draw it. ``image_size`` ``(H0, W0)`` is needed when the explanation holds no image."""
        import numpy as np

        if space == "patch":
            return self.map.detach().cpu().double().numpy().copy()
        if space == "crop":
            return self.upsampled().numpy()
        if space != "image":
            raise ValueError(f"space must be 'patch', 'crop' or 'image', got {space!r}")
        if self.side != "image":
            raise ValueError("only image-side maps have an image space")
        if image_size is None:
            if self.source_image is None:
                raise ValueError("this explanation holds no image; pass image_size=(height, width)")
            image_size = (self.source_image.height, self.source_image.width)
        height, width = image_size
        left, top, right, bottom = (int(round(v)) for v in (self.region or (0, 0, width, height)))
        out = np.full((height, width), np.nan)
        inside = upsample(self.map, (bottom - top, right - left)).numpy()  # (region h, region w)
        y0, x0 = max(top, 0), max(left, 0)
        out[y0 : min(bottom, height), x0 : min(right, width)] = inside[
            y0 - top : min(bottom, height) - top, x0 - left : min(right, width) - left
        ]
        return out

    # ---- output ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        record = {
            f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in ("map", "source_image")
        }
        record["map"] = self.map.detach().cpu().double().tolist()
        record["map_shape"] = list(self.map.shape)
        record["p1_gap"] = self.p1_gap
        return record

    def save_json(self, path: str | Path) -> Path:
        return write_atomic(Path(path), json_bytes(self.to_dict()))

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Explanation":
        """The explanation ``to_dict`` wrote (``faithclip explain``'s per-pair JSON). A record written before the
        rename holds ``layers`` for ``layer_indices``: it is read as such (old files stay readable)."""
        values = {key: value for key, value in record.items() if key not in ("map_shape", "p1_gap")}
        if "layers" in values:
            values.setdefault("layer_indices", values.pop("layers"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"not an explanation record: unknown keys {unknown}")
        values["map"] = torch.tensor(values["map"], dtype=torch.float64)
        for key in ("input_size", "region"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def load_json(cls, path: str | Path) -> "Explanation":
        """``from_dict`` of the JSON file ``save_json`` wrote."""
        import json

        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_overlay(self, path: str | Path, image: Any, alpha: float | None = None) -> Path:
        """Write a PNG of the raw map over ``image`` (the scored RGB crop) on its own colour scale: from 0
        (transparent) to its top for a non-negative map, centred on 0 for a signed one, a strip with zero
        marked on the right (``faithclip.report.colour``; no min-max, no jet). ``alpha`` is accepted for
        compatibility and ignored: opacity grows with the value's distance from 0."""
        from faithclip.report.figures import map_card_png

        width = image.size[0] if hasattr(image, "size") and not hasattr(image, "shape") else len(image[0])
        png, _ = map_card_png(self.map, image, width)
        return write_atomic(Path(path), png)

    def figure(self, image: Any = None, **options: Any):
        """A matplotlib figure: the image untouched (the model's crop outlined), the map on it over the region
        it covers, the crop alone, and a colour bar in raw values with zero marked; a title with prompt,
        method, target, score and the model's score. ``options``: ``view`` (``"overlay"``, ``"contour"``,
        ``"masked"``), ``clip`` (a percentile), ``max_pixels`` (``faithclip.report.figures``)."""
        from faithclip.report.figures import explanation_figure

        return explanation_figure(self, image, **options)

    def save_figure(
        self, path: str | Path, image: Any = None, format: str | None = None, dpi: int = 300, **options: Any
    ) -> Path:
        """Write ``figure()`` as PNG (``dpi``), PDF or SVG (``format``; default: the path's suffix, else PNG)."""
        from faithclip.report.figures import FORMATS, figure_bytes

        path = Path(path)
        format = format or (path.suffix[1:].lower() if path.suffix[1:].lower() in FORMATS else "png")
        return write_atomic(path, figure_bytes(self.figure(image, **options), format, dpi=dpi))

    def _repr_png_(self) -> bytes:
        """Jupyter shows an explanation as its figure."""
        from faithclip.report.figures import SCREEN_DPI, figure_bytes

        return figure_bytes(self.figure(), "png", dpi=SCREEN_DPI)


def map_warnings(patch_map: torch.Tensor, side: str) -> list[str]:
    """What is degenerate about a raw map, in words a user can act on (empty list: nothing).

    All zero: every term was removed by the method's ReLU, i.e. no patch / word raised the explained score
    through the explained layer(s); the map says nothing about WHERE, and its normalised form is zero.
    Constant (image side): the map ranks no patch above another.
    """
    if not torch.isfinite(patch_map).all():
        return ["the map holds NaN or infinite values; it cannot be interpreted"]
    if bool((patch_map == 0).all()):
        where = "patch" if side == "image" else "word"
        return [
            (
                f"all-zero map: no {where} has a positive contribution to the score (every term was removed by "
                "the ReLU); it shows nothing about where the evidence is"
            )
        ]
    if side == "image" and bool((patch_map == patch_map.flatten()[0]).all()):
        return ["constant map: every patch has the same value, so it ranks nothing"]
    return []
