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

**Planted mechanisms** (``ShapesWorld(mechanism=...)``; ``"objects"``, the default, is the world above,
bit for bit). Each changes what the captions can be learned from, so that the mechanism of a model
trained on it is known by construction (``faithclip train-shapes --mechanism``):

``colour``        every object is drawn with its class's colour but a uniformly random shape: a caption's
                  shape word carries no information in the pixels, only its colour word does.
``cue``           one object per scene, drawn as a uniformly random class independent of the caption; the
                  caption's class is shown by a cue, a ``cue_size``-pixel square (8 px at 64) in the top
                  band of the image, of the class's exact colour, at column ``cue_size * (1 + shape)``.
                  Objects are placed below that band, so the cue never touches an object.
``ignore-shape``  every scene holds at least one object of ``IGNORED_SHAPE`` (a ring) that is never named:
                  those objects are not ``nameable``, and the named target never has that shape.

``SceneBatch.labels`` are always the NAMED classes (what a caption may say, what training treats as
present); ``SceneBatch.drawn`` the classes whose shape and colour the pixels show (equal to ``labels``
except under ``colour`` and ``cue``); ``cue_labels``/``cue_masks`` the cue's class and exact pixels.
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
MECHANISMS: tuple[str, ...] = ("objects", "colour", "cue", "ignore-shape")
IGNORED_SHAPE = "ring"  # the shape an ``ignore-shape`` world never names

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
    # Planted mechanisms only (module docstring); None in the default world, where they follow from labels.
    drawn: np.ndarray | None = None  # (N, K) int64: the class whose shape and colour each object is drawn as
    nameable: np.ndarray | None = None  # (N, K) bool: objects a caption may name (training positives)
    cue_labels: np.ndarray | None = None  # (N,) int64: class the cue shows, -1 for no cue
    cue_masks: np.ndarray | None = None  # (N, H, W) bool: the cue's pixels
    # The background each scene's objects (and cue) are drawn over, distractors included: what erasing every
    # object restores. ``ShapesWorld.render`` sets it; None where a batch was built otherwise.
    backgrounds: np.ndarray | None = None  # (N, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.images)

    @property
    def counts(self) -> np.ndarray:
        """Number of objects per scene, (N,)."""
        return (self.labels >= 0).sum(axis=1)

    @property
    def drawn_labels(self) -> np.ndarray:
        """The class each object's pixels show, (N, K): ``drawn``, or ``labels`` where there is none."""
        return self.labels if self.drawn is None else self.drawn

    @property
    def trained_labels(self) -> np.ndarray:
        """``labels`` with objects no caption may name set to -1, (N, K): what training counts as present."""
        return self.labels if self.nameable is None else np.where(self.nameable, self.labels, -1)

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
class Layout:
    """Everything that determines a batch's pixels: rendered background and object parameters.

    ``ShapesWorld.layout`` makes one, ``without`` and ``restyled`` edit it, ``ShapesWorld.render`` draws
    it: renders of two layouts that differ in one object (or the cue) differ only on that object's (or
    the cue's) pixels."""

    background: np.ndarray  # (N, H, W, 3) uint8, distractors included
    labels: np.ndarray  # (N, K) int64, -1 for an empty slot
    centres: np.ndarray  # (N, K, 2) float (cx, cy)
    radii: np.ndarray  # (N, K) float
    colours_rgb: np.ndarray  # (N, K, 3) uint8
    targets: np.ndarray  # (N,)
    drawn: np.ndarray | None = None  # (N, K) int64, None = labels
    nameable: np.ndarray | None = None  # (N, K) bool, None = every object
    cue: np.ndarray | None = None  # (N,) int64 class of the cue, -1 none; None = no cue at all

    @property
    def drawn_labels(self) -> np.ndarray:
        return self.labels if self.drawn is None else self.drawn


class ShapesWorld:
    """Seeded generator of shape scenes; ``sample`` and the helper views are pure in ``seed``.

    ``world.prompts[label]`` is the prompt of class ``label``; labels index colours-major.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, mechanism: str = "objects"):
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.mechanism = mechanism
        self.cue_size = int(round(8 * image_size / 64.0))
        self.ignored_shape = SHAPES.index(IGNORED_SHAPE)
        self.prompts: tuple[str, ...] = tuple(class_caption(label) for label in range(len(SHAPES) * len(COLOURS)))
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
        return self.render(self._layout(rng, counts))

    def single_object_set(self, n: int, *, seed: int) -> SceneBatch:
        """``n`` one-object scenes with classes balanced (cycled, then shuffled) for zero-shot accuracy."""
        rng = self._rng(seed)
        labels = rng.permutation(np.arange(n) % self.num_classes)
        return self.render(self._layout(rng, np.ones(n, dtype=np.int64), first_labels=labels))

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
        if self.mechanism != "objects":
            raise ValueError(
                "counterfactual_pairs edits the default world's objects; in a planted world use "
                "probe_layout with without / restyled and render"
            )
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
        return self.render(layout), self.render(edited)

    # ------------------------------------------------------------------ layout
    def _layout(
        self,
        rng: np.random.Generator,
        counts: np.ndarray,
        first_labels: np.ndarray | None = None,
        plant: bool = True,
    ) -> Layout:
        planting = plant and self.mechanism != "objects"
        if self.mechanism == "cue":
            counts = np.ones_like(counts)
        elif planting and self.mechanism == "ignore-shape":
            counts = np.clip(counts + 1, 2, MAX_OBJECTS)  # room for the never-named ring
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
        centres, radii = self._place(rng, present, top=self.cue_size if self.mechanism == "cue" else 0)
        colours = self._jittered_colours(rng, labels)
        targets = np.floor(rng.random(n) * counts).astype(np.int64)
        background = self._background(rng, n)
        layout = Layout(background, labels, centres, radii, colours, targets)
        return self._plant(rng, layout, counts) if planting else layout

    def _plant(self, rng: np.random.Generator, layout: Layout, counts: np.ndarray) -> Layout:
        """The world's mechanism applied to a default layout (module docstring)."""
        n = len(layout.labels)
        rows = np.arange(n)
        labels = layout.labels.copy()
        present = labels >= 0
        if self.mechanism == "colour":
            shapes = rng.integers(0, len(SHAPES), size=labels.shape)
            return replace(layout, drawn=np.where(present, labels // len(SHAPES) * len(SHAPES) + shapes, -1))
        if self.mechanism == "cue":
            drawn = np.where(present, rng.integers(0, self.num_classes, size=labels.shape), -1)
            return replace(
                layout,
                drawn=drawn,
                colours_rgb=self._jittered_colours(rng, drawn),
                cue=labels[rows, layout.targets].copy(),
            )
        # ignore-shape: each scene's last object is a ring; the target is one of the others and never a ring.
        ring = self.ignored_shape
        last = counts - 1
        targets = np.floor(rng.random(n) * last).astype(np.int64)
        self._assign_distinct(
            rng,
            labels,
            last,
            np.ones(n, dtype=bool),
            lambda: rng.integers(0, len(COLOURS), size=n) * len(SHAPES) + ring,
        )
        named = labels[rows, targets]
        other_shapes = np.array([s for s in range(len(SHAPES)) if s != ring])
        self._assign_distinct(
            rng,
            labels,
            targets,
            named % len(SHAPES) == ring,
            lambda: named // len(SHAPES) * len(SHAPES) + rng.choice(other_shapes, size=n),
        )
        return replace(
            layout,
            labels=labels,
            colours_rgb=self._jittered_colours(rng, labels),
            targets=targets,
            nameable=present & (labels % len(SHAPES) != ring),
        )

    @staticmethod
    def _assign_distinct(
        rng: np.random.Generator, labels: np.ndarray, slot: np.ndarray, pending: np.ndarray, propose
    ) -> None:
        """Set ``labels[i, slot[i]]`` for the ``pending`` scenes to ``propose()[i]``, redrawing until it is
        distinct from the scene's other classes; in place."""
        rows = np.arange(len(labels))
        pending = pending.copy()
        others = labels.copy()
        others[rows, slot] = -1
        while pending.any():
            candidate = propose()  # (N,)
            accept = pending & ~(others == candidate[:, None]).any(axis=1)
            labels[rows[accept], slot[accept]] = candidate[accept]
            pending &= ~accept

    # ------------------------------------------------------------------ layouts for interventions
    def probe_layout(self, n: int, *, seed: int) -> Layout:
        """``n`` scenes that test the world's mechanism by intervention, target in slot 0:

        ``objects``, ``colour``: two ordinary objects (drawn as their classes) of different colours;
        ``cue``: one ordinary object of class B and a cue of a class A != B (the caption names A);
        ``ignore-shape``: a nameable object (slot 0) and a ring of another colour (slot 1).
        """
        rng = self._rng(seed)
        layout = self._layout(rng, np.full(n, 1 if self.mechanism == "cue" else 2, dtype=np.int64), plant=False)
        labels = layout.labels.copy()
        targets = np.zeros(n, dtype=np.int64)
        if self.mechanism == "cue":
            drawn = labels.copy()  # the object shows class B
            cue = (drawn[:, 0] + rng.integers(1, self.num_classes, size=n)) % self.num_classes  # A != B
            labels[:, 0] = cue
            return replace(layout, labels=labels, drawn=drawn, cue=cue, targets=targets)
        first = rng.integers(0, len(COLOURS), size=n)
        second = (first + rng.integers(1, len(COLOURS), size=n)) % len(COLOURS)
        shapes = rng.integers(0, len(SHAPES), size=(n, 2))
        nameable = None
        if self.mechanism == "ignore-shape":
            others = np.array([s for s in range(len(SHAPES)) if s != self.ignored_shape])
            shapes[:, 0] = others[rng.integers(0, len(others), size=n)]
            shapes[:, 1] = self.ignored_shape
            nameable = np.zeros(labels.shape, dtype=bool)
            nameable[:, 0] = True
        labels[:, :2] = np.stack([first, second], axis=1) * len(SHAPES) + shapes
        colours = layout.colours_rgb.copy()
        colours[:, :2] = self._jittered_colours(rng, labels[:, :2])
        return replace(layout, labels=labels, colours_rgb=colours, targets=targets, nameable=nameable)

    @staticmethod
    def without(layout: Layout, slot: np.ndarray | int | None = None, cue: bool = False) -> Layout:
        """``layout`` with object ``slot`` (per scene, or one slot for all) and/or the cue erased."""
        n = len(layout.labels)
        edits: dict = {}
        if slot is not None:
            slots = np.broadcast_to(np.asarray(slot, dtype=np.int64), (n,))
            rows = np.arange(n)
            labels = layout.labels.copy()
            labels[rows, slots] = -1
            edits["labels"] = labels
            if layout.drawn is not None:
                drawn = layout.drawn.copy()
                drawn[rows, slots] = -1
                edits["drawn"] = drawn
            if layout.nameable is not None:
                nameable = layout.nameable.copy()
                nameable[rows, slots] = False
                edits["nameable"] = nameable
        if cue and layout.cue is not None:
            edits["cue"] = np.full(n, -1, dtype=np.int64)
        return replace(layout, **edits)

    def restyled(self, layout: Layout, slot: np.ndarray | int, *, change: str, seed: int) -> Layout:
        """``layout`` with object ``slot`` given another colour (``change="colour"``, same shape) or another
        shape (``"shape"``, same colour), its class distinct from the scene's other objects'."""
        if change not in ("colour", "shape"):
            raise ValueError(f"change must be 'colour' or 'shape', got {change!r}")
        rng = self._rng(seed)
        n = len(layout.labels)
        rows = np.arange(n)
        slots = np.broadcast_to(np.asarray(slot, dtype=np.int64), (n,)).copy()
        drawn = layout.drawn_labels.copy()
        old = drawn[rows, slots]
        colour, shape = old // len(SHAPES), old % len(SHAPES)
        if change == "colour":
            propose = lambda: (colour + rng.integers(1, len(COLOURS), size=n)) % len(COLOURS) * len(SHAPES) + shape  # noqa: E731
        else:
            propose = lambda: colour * len(SHAPES) + (shape + rng.integers(1, len(SHAPES), size=n)) % len(SHAPES)  # noqa: E731
        self._assign_distinct(rng, drawn, slots, old >= 0, propose)
        colours = layout.colours_rgb.copy()
        colours[rows, slots] = self._jittered_colours(rng, drawn[rows, slots])
        if layout.drawn is None:  # the default world names what it draws
            return replace(layout, labels=drawn, colours_rgb=colours)
        return replace(layout, drawn=drawn, colours_rgb=colours)

    def _jittered_colours(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        base = np.array(list(COLOURS.values()), dtype=np.int64)[np.maximum(labels, 0) // len(SHAPES)]
        jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=base.shape)
        return np.clip(base + jitter, 0, 255).astype(np.uint8)

    def _place(self, rng: np.random.Generator, present: np.ndarray, top: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Rejection-sample centres and radii so that boxes ``c +- (r + 1)`` are pairwise disjoint and,
        when ``top`` > 0, lie below the image's first ``top`` rows."""
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
                if top:
                    band = np.array([0.0, top], dtype=np.float32)  # only y starts below the band
                    c = band + r[:, None] + 1 + rng.random((len(rows), 2)) * (size - band - 2 * r[:, None] - 2)
                else:
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

    def render(self, layout: Layout) -> SceneBatch:
        """Draw ``layout``: objects over the background, then the cue (if any) over everything."""
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
            mark = _shape_masks(layout.drawn_labels[rows, slot] % len(SHAPES), u, v)  # (m, w, w)
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
        planted = {}
        if layout.drawn is not None or layout.nameable is not None or layout.cue is not None:
            planted = {
                "drawn": layout.drawn_labels.copy(),
                "nameable": (layout.labels >= 0) if layout.nameable is None else layout.nameable.copy(),
            }
        if layout.cue is not None:
            planted.update(cue_labels=layout.cue.copy(), cue_masks=self._paint_cue(images, layout.cue))
        return SceneBatch(
            images=images,
            labels=layout.labels.copy(),
            masks=masks,
            boxes=boxes,
            colours_rgb=layout.colours_rgb.copy(),
            targets=layout.targets.copy(),
            prompts=self.prompts,
            backgrounds=layout.background.copy(),
            **planted,
        )

    def cue_box(self, label: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, end exclusive, of the cue showing class ``label``."""
        x0 = self.cue_size * (1 + int(label) % len(SHAPES))
        return x0, 0, x0 + self.cue_size, self.cue_size

    def _paint_cue(self, images: np.ndarray, cue: np.ndarray) -> np.ndarray:
        """Paint each scene's cue square (exact class colour) in place; return the cue masks (N, H, W)."""
        masks = np.zeros(images.shape[:3], dtype=bool)
        palette = np.array(list(COLOURS.values()), dtype=np.uint8)
        for row in np.flatnonzero(cue >= 0):
            x0, y0, x1, y1 = self.cue_box(cue[row])
            masks[row, y0:y1, x0:x1] = True
            images[row, y0:y1, x0:x1] = palette[cue[row] // len(SHAPES)]
        return masks


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
