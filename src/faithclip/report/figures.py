"""Figures of explanations with matplotlib: what a researcher puts next to the photo they know.

Conventions, the same on every figure:
- the map is drawn on the user's image at the image's OWN resolution, over the region it covers (the
  model's centre crop, outlined and named; the whole image for the official pipeline's keep-size input);
- the image itself is shown untouched beside the map, so colours named in prompts stay readable; the
  overlay is transparent where the map is low (its opacity grows with the value), never a colour wash;
- every map has a colour bar with its RAW value range (no min-max behind the user's back: a prompt whose
  cosine is -0.29 shows a map whose values are tiny next to a present object's), and every panel a title
  with prompt, method, target, the explained score and the model's own score; the explanation's warnings
  are printed under it.

``explanation_figure(ex)`` draws one explanation; ``plot(explanations)`` a grid (methods x prompts, or
images x prompts) for papers; ``figure_png`` turns either into PNG bytes.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
OUTLINE = "#00e5ff"


def _figure_class():
    """A matplotlib ``Figure`` (no pyplot, no backend switch: it draws with Agg when saved) that Jupyter
    displays as a PNG whatever backend the notebook has set up."""
    from matplotlib.figure import Figure

    class ExplanationFigure(Figure):
        def _repr_png_(self) -> bytes:
            return figure_png(self)

    return ExplanationFigure


def figure_png(figure: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (the figure is not shown or kept by pyplot)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _rgb(image: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)


def _image_and_region(explanation: Any, image: Any = None) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The RGB image to draw on and the box of it the map covers."""
    if image is None:
        image = explanation.source_image
    if image is None and explanation.image and Path(explanation.image).is_file():
        image = explanation.image
    if image is None:  # nothing to draw on: a grey canvas of the scored input's size
        height, width = explanation.input_size or tuple(explanation.map.shape)
        return np.full((height, width, 3), 200, np.uint8), (0.0, 0.0, float(width), float(height))
    rgb = _rgb(image)
    height, width = rgb.shape[:2]
    region = explanation.region or (0.0, 0.0, float(width), float(height))
    return rgb, tuple(float(v) for v in region)


def _norm(values: np.ndarray):
    """Raw-value normalisation: sequential from min to max, or diverging around 0 when the map has both signs."""
    from matplotlib.colors import Normalize, TwoSlopeNorm

    low, high = float(np.min(values)), float(np.max(values))
    if low < 0 < high:
        bound = max(-low, high)
        return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), DIVERGING_CMAP
    if low == high:
        return Normalize(vmin=low - 0.5 if low == 0 else low - abs(low) * 0.5, vmax=high + (0.5 if high == 0 else abs(high) * 0.5)), CMAP
    return Normalize(vmin=low, vmax=high), CMAP


def _map_on_region(explanation: Any, region: tuple[float, float, float, float]) -> np.ndarray:
    """The raw map resized (bilinear) to the region's size in image pixels."""
    from faithclip.mapmath import upsample

    left, top, right, bottom = region
    size = (max(1, int(round(bottom - top))), max(1, int(round(right - left))))
    return upsample(explanation.map, size).numpy()


def overlay_rgba(values: np.ndarray, norm: Any, cmap: str) -> np.ndarray:
    """Colours of a raw map with an opacity that grows with the value's distance from the low end (or from
    0 on a diverging scale): low values stay transparent, so the image's own colours show there."""
    from matplotlib import colormaps

    scaled = norm(values)
    rgba = colormaps[cmap](scaled)
    strength = np.abs(np.asarray(scaled) - 0.5) * 2 if cmap == DIVERGING_CMAP else np.asarray(scaled)
    rgba[..., 3] = 0.85 * np.clip(strength, 0, 1) ** 0.8
    return rgba


def _score_line(explanation: Any) -> str:
    line = f"{explanation.target} {explanation.score:+.3f}"
    if explanation.model_score is not None:
        if abs(explanation.score - explanation.model_score) <= 1e-5 * max(1.0, abs(explanation.model_score)):
            line += " (= model's)"
        else:
            line += f" (model {explanation.model_score:+.3f}: P1 gap)"
    return line


def title_of(explanation: Any, width: int = 60) -> str:
    """Prompt, method, target, explained score and model score, wrapped to ``width`` characters."""
    prompt = f"\"{explanation.text}\"" if explanation.text is not None else "(text)"
    flags = [word for flag, word in ((explanation.modifies_model, "modifies the model"),
                                     (explanation.modifies_input, "modifies the input")) if flag]
    head = f"{prompt} · {explanation.method}" + (f" [{', '.join(flags)}]" if flags else "")
    return "\n".join(textwrap.wrap(head, width) + [_score_line(explanation)])


def _draw_map(axes: Any, explanation: Any, rgb: np.ndarray, region: tuple[float, float, float, float],
              colorbar_of: Any = None, crop_only: bool = False) -> Any:
    """Image (dimmed outside the map's region) with the map over its region, the region outlined; returns
    the colour-mapped artist for a colour bar."""
    from matplotlib.patches import Rectangle

    left, top, right, bottom = region
    height, width = rgb.shape[:2]
    values = _map_on_region(explanation, region)
    norm, cmap = _norm(explanation.map.detach().double().numpy())
    covers_all = left <= 0.5 and top <= 0.5 and right >= width - 0.5 and bottom >= height - 0.5
    if crop_only:
        box = tuple(int(round(v)) for v in region)
        axes.imshow(rgb[box[1]:box[3], box[0]:box[2]], extent=(left, right, bottom, top))
    else:
        axes.imshow(rgb)
        if not covers_all:  # the part the map does not cover, dimmed
            shade = np.zeros((height, width, 4))
            shade[..., 3] = 0.45
            shade[int(round(top)):int(round(bottom)), int(round(left)):int(round(right)), 3] = 0
            axes.imshow(shade)
    axes.imshow(overlay_rgba(values, norm, cmap), extent=(left, right, bottom, top), interpolation="bilinear")
    if not crop_only and not covers_all:
        axes.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=OUTLINE,
                                 linewidth=1.5, linestyle="--"))
    if crop_only:
        axes.set_xlim(left, right)
        axes.set_ylim(bottom, top)
    else:  # the overlay's extent must not shrink the view to the region
        axes.set_xlim(-0.5, width - 0.5)
        axes.set_ylim(height - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def _colorbar(figure: Any, mappable: Any, axes: Any, label: str = "raw map value") -> None:
    bar = figure.colorbar(mappable, ax=axes, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(label, fontsize=7)
    bar.formatter.set_powerlimits((-2, 3))
    bar.update_ticks()


def _text_figure(explanation: Any):
    figure = _figure_class()(figsize=(max(4.0, 0.5 * len(explanation.tokens or [])), 3.0))
    axes = figure.add_subplot()
    values = explanation.map.detach().double().numpy()
    tokens = explanation.tokens or [str(i) for i in range(len(values))]
    count = min(len(tokens), len(values))
    axes.bar(range(count), values[:count], color="#c0392b")
    axes.set_xticks(range(count), tokens[:count], rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("raw token weight", fontsize=8)
    axes.set_title(title_of(explanation), fontsize=9)
    _warnings_text(figure, explanation)
    return figure


def _warnings_text(figure: Any, explanation: Any) -> None:
    if explanation.warnings:
        text = "\n".join(textwrap.fill("warning: " + w, 110) for w in explanation.warnings)
        figure.text(0.01, -0.02, text, fontsize=7, color="#b00000", va="top", ha="left")


def explanation_figure(explanation: Any, image: Any = None):
    """One explanation: (a) the image untouched, the model's crop outlined; (b) the map on the image at its
    own resolution over the region it covers, with a raw-value colour bar; (c) the crop-sized view.
    Text-side explanations: a bar per token."""
    if explanation.side != "image":
        return _text_figure(explanation)
    rgb, region = _image_and_region(explanation, image)
    height, width = rgb.shape[:2]
    left, top, right, bottom = region
    covers_all = left <= 0.5 and top <= 0.5 and right >= width - 0.5 and bottom >= height - 0.5
    aspect = width / height
    panels = 2 if covers_all else 3
    figure = _figure_class()(figsize=(min(14.0, 1.0 + panels * 3.4 * max(aspect, 0.6)), 4.3), layout="constrained")
    grid = figure.subplots(1, panels)
    from matplotlib.patches import Rectangle

    grid[0].imshow(rgb)
    what = "map covers the whole image" if covers_all else "dashed: the model's crop (the map covers only this)"
    if not covers_all:
        grid[0].add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=OUTLINE,
                                    linewidth=1.5, linestyle="--"))
    grid[0].set_title(f"image, {width}x{height} px\n{what}", fontsize=8)
    grid[0].set_xticks([])
    grid[0].set_yticks([])
    mappable = _draw_map(grid[1], explanation, rgb, region)
    grid[1].set_title(f"map on the image ({width}x{height} px)", fontsize=8)
    if not covers_all:
        _draw_map(grid[2], explanation, rgb, region, crop_only=True)
        grid[2].set_title(f"the model's crop ({int(round(right - left))}x{int(round(bottom - top))} px of the "
                          "image)", fontsize=8)
    _colorbar(figure, mappable, grid[-1])
    grid_shape = "x".join(str(s) for s in explanation.map.shape)
    figure.suptitle(title_of(explanation, 100) + f"   ·   {explanation.model_id}, map {grid_shape}", fontsize=9)
    _warnings_text(figure, explanation)
    return figure


def map_card_png(patch_map: Any, image: Any, width: int = 128) -> tuple[bytes, str]:
    """A small card for report grids: ``image`` (the region the map covers) scaled to ``width`` px, the raw
    map over it (transparent where low), and a colour bar strip on the right; returns the PNG and the raw
    range as text (``"0 to 3.1e-02"``) for its caption. Cheap (PIL only): reports hold hundreds."""
    import torch
    from PIL import Image

    from faithclip.mapmath import upsample

    rgb = Image.fromarray(_rgb(image)).convert("RGB")
    height = max(1, round(width * rgb.height / rgb.width))
    base = np.asarray(rgb.resize((width, height), Image.BICUBIC if rgb.width < width else Image.LANCZOS), dtype=np.float64) / 255
    values = np.asarray(patch_map.detach().double() if isinstance(patch_map, torch.Tensor) else patch_map, dtype=np.float64)
    norm, cmap = _norm(values)
    rgba = overlay_rgba(upsample(torch.from_numpy(values), (height, width)).numpy(), norm, cmap)
    alpha = rgba[..., 3:4]
    blended = base * (1 - alpha) + rgba[..., :3] * alpha
    from matplotlib import colormaps

    ramp = colormaps[cmap](np.linspace(1, 0, height))[:, None, :3].repeat(8, axis=1)  # (height, 8, 3), top = max
    canvas = np.ones((height, width + 12, 3))
    canvas[:, :width] = blended
    canvas[:, width + 4:] = ramp
    buffer = io.BytesIO()
    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    low, high = float(values.min()), float(values.max())
    return buffer.getvalue(), (f"constant {low:.2g}" if low == high else f"raw {low:.2g} to {high:.2g}")


def _key(explanation: Any) -> Any:
    """What identifies an explanation's image: its file, else its pixels (each call reads a PIL image into a
    new object, so the same picture explained twice must still share a row)."""
    if explanation.image:
        return explanation.image
    if explanation.source_image is None:
        return None
    import hashlib

    rgb = np.ascontiguousarray(_rgb(explanation.source_image))
    return hashlib.sha1(rgb.tobytes()).hexdigest() + str(rgb.shape)


def plot(explanations: Sequence[Any] | Any, *, columns: str = "text", cell_size: float = 2.6, images: bool = True):
    """A grid figure of image-side explanations: one row per (image, method), one column per prompt
    (``columns="text"``; ``columns="method"`` puts methods in columns and (image, prompt) in rows). Each
    cell has its own colour bar with the raw range (methods' units differ) and its scores; ``images=True``
    adds a first column with the image untouched, its crop outlined."""
    explanations = [explanations] if not isinstance(explanations, (list, tuple)) else list(explanations)
    explanations = [e for e in explanations if e.side == "image"]
    if not explanations:
        raise ValueError("plot() draws image-side explanations; none were given")
    if columns not in ("text", "method"):
        raise ValueError("columns must be 'text' or 'method'")
    other = "method" if columns == "text" else "text"
    column_names = list(dict.fromkeys(getattr(e, columns) for e in explanations))
    row_keys = list(dict.fromkeys((_key(e), getattr(e, other)) for e in explanations))
    cells = {((_key(e), getattr(e, other)), getattr(e, columns)): e for e in explanations}
    first = {key[0]: e for e in explanations for key in [(_key(e),)]}
    lead = 1 if images else 0
    figure = _figure_class()(figsize=(cell_size * 1.25 * (len(column_names) + lead), cell_size * 1.25 * len(row_keys)),
                             layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(row_keys), len(column_names) + lead, squeeze=False))
    from matplotlib.patches import Rectangle

    for row, key in enumerate(row_keys):
        sample = first[key[0]]
        rgb, region = _image_and_region(sample)
        if images:
            axes[row, 0].imshow(rgb)
            left, top, right, bottom = region
            if not (left <= 0.5 and top <= 0.5 and right >= rgb.shape[1] - 0.5 and bottom >= rgb.shape[0] - 0.5):
                axes[row, 0].add_patch(Rectangle((left, top), right - left, bottom - top, fill=False,
                                             edgecolor=OUTLINE, linewidth=1.2, linestyle="--"))
            name = Path(sample.image).name if sample.image else "image"
            axes[row, 0].set_title(f"{name}\n{rgb.shape[1]}x{rgb.shape[0]} px", fontsize=7)
            axes[row, 0].set_ylabel(key[1], fontsize=8)
            axes[row, 0].set_xticks([])
            axes[row, 0].set_yticks([])
        for column, name in enumerate(column_names):
            cell = axes[row, column + lead]
            explanation = cells.get((key, name))
            if explanation is None:
                cell.axis("off")
                continue
            mappable = _draw_map(cell, explanation, *_image_and_region(explanation))
            _colorbar(figure, mappable, cell, label="raw")
            label = f"\"{explanation.text}\"" if columns == "text" else explanation.method
            warn = "  ⚠" if explanation.warnings else ""
            cell.set_title(textwrap.shorten(label, 34) + f"\n{_score_line(explanation)}{warn}", fontsize=7)
            if column == 0 and not images:
                cell.set_ylabel(key[1], fontsize=8)
    notes = sorted({w for e in explanations for w in e.warnings})
    if notes:
        figure.text(0.0, 0.0, "\n".join(textwrap.shorten("⚠ " + n, 150) for n in notes), fontsize=6,
                    color="#b00000", va="top")
    return figure


__all__ = ["explanation_figure", "figure_png", "overlay_rgba", "plot", "title_of"]
