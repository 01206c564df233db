"""Figures of explanations with matplotlib, ready for a paper.

Conventions, the same on every figure:
- the map is drawn on the user's image over the region it covers (the model's centre crop, outlined; the
  whole image for the official pipeline's keep-size input), and the image is shown untouched beside it;
- colours follow ``faithclip.report.colour``: raw values, zero on every colour bar, a sequential
  colour-blind-safe map from 0 for non-negative maps, a diverging map centred on 0 for signed ones, one
  scale for every map of a figure by default (``scale="shared"``) so that panels can be compared;
- panels of one row have equal heights, each colour bar is as tall as its panel, tick labels are written in
  full (no ``1e-2`` offset), rows are labelled with the image (and method or prompt), columns with the
  prompt (or method); the explanation's warnings are printed under the figure;
- ``view="overlay"`` (transparent where the map is 0), ``"contour"`` (iso-lines at a quarter, half and three
  quarters of the scale) or ``"masked"`` (the image shown in proportion to the map's positive part);
- the image is drawn from a copy of at most ``DRAW_MAX_PIXELS`` pixels (the map still placed over the whole
  region it covers), so a figure's memory does not grow with the photo's size.

``explanation_figure(ex)`` draws one explanation; ``plot(explanations)`` a grid (methods x prompts, or
images x prompts); ``figure_bytes`` writes either as PNG (300 dpi), PDF or SVG.
The returned figures carry ``colour_scales`` (the scale of each map drawn, in input order) and
``colour_bars`` (``(bar axes, panel axes, scale)`` for each bar).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faithclip.report.colour import ColourScale, colour_scale, scales_of, tick_text

OUTLINE = "#00a0b0"
VIEWS = ("overlay", "contour", "masked")
FORMATS = ("png", "pdf", "svg")
PAPER_DPI = 300
SCREEN_DPI = 110
DRAW_MAX_PIXELS = 1_500_000  # ~1400 x 1070: more than a full-width panel at 300 dpi needs
FONT = {"title": 8, "label": 8, "tick": 7, "note": 6.5}
PANEL_HEIGHT = 1.3  # inches: an image and three 4:3 panels with a colour bar fit a 7.5-inch text width


def _figure_class():
    """A matplotlib ``Figure`` (no pyplot, no backend switch) that Jupyter displays as a PNG."""
    from matplotlib.figure import Figure

    class ExplanationFigure(Figure):
        def _repr_png_(self) -> bytes:
            return figure_bytes(self, "png", dpi=SCREEN_DPI)

    return ExplanationFigure


def figure_bytes(figure: Any, format: str = "png", dpi: int = PAPER_DPI) -> bytes:
    """The figure as PNG (``dpi``), PDF or SVG (vector: text stays text, fonts embedded as Type 42)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):
        figure.savefig(buffer, format=format, dpi=dpi, bbox_inches="tight", pad_inches=0.04)
    return buffer.getvalue()


def figure_png(figure: Any, dpi: int = PAPER_DPI) -> bytes:
    """PNG bytes of a matplotlib figure."""
    return figure_bytes(figure, "png", dpi)


# ---- the image, bounded --------------------------------------------------------------------------------


def bounded_rgb(image: Any, max_pixels: int = DRAW_MAX_PIXELS) -> tuple[np.ndarray, float]:
    """``(rgb, factor)``: the image as an ``(h, w, 3)`` uint8 array of at most ``max_pixels`` pixels, and the
    factor its sides were scaled by (1.0 when it was small enough). JPEG files are decoded at a reduced
    size where libjpeg can (``draft``); others are reduced by Pillow's box-then-Lanczos resize."""
    from PIL import Image

    opened = None
    if isinstance(image, (str, Path)):
        opened = Image.open(image)
        picture = opened
    elif isinstance(image, Image.Image):
        picture = image
    else:
        picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    try:
        width, height = picture.size
        factor = min(1.0, math.sqrt(max_pixels / (width * height)))
        target = (max(1, round(width * factor)), max(1, round(height * factor)))
        if factor < 1.0 and opened is not None and opened.format == "JPEG":
            opened.draft("RGB", target)  # decodes at 1/2, 1/4 or 1/8 size, at least ``target``
        if factor < 1.0:
            picture = picture.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        rgb = np.asarray(picture.convert("RGB"))
    finally:
        if opened is not None:
            opened.close()
    return rgb, factor


def _image_of(explanation: Any, image: Any = None) -> tuple[Any, tuple[int, int]] | None:
    """The image to draw on and its full ``(width, height)``; ``None`` when there is none."""
    if image is None:
        image = explanation.source_image
    if image is None and explanation.image and Path(explanation.image).is_file():
        image = explanation.image
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as opened:
            return image, opened.size
    if hasattr(image, "size") and not isinstance(image, np.ndarray):
        return image, tuple(image.size)
    array = np.asarray(image)
    return array, (array.shape[1], array.shape[0])


class Canvas:
    """What a panel draws on: the bounded RGB copy, the full image's size, and the map's region in both."""

    def __init__(self, explanation: Any, image: Any = None, max_pixels: int = DRAW_MAX_PIXELS):
        found = _image_of(explanation, image)
        if found is None:  # nothing to draw on: a grey canvas of the scored input's size
            height, width = explanation.input_size or tuple(explanation.map.shape)
            self.full_size = (width, height)
            self.rgb, self.factor = np.full((height, width, 3), 200, np.uint8), 1.0
        else:
            source, self.full_size = found
            self.rgb, self.factor = bounded_rgb(source, max_pixels)
        width, height = self.full_size
        self.region = tuple(float(v) for v in (explanation.region or (0.0, 0.0, float(width), float(height))))
        left, top, right, bottom = self.region
        self.covers_all = left <= 0.5 and top <= 0.5 and right >= width - 0.5 and bottom >= height - 0.5
        # drawn coordinates: the bounded copy's pixels
        self.extent = (0.0, float(self.rgb.shape[1]), float(self.rgb.shape[0]), 0.0)
        self.box = tuple(
            v * self.rgb.shape[1] / width if i % 2 == 0 else v * self.rgb.shape[0] / height
            for i, v in enumerate(self.region)
        )

    @property
    def aspect(self) -> float:
        return self.rgb.shape[1] / self.rgb.shape[0]

    @property
    def crop_aspect(self) -> float:
        left, top, right, bottom = self.box
        return max(right - left, 1e-9) / max(bottom - top, 1e-9)

    def map_pixels(self, explanation: Any) -> np.ndarray:
        """The raw map resized (bilinear) to the region's size in the drawn copy's pixels."""
        from faithclip.mapmath import upsample

        left, top, right, bottom = self.box
        size = (max(1, int(round(bottom - top))), max(1, int(round(right - left))))
        return upsample(explanation.map, size).numpy()

    def size_text(self) -> str:
        width, height = self.full_size
        return f"{width}x{height} px"


# ---- panels --------------------------------------------------------------------------------------------


def _bare(axes: Any) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_linewidth(0.5)


def _outline(axes: Any, canvas: Canvas) -> None:
    from matplotlib.patches import Rectangle

    left, top, right, bottom = canvas.box
    axes.add_patch(
        Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=OUTLINE, linewidth=1.0, linestyle="--")
    )


def draw_image(axes: Any, canvas: Canvas) -> None:
    """The image untouched, the model's crop outlined when the map covers only that."""
    axes.imshow(canvas.rgb, extent=canvas.extent, interpolation="antialiased")
    if not canvas.covers_all:
        _outline(axes, canvas)
    _bare(axes)


def draw_map(
    axes: Any, explanation: Any, canvas: Canvas, scale: ColourScale, view: str = "overlay", crop_only: bool = False
) -> None:
    """The map over the region it covers, in ``view``, on ``scale``; outside the region the image is dimmed."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    left, top, right, bottom = canvas.box
    values = canvas.map_pixels(explanation)
    region_extent = (left, right, bottom, top)
    base = canvas.rgb.astype(np.float32) / 255
    if view == "masked":  # the image in proportion to the map's positive part, nearly black elsewhere
        weight = np.zeros(base.shape[:2], np.float32)
        row, column = int(round(top)), int(round(left))
        part = weight[row : row + values.shape[0], column : column + values.shape[1]]
        part[:] = np.clip(values / scale.high, 0.0, 1.0)[: part.shape[0], : part.shape[1]]
        axes.imshow(base * (0.12 + 0.88 * weight[..., None]), extent=canvas.extent, interpolation="antialiased")
    else:
        axes.imshow(base, extent=canvas.extent, interpolation="antialiased")
        if not canvas.covers_all and not crop_only:  # the part the map does not cover, dimmed
            axes.imshow(np.zeros((1, 1, 4)) + [0, 0, 0, 0.45], extent=canvas.extent)
            axes.imshow(
                base[int(round(top)) : int(round(bottom)), int(round(left)) : int(round(right))],
                extent=region_extent,
                interpolation="antialiased",
            )
        if view == "overlay":
            axes.imshow(scale.rgba(values), extent=region_extent, interpolation="bilinear")
        else:
            levels = [f * scale.high for f in (0.25, 0.5, 0.75)]
            if scale.signed:
                levels = [-v for v in reversed(levels)] + levels
            axes.contour(
                values,
                levels=levels,
                cmap=scale.cmap,
                norm=scale.norm(),
                linewidths=1.1,
                extent=(left, right, top, bottom),
                origin="upper",
                linestyles=["--" if v < 0 else "-" for v in levels],
            )
    if not crop_only and not canvas.covers_all:
        _outline(axes, canvas)
    if crop_only:
        axes.set_xlim(left, right)
        axes.set_ylim(bottom, top)
    else:  # the overlay's extent must not shrink the view to the region
        axes.set_xlim(0, canvas.rgb.shape[1])
        axes.set_ylim(canvas.rgb.shape[0], 0)
    _bare(axes)


def colour_bar(figure: Any, axes: Any, scale: ColourScale, view: str = "overlay", label: bool = True) -> Any:
    """A colour bar exactly as tall as ``axes`` (an inset beside it), ticks at zero and the ends written in
    full; pointed ends where the scale was clipped."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar_axes = axes.inset_axes([1.03, 0.0, 0.06, 1.0])  # a child of the panel: exactly as tall as it
    bar_axes.set_label("<colorbar>")
    if view == "masked":  # brightness: the positive part of the map, 0 to the scale's top
        mappable, ticks = (
            ScalarMappable(norm=Normalize(0.0, scale.high), cmap="gray"),
            [0.0, scale.high / 2, scale.high],
        )
        extend = "max" if scale.data_high > scale.high else "neither"
    else:
        mappable, ticks, extend = ScalarMappable(norm=scale.norm(), cmap=scale.cmap), scale.ticks(), scale.extend
    bar = figure.colorbar(mappable, cax=bar_axes, extend=extend)
    bar.set_ticks(ticks, labels=[tick_text(t) for t in ticks])
    bar.ax.tick_params(labelsize=FONT["tick"], length=2, pad=1.5)
    bar.outline.set_linewidth(0.5)
    figure.colour_bars = [*getattr(figure, "colour_bars", []), (bar_axes, axes, scale)]
    bar.ax.axhline(0.0, color="black", linewidth=0.6)
    if label:
        bar.set_label(
            scale.label() if view != "masked" else "image brightness x map value", fontsize=FONT["tick"], labelpad=2
        )
    return bar


# ---- words ---------------------------------------------------------------------------------------------


def _score_line(explanation: Any) -> str:
    line = f"{explanation.target} {explanation.score:+.3f}"
    if explanation.model_score is not None:
        if abs(explanation.score - explanation.model_score) <= 1e-5 * max(1.0, abs(explanation.model_score)):
            line += " (= model's)"
        else:
            line += f" (model {explanation.model_score:+.3f}: P1 gap)"
    return line


def prompt_text(explanation: Any, width: int = 32) -> str:
    return (
        f'"{textwrap.shorten(explanation.text, width, placeholder="...")}"'
        if explanation.text is not None
        else "(text)"
    )


def title_of(explanation: Any, width: int = 60) -> str:
    """Prompt, method, target, explained score and model score, wrapped to ``width`` characters."""
    flags = [
        word
        for flag, word in (
            (explanation.modifies_model, "modifies the model"),
            (explanation.modifies_input, "modifies the input"),
        )
        if flag
    ]
    head = f"{prompt_text(explanation, 80)} · {explanation.method}" + (f" [{', '.join(flags)}]" if flags else "")
    return "\n".join(textwrap.wrap(head, width) + [_score_line(explanation)])


def _image_name(explanation: Any) -> str:
    return Path(explanation.image).name if explanation.image else "image"


def _notes(figure: Any, explanations: Sequence[Any]) -> None:
    notes = list(dict.fromkeys(w for e in explanations for w in e.warnings))
    if notes:
        text = "\n".join(textwrap.fill("warning: " + n, 120) for n in notes)
        figure.text(0.0, 0.0, text, fontsize=FONT["note"], color="#a40000", va="top", ha="left")


# ---- figures -------------------------------------------------------------------------------------------


def _text_figure(explanation: Any):
    figure = _figure_class()(figsize=(max(3.5, 0.45 * len(explanation.tokens or [])), 2.4), layout="constrained")
    axes = figure.add_subplot()
    values = explanation.map.detach().double().numpy()
    tokens = explanation.tokens or [str(i) for i in range(len(values))]
    count = min(len(tokens), len(values))
    axes.bar(range(count), values[:count], color=["#b2182b" if v >= 0 else "#2166ac" for v in values[:count]])
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_xticks(range(count), tokens[:count], rotation=45, ha="right", fontsize=FONT["tick"])
    axes.tick_params(axis="y", labelsize=FONT["tick"])
    axes.yaxis.get_major_formatter().set_useOffset(False)
    axes.set_ylabel("raw token weight", fontsize=FONT["label"])
    axes.set_title(title_of(explanation), fontsize=FONT["title"])
    _notes(figure, [explanation])
    return figure


def explanation_figure(
    explanation: Any,
    image: Any = None,
    *,
    view: str = "overlay",
    clip: float | None = None,
    max_pixels: int = DRAW_MAX_PIXELS,
):
    """One explanation: (a) the image untouched, the model's crop outlined; (b) the map on the whole image
    over the region it covers; (c) the crop alone when the map covers only a crop; one colour bar, as tall
    as the panels, with the raw scale. Panels have equal heights. Text-side explanations: a bar per token."""
    if explanation.side != "image":
        return _text_figure(explanation)
    canvas = Canvas(explanation, image, max_pixels)
    scale = colour_scale([explanation.map], clip)
    ratios = [canvas.aspect, canvas.aspect] + ([] if canvas.covers_all else [canvas.crop_aspect])
    figure = _figure_class()(
        figsize=(PANEL_HEIGHT * sum(ratios) + 0.5 * len(ratios) + 0.9, PANEL_HEIGHT + 0.9), layout="constrained"
    )
    axes = figure.subplots(1, len(ratios), width_ratios=ratios)
    draw_image(axes[0], canvas)
    what = "map covers the whole image" if canvas.covers_all else "dashed: the model's crop"
    axes[0].set_title(f"{_image_name(explanation)}, {canvas.size_text()}\n{what}", fontsize=FONT["title"])
    draw_map(axes[1], explanation, canvas, scale, view)
    axes[1].set_title("map on the image", fontsize=FONT["title"])
    if not canvas.covers_all:
        draw_map(axes[2], explanation, canvas, scale, view, crop_only=True)
        left, top, right, bottom = canvas.region
        axes[2].set_title(
            f"the model's crop\n({int(round(right - left))}x{int(round(bottom - top))} px of the image)",
            fontsize=FONT["title"],
        )
    colour_bar(figure, axes[-1], scale, view)
    grid_shape = "x".join(str(s) for s in explanation.map.shape)
    figure.suptitle(
        title_of(explanation, 100) + f"   ·   {explanation.model_id}, map {grid_shape}", fontsize=FONT["title"] + 1
    )
    _notes(figure, [explanation])
    figure.colour_scales = [scale]
    return figure


def _key(explanation: Any) -> Any:
    """What identifies an explanation's image: its file, else its pixels (each call reads a PIL image into a
    new object, so the same picture explained twice must still share a row)."""
    if explanation.image:
        return explanation.image
    if explanation.source_image is None:
        return None
    import hashlib

    rgb = np.ascontiguousarray(np.asarray(explanation.source_image))
    return hashlib.sha1(rgb.tobytes()).hexdigest() + str(rgb.shape)


def plot(
    explanations: Sequence[Any] | Any,
    *,
    columns: str = "text",
    scale: str = "shared",
    clip: float | None = None,
    view: str = "overlay",
    images: bool = True,
    panel_height: float = PANEL_HEIGHT,
    max_pixels: int = DRAW_MAX_PIXELS,
):
    """A grid figure of image-side explanations for a paper.

    Rows: one per (image, method) and columns one per prompt (``columns="text"``), or ``columns="method"``:
    one column per method and a row per (image, prompt). ``scale``: ``"shared"`` (default) draws every map
    of the same method and target (the same units) on one colour scale, so a method's maps of several
    prompts or images compare by colour; ``"all"`` one scale for every map (when the methods' units agree);
    ``"per_map"`` one each. ``clip``: a percentile for the scale's top (shown on the bar). ``view``:
    ``"overlay"``, ``"contour"`` or ``"masked"``. ``images=True`` adds a
    first column with the image untouched. The figure's ``colour_scales`` lists each map's scale."""
    explanations = [explanations] if not isinstance(explanations, (list, tuple)) else list(explanations)
    explanations = [e for e in explanations if e.side == "image"]
    if not explanations:
        raise ValueError("plot() draws image-side explanations; none were given")
    if columns not in ("text", "method"):
        raise ValueError("columns must be 'text' or 'method'")
    scales = scales_of(explanations, scale, clip)
    other = "method" if columns == "text" else "text"
    column_names = list(dict.fromkeys(getattr(e, columns) for e in explanations))
    row_keys = list(dict.fromkeys((_key(e), getattr(e, other)) for e in explanations))
    cells = {((_key(e), getattr(e, other)), getattr(e, columns)): index for index, e in enumerate(explanations)}
    canvases = {}
    for e in explanations:
        if _key(e) not in canvases:
            canvases[_key(e)] = Canvas(e, max_pixels=max_pixels)
    aspect = canvases[row_keys[0][0]].aspect
    lead = 1 if images else 0
    # one bar per row (beside its last panel) when every map of the row has the same scale, else one per map
    row_scales = {}
    for (key, name), index in cells.items():
        row_scales.setdefault(key, set()).add(scales[index])
    one_bar_per_row = all(len(found) == 1 for found in row_scales.values())
    ratios = [aspect] * (lead + len(column_names))
    bar_room = 0.75 if one_bar_per_row else 0.75 * len(column_names)
    figure = _figure_class()(
        figsize=(
            panel_height * sum(ratios) + 0.12 * len(ratios) + bar_room + 0.35,
            (panel_height + 0.5) * len(row_keys) + 0.3,
        ),
        layout="constrained",
    )
    axes = figure.subplots(len(row_keys), len(ratios), squeeze=False, width_ratios=ratios)
    for row, key in enumerate(row_keys):
        canvas = canvases[key[0]]
        sample = next(e for e in explanations if _key(e) == key[0])
        row_label = f"{_image_name(sample)}\n" + (
            key[1] if columns == "text" else f'"{textwrap.shorten(key[1] or "", 28, placeholder="...")}"'
        )
        if images:
            draw_image(axes[row, 0], canvas)
            axes[row, 0].set_title(f"image, {canvas.size_text()}", fontsize=FONT["title"])
        axes[row, 0].set_ylabel(row_label, fontsize=FONT["label"])
        last = None
        for column, name in enumerate(column_names):
            cell = axes[row, column + lead]
            index = cells.get((key, name))
            if index is None:
                cell.axis("off")
                continue
            explanation = explanations[index]
            draw_map(cell, explanation, canvas, scales[index], view)
            label = prompt_text(explanation) if columns == "text" else explanation.method
            warn = "  (!)" if explanation.warnings else ""
            score = _score_line(explanation).replace(" (", "\n(", 1)  # a grid cell is narrow: the check on its own line
            cell.set_title(f"{label}\n{score}{warn}", fontsize=FONT["title"])
            if not one_bar_per_row:
                colour_bar(figure, cell, scales[index], view, label=False)
            last = index, cell
        if one_bar_per_row and last is not None:
            colour_bar(figure, last[1], scales[last[0]], view)
    shared = {
        "shared": "one colour scale per method (its maps share units)",
        "all": "one colour scale for every map",
        "per_map": "each map on its own colour scale",
    }[scale]
    figure.suptitle(
        f"{explanations[0].model_id}: {shared} (raw values, 0 marked on the bar)", fontsize=FONT["title"] + 1
    )
    _notes(figure, explanations)
    figure.colour_scales = scales
    return figure


def comparison_figure(
    explanations: Sequence[Any],
    *,
    scale: str = "shared",
    clip: float | None = None,
    view: str = "overlay",
    max_pixels: int = DRAW_MAX_PIXELS,
):
    """The maps of one image (``explain IMAGE --text a --text b --methods x,y,z``): a row per method, a column
    per prompt, each method's row on one colour scale by default (``scale="all"``: one for every map)."""
    return plot(list(explanations), columns="text", scale=scale, clip=clip, view=view, max_pixels=max_pixels)


def map_card_png(patch_map: Any, image: Any, width: int = 128, scale: ColourScale | None = None) -> tuple[bytes, str]:
    """A small card for report grids: ``image`` (the region the map covers) scaled to ``width`` px, the raw
    map over it on ``scale`` (default: the map's own, from 0), and the scale's colour strip on the right with
    a black mark at zero; returns the PNG and the scale as text for its caption. Cheap (PIL only)."""
    import torch
    from PIL import Image

    from faithclip.mapmath import upsample

    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture = picture.convert("RGB")
    height = max(1, round(width * picture.height / picture.width))
    resample = Image.Resampling.BICUBIC if picture.width < width else Image.Resampling.LANCZOS
    base = np.asarray(picture.resize((width, height), resample), dtype=np.float64) / 255
    values = np.asarray(
        patch_map.detach().double() if isinstance(patch_map, torch.Tensor) else patch_map, dtype=np.float64
    )
    scale = scale or colour_scale([values])
    rgba = scale.rgba(upsample(torch.from_numpy(values), (height, width)).numpy())
    alpha = rgba[..., 3:4]
    blended = base * (1 - alpha) + rgba[..., :3] * alpha
    from matplotlib import colormaps

    ramp_values = np.linspace(scale.high, scale.low, height)  # top = the scale's top
    ramp = colormaps[scale.cmap](scale.position(ramp_values))[:, None, :3].repeat(8, axis=1)  # (height, 8, 3)
    zero = int(np.argmin(np.abs(ramp_values)))
    ramp[max(0, zero - 1) : zero + 1] = 0.0  # the zero mark
    canvas = np.ones((height, width + 12, 3))
    canvas[:, :width] = blended
    canvas[:, width + 4 :] = ramp
    buffer = io.BytesIO()
    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue(), f"scale {tick_text(scale.low)} to {tick_text(scale.high)}"


__all__ = [
    "Canvas",
    "FORMATS",
    "VIEWS",
    "bounded_rgb",
    "comparison_figure",
    "explanation_figure",
    "figure_bytes",
    "figure_png",
    "map_card_png",
    "plot",
    "title_of",
]
