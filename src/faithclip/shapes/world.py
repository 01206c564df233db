"""The synthetic scene world: coloured shapes on textured backgrounds, with exact ground truth.

No pretrained CLIP can be downloaded here, so faithclip trains its own small CLIP on a world whose
truth is known by construction. Every scene holds 1-4 non-overlapping objects, each one of
``len(SHAPES) x len(COLOURS)`` classes, drawn as a flat fill of its (slightly jittered) colour over a
desaturated textured background that also carries distractors (thin grey lines and small blobs that
are not objects). For every object the world returns its exact boolean pixel mask, its box and its
caption ("a red circle"); for every scene, the list of all class prompts in a fixed order.

Everything is vectorised over the batch with numpy and fully determined by ``(world.seed, seed)``.

Geometry, in coordinates normalised by an object's radius ``r`` around its centre
(``u = (x + 0.5 - cx) / r``, ``v = (y + 0.5 - cy) / r`` at pixel centres)::

    circle    u^2 + v^2 <= 1
    ring      0.55^2 <= u^2 + v^2 <= 1
    square    |u| <= 0.8  and  |v| <= 0.8
    triangle  -0.9 <= v <= 0.8  and  |u| <= (v + 0.9) / 1.7
    cross     (|u| <= 0.3 and |v| <= 1)  or  (|v| <= 0.3 and |u| <= 1)

Objects are placed by rejection so that their boxes ``[c - r - 1, c + r + 1]`` are disjoint, hence
their masks never overlap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 185, 60),
    "blue": (45, 75, 225),
    "yellow": (235, 215, 45),
    "purple": (165, 55, 210),
    "cyan": (40, 205, 215),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
MAX_OBJECTS = 4

_COLOUR_JITTER = 12  # per-channel uniform jitter of an object's colour
_RADIUS_RANGE = (7.0, 13.0)  # object radius in pixels at 64 px
_MAX_DISTRACTORS = 5


def class_caption(label: int) -> str:
    """Caption of class ``label = colour_index * len(SHAPES) + shape_index``, e.g. "a red circle"."""
    colour, shape = divmod(int(label), len(SHAPES))
    return f"a {COLOUR_NAMES[colour]} {SHAPES[shape]}"


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its class, exact pixel mask and box ``(x0, y0, x1, y1)``, end exclusive."""

    label: int
    mask: np.ndarray  # (H, W) bool
    box: tuple[int, int, int, int]
    rgb: tuple[int, int, int]

    @property
    def shape(self) -> str:
        return SHAPES[self.label % len(SHAPES)]

    @property
    def colour(self) -> str:
        return COLOUR_NAMES[self.label // len(SHAPES)]

    @property
    def caption(self) -> str:
        return class_caption(self.label)


@dataclass(frozen=True)
class Scene:
    """One scene: pixels, its objects, the world's class prompts, and which object a caption names."""

    pixels: np.ndarray  # (H, W, 3) uint8
    objects: tuple[SceneObject, ...]
    prompts: tuple[str, ...]
    target: int  # index into ``objects`` of the named object

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="RGB")

    @property
    def captions(self) -> list[str]:
        return [obj.caption for obj in self.objects]

    @property
    def caption(self) -> str:
        """Caption naming the target object."""
        return self.objects[self.target].caption


@dataclass(frozen=True)
class SceneBatch:
    """A batch of scenes as arrays; object slots beyond a scene's count hold label -1 and empty masks."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N, K) int64, -1 for an empty slot
    masks: np.ndarray  # (N, K, H, W) bool
    boxes: np.ndarray  # (N, K, 4) int64 (x0, y0, x1, y1), -1 for an empty slot
    colours_rgb: np.ndarray  # (N, K, 3) uint8
    targets: np.ndarray  # (N,) int64, slot of the named object
    prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def counts(self) -> np.ndarray:
        """Number of objects per scene, (N,)."""
        return (self.labels >= 0).sum(axis=1)

    @property
    def target_labels(self) -> np.ndarray:
        """Class of the named object per scene, (N,)."""
        return self.labels[np.arange(len(self)), self.targets]

    @property
    def target_masks(self) -> np.ndarray:
        """Mask of the named object per scene, (N, H, W)."""
        return self.masks[np.arange(len(self)), self.targets]

    @property
    def captions(self) -> list[str]:
        """Caption naming each scene's target object."""
        return [class_caption(label) for label in self.target_labels]

    def scene(self, index: int) -> Scene:
        slots = np.flatnonzero(self.labels[index] >= 0)
        objects = tuple(
            SceneObject(
                label=int(self.labels[index, k]),
                mask=self.masks[index, k],
                box=tuple(int(v) for v in self.boxes[index, k]),
                rgb=tuple(int(v) for v in self.colours_rgb[index, k]),
            )
            for k in slots
        )
        target = int(np.flatnonzero(slots == self.targets[index])[0])
        return Scene(self.images[index], objects, self.prompts, target)

    def scenes(self) -> list[Scene]:
        return [self.scene(i) for i in range(len(self))]


@dataclass(frozen=True)
class _Layout:
    """Everything that determines a batch's pixels: rendered background and object parameters."""

    background: np.ndarray  # (N, H, W, 3) uint8, distractors included
    labels: np.ndarray  # (N, K) int64, -1 for an empty slot
    centres: np.ndarray  # (N, K, 2) float (cx, cy)
    radii: np.ndarray  # (N, K) float
    colours_rgb: np.ndarray  # (N, K, 3) uint8
    targets: np.ndarray  # (N,)


class ShapesWorld:
    """Seeded generator of shape scenes; ``sample`` and the helper views are pure in ``seed``.

    ``world.prompts[label]`` is the prompt of class ``label``; labels index colours-major.
    """

    def __init__(self, image_size: int = 64, seed: int = 0):
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.prompts: tuple[str, ...] = tuple(
            class_caption(label) for label in range(len(SHAPES) * len(COLOURS))
        )
        self.num_classes = len(self.prompts)
        self._scale = self.image_size / 64.0
        # Pixel centres, used by every shape and distractor equation.
        self._grid = np.arange(self.image_size, dtype=np.float32) + 0.5

    def _rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(seed)])

    # ------------------------------------------------------------------ public views
    def sample(self, n: int, min_objects: int = 1, max_objects: int = 4, *, seed: int) -> SceneBatch:
        """``n`` scenes with a uniform number of objects in ``[min_objects, max_objects]``.

        Objects within a scene have distinct classes; the named target object is chosen uniformly.
        """
        if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}")
        rng = self._rng(seed)
        counts = rng.integers(min_objects, max_objects + 1, size=n)
        return self._render(self._layout(rng, counts))

    def single_object_set(self, n: int, *, seed: int) -> SceneBatch:
        """``n`` one-object scenes with classes balanced (cycled, then shuffled) for zero-shot accuracy."""
        rng = self._rng(seed)
        labels = rng.permutation(np.arange(n) % self.num_classes)
        return self._render(self._layout(rng, np.ones(n, dtype=np.int64), first_labels=labels))

    def multi_object_set(self, n: int, *, seed: int) -> SceneBatch:
        """``n`` scenes of 2-4 objects; ``targets`` names one object whose mask serves localisation."""
        return self.sample(n, 2, MAX_OBJECTS, seed=seed)

    def counterfactual_pairs(
        self, n: int, *, seed: int, kind: str = "recolour", min_objects: int = 1
    ) -> tuple[SceneBatch, SceneBatch]:
        """Pairs of scenes that differ in the target object only.

        ``kind="recolour"`` gives the target a different colour (its class stays distinct from the
        other objects'); ``kind="remove"`` erases it, restoring the background. Either way the two
        images differ only inside the target's mask in the first batch.
        """
        if kind not in ("recolour", "remove"):
            raise ValueError(f"kind must be 'recolour' or 'remove', got {kind!r}")
        rng = self._rng(seed)
        counts = rng.integers(min_objects, MAX_OBJECTS + 1, size=n)
        layout = self._layout(rng, counts)
        rows = np.arange(n)
        labels = layout.labels.copy()
        colours = layout.colours_rgb.copy()
        if kind == "remove":
            labels[rows, layout.targets] = -1
        else:
            old = labels[rows, layout.targets]
            shape = old % len(SHAPES)
            new = old.copy()
            pending = np.ones(n, dtype=bool)
            while pending.any():
                colour = rng.integers(0, len(COLOURS), size=n)
                candidate = colour * len(SHAPES) + shape
                clash = (labels == candidate[:, None]).any(axis=1)  # includes the old class itself
                accept = pending & ~clash
                new[accept] = candidate[accept]
                pending &= ~accept
            labels[rows, layout.targets] = new
            colours[rows, layout.targets] = self._jittered_colours(rng, new[:, None])[:, 0]
        edited = replace(layout, labels=labels, colours_rgb=colours)
        return self._render(layout), self._render(edited)

    # ------------------------------------------------------------------ layout
    def _layout(
        self, rng: np.random.Generator, counts: np.ndarray, first_labels: np.ndarray | None = None
    ) -> _Layout:
        n, k = len(counts), MAX_OBJECTS
        # Distinct classes per scene: the first `k` of a random permutation of all classes.
        order = np.argsort(rng.random((n, self.num_classes)), axis=1)
        if first_labels is not None:
            # Move the requested class to the front, keep the rest distinct.
            order = np.where(order == first_labels[:, None], order[:, :1], order)
            order[:, 0] = first_labels
        slots = np.arange(k)[None, :]
        present = slots < counts[:, None]
        labels = np.where(present, order[:, :k], -1).astype(np.int64)
        centres, radii = self._place(rng, present)
        colours = self._jittered_colours(rng, labels)
        targets = np.floor(rng.random(n) * counts).astype(np.int64)
        background = self._background(rng, n)
        return _Layout(background, labels, centres, radii, colours, targets)

    def _jittered_colours(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        base = np.array(list(COLOURS.values()), dtype=np.int64)[np.maximum(labels, 0) // len(SHAPES)]
        jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=base.shape)
        return np.clip(base + jitter, 0, 255).astype(np.uint8)

    def _place(self, rng: np.random.Generator, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rejection-sample centres and radii so that boxes ``c +- (r + 1)`` are pairwise disjoint."""
        n, k = present.shape
        size = self.image_size
        lo, hi = (v * self._scale for v in _RADIUS_RANGE)
        centres = np.full((n, k, 2), -1e3, dtype=np.float32)
        radii = np.zeros((n, k), dtype=np.float32)
        for slot in range(k):
            pending = present[:, slot].copy()
            shrink = np.ones(n, dtype=np.float32)
            tries = 0
            while pending.any():
                rows = np.flatnonzero(pending)
                r = (lo + (hi - lo) * rng.random(len(rows))) * shrink[rows]
                r = np.maximum(r, lo * 0.7)
                c = r[:, None] + 1 + rng.random((len(rows), 2)) * (size - 2 * r[:, None] - 2)
                half = (r + 1)[:, None] + (radii[rows, :slot] + 1)  # (m, slot) sum of half-widths
                gap = np.abs(c[:, None, :] - centres[rows, :slot])  # (m, slot, 2)
                clash = ((gap < half[..., None]).all(axis=2) & present[rows, :slot]).any(axis=1)
                ok = rows[~clash]
                centres[ok, slot] = c[~clash]
                radii[ok, slot] = r[~clash]
                pending[ok] = False
                tries += 1
                if tries % 20 == 0:
                    shrink[pending] *= 0.9  # crowded scene: try smaller objects
                if tries > 400:
                    raise RuntimeError("could not place objects; this is a bug in ShapesWorld")
        return centres, radii

    # ------------------------------------------------------------------ rendering
    def _background(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Desaturated textured background (gradient + noise/stripes/blotches) with distractors."""
        size = self.image_size
        grid = self._grid / size - 0.5  # (S,) in [-0.5, 0.5]
        f32 = np.float32
        grey = rng.uniform(60, 200, size=(n, 1, 1)).astype(f32)
        tint = rng.uniform(-12, 12, size=(n, 1, 1, 3)).astype(f32)
        angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(f32)
        slope = rng.uniform(-40, 40, size=(n, 1, 1)).astype(f32)
        amplitude = rng.uniform(4, 20, size=(n, 1, 1)).astype(f32)
        period = rng.uniform(3, 10, size=(n, 1, 1)).astype(f32) / size
        texture_kind = rng.integers(0, 3, size=n)
        cos, sin = np.cos(angle), np.sin(angle)
        texture = rng.random((n, size, size), dtype=f32) * 2 - 1  # kind 0: fine noise, (n, S, S)
        stripes = texture_kind == 1
        # kind 1: stripes across the gradient direction
        ramp = cos[stripes] * grid[None, None, :] + sin[stripes] * grid[None, :, None]  # (m, S, S)
        texture[stripes] = np.sin(2 * np.pi * ramp / period[stripes])
        blotchy = texture_kind == 2
        cells = -(-size // 8)
        coarse = rng.random((int(blotchy.sum()), cells, cells), dtype=f32) * 2 - 1
        # kind 2: 8x8-pixel blotches plus half-strength fine noise
        blotches = coarse.repeat(8, axis=1).repeat(8, axis=2)[:, :size, :size]
        texture[blotchy] = 0.5 * texture[blotchy] + blotches
        field = amplitude * texture  # (n, S, S)
        # grey + slope * (cos x + sin y): a linear ramp, added as two broadcasts
        field += grey + (slope * cos) * grid[None, None, :]
        field += (slope * sin) * grid[None, :, None]
        np.clip(field, 12, 243, out=field)  # room for the +-12 tint: no second clip over 3 channels
        image = (field[..., None] + tint).astype(np.uint8)  # (n, S, S, 3)
        self._draw_distractors(rng, image)
        return image

    def _window(self, centre: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel indices (m, width) along x and y of a square window around each centre (m, 2)."""
        width = min(width, self.image_size)
        origin = np.clip(np.floor(centre - width / 2), 0, self.image_size - width).astype(np.int64)
        offsets = np.arange(width)[None, :]
        return origin[:, 0, None] + offsets, origin[:, 1, None] + offsets

    def _draw_distractors(self, rng: np.random.Generator, image: np.ndarray) -> None:
        """Thin grey line segments and small grey blobs, drawn in place; never objects."""
        n, size = len(image), self.image_size
        count = rng.integers(0, _MAX_DISTRACTORS + 1, size=n)
        window = int(np.ceil(20 * self._scale))
        for slot in range(_MAX_DISTRACTORS):
            rows = np.flatnonzero(count > slot)
            m = len(rows)
            start = rng.uniform(0, size, size=(m, 2)).astype(np.float32)
            angle = rng.uniform(0, 2 * np.pi, size=m)
            is_line = rng.random(m) < 0.5
            length = np.where(is_line, rng.uniform(4, 14, size=m) * self._scale, 0.0)
            width = np.where(is_line, 0.6, rng.uniform(1.0, 2.2, size=m) * self._scale)
            step = (length[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)).astype(np.float32)
            xs, ys = self._window(start + step / 2, window)  # (m, w) each
            # Distance from each pixel centre to the segment start..start+step (a blob when length is 0).
            px = (xs + 0.5 - start[:, :1])[:, None, :]  # (m, 1, w)
            py = (ys + 0.5 - start[:, 1:])[:, :, None]  # (m, w, 1)
            sx, sy = step[:, 0, None, None], step[:, 1, None, None]
            t = np.clip((px * sx + py * sy) / (sx**2 + sy**2 + 1e-6), 0, 1)  # (m, w, w)
            mark = (px - t * sx) ** 2 + (py - t * sy) ** 2 <= (width**2)[:, None, None]
            grey = rng.integers(0, 256, size=m)
            shade = np.clip(grey[:, None] + rng.integers(-8, 9, size=(m, 3)), 0, 255).astype(np.uint8)
            self._paint(image, rows, xs, ys, mark, shade)

    @staticmethod
    def _paint(
        image: np.ndarray, rows: np.ndarray, xs: np.ndarray, ys: np.ndarray, mark: np.ndarray, colour: np.ndarray
    ) -> None:
        """Set ``image[rows]`` to ``colour`` (m, 3) where the window mask ``mark`` (m, w, w) is true."""
        which, wy, wx = np.nonzero(mark)  # only the marked pixels are touched
        image[rows[which], ys[which, wy], xs[which, wx]] = colour[which]

    def _render(self, layout: _Layout) -> SceneBatch:
        images = layout.background.copy()
        n, k = layout.labels.shape
        size = self.image_size
        window = int(np.ceil(2 * _RADIUS_RANGE[1] * self._scale)) + 4
        masks = np.zeros((n, k, size, size), dtype=bool)
        boxes = np.full((n, k, 4), -1, dtype=np.int64)
        for slot in range(k):
            rows = np.flatnonzero(layout.labels[:, slot] >= 0)
            if len(rows) == 0:
                continue
            centre = layout.centres[rows, slot]  # (m, 2)
            r = layout.radii[rows, slot][:, None, None]
            xs, ys = self._window(centre, window)  # (m, w) each
            u = (xs + 0.5 - centre[:, :1])[:, None, :] / r  # (m, 1, w)
            v = (ys + 0.5 - centre[:, 1:])[:, :, None] / r  # (m, w, 1)
            mark = _shape_masks(layout.labels[rows, slot] % len(SHAPES), u, v)  # (m, w, w)
            self._paint(images, rows, xs, ys, mark, layout.colours_rgb[rows, slot])
            which, wy, wx = np.nonzero(mark)
            masks[rows[which], slot, ys[which, wy], xs[which, wx]] = True
            cols, lines = mark.any(axis=1), mark.any(axis=2)  # (m, w) each
            w = mark.shape[1]
            boxes[rows, slot] = np.stack(
                [
                    xs[:, 0] + cols.argmax(1),
                    ys[:, 0] + lines.argmax(1),
                    xs[:, 0] + w - cols[:, ::-1].argmax(1),
                    ys[:, 0] + w - lines[:, ::-1].argmax(1),
                ],
                axis=1,
            )
        return SceneBatch(
            images=images,
            labels=layout.labels.copy(),
            masks=masks,
            boxes=boxes,
            colours_rgb=layout.colours_rgb.copy(),
            targets=layout.targets.copy(),
            prompts=self.prompts,
        )


def _shape_masks(shape_ids: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean masks (m, S, S) of the shapes in the module docstring, one per row of ``shape_ids``."""
    au, av = np.abs(u), np.abs(v)  # (m, 1, S), (m, S, 1)
    d2 = u**2 + v**2  # (m, S, S)
    kind = shape_ids[:, None, None]
    circle = d2 <= 1.0
    ring = circle & (d2 >= 0.55**2)
    square = (au <= 0.8) & (av <= 0.8)
    triangle = (v >= -0.9) & (v <= 0.8) & (au <= (v + 0.9) / 1.7)
    cross = ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    return np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4],
        [circle, np.broadcast_to(square, d2.shape), triangle, cross, ring],
        default=False,
    )
