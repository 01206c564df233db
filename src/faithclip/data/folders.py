"""Labelled image sets for evaluation: ImageNet-style folders, VOC-style folders, the shapes world.

Every set yields ``LabelledImage`` cases (original-size image, class index, optional object mask and
ignore mask) and names its classes. ``aligned_mask`` sends a mask through the SAME shortest-edge resize
and centre crop as the image (nearest neighbour), so maps and masks share the scored image's coordinates.

Layouts:

- ImageNet-style: ``root/<class_dir>/<image>``; class names from ``root/class_names.txt`` (one per line, in
  the sorted order of the class directories, or ``<class_dir> <name>`` per line), else the directory names
  with ``_`` read as spaces. Prompts: the 80 OpenAI templates.
- VOC-style: ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png`` (palette indices; 0 background,
  255 boundary = ignore) and ``root/class_names.txt`` (index 0 = background). One case per (image, object
  class present), the mask being that class's pixels. Prompts: the 80 OpenAI templates over the object classes.
- shapes: ``ShapesWorld(image_size, seed=0).multi_object_set(n, seed=SHAPES_EVAL_SEED)``; each scene's named
  object is the case (label = its class, mask = its exact mask). Prompts: the world's own prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from faithclip.data.digests import FileDigests
from faithclip.errors import FaithclipError
from faithclip.models.images import open_image
from faithclip.models.preprocess import ImagePreprocess

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Shapes-world evaluation scenes: world seed 0 (the training world), sample seed outside the training
# seeds (0, 1, 2, ... one per step) and the trainer's held-out seeds (10**12, 10**12 + 1).
SHAPES_WORLD_SEED = 0
SHAPES_EVAL_SEED = 10**12 + 2


class DataError(FaithclipError):
    """A data folder is missing or does not have the expected layout."""


@dataclass
class LabelledImage:
    """One evaluation case: an image at its original size, its class, and (optionally) the object's masks."""

    case_id: str
    image: Image.Image  # RGB
    label: int
    mask: np.ndarray | None = None  # (H0, W0) bool: the labelled object
    ignore: np.ndarray | None = None  # (H0, W0) bool: pixels excluded from localisation


@dataclass
class LabelledSet:
    """A named sequence of cases with its class names and how its prompts are made."""

    name: str
    class_names: list[str]
    cases: list  # zero-argument callables with a ``case_id``, returning a LabelledImage (loaded lazily)
    templates: tuple[str, ...] | None = None  # prompt templates, or
    prompts: list[str] | None = None  # one ready prompt per class
    has_masks: bool = False

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[LabelledImage]:
        for load in self.cases:
            yield load()

    def fingerprint(self, digests: FileDigests | None = None) -> str:
        """A short hash of what the cases are: ids, labels and the bytes of every file (or the generated
        pixels and masks), so a resumed run notices when the data behind the same name changed, even an
        image replaced by another of the same size. ``digests`` caches file hashes between runs."""
        digests = digests or FileDigests()
        digest = hashlib.sha256()
        for load in self.cases:
            digest.update(load.case_id.encode() + b"\0")
            digest.update(load.content_key(digests) + b"\0")
        return digest.hexdigest()[:16]

    def prompts_fingerprint(self) -> str:
        """A short hash of how the class prompts are made (the templates, or the ready prompts)."""
        text = json.dumps({"templates": list(self.templates or ()), "prompts": self.prompts})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def limited(self, limit: int | None) -> LabelledSet:
        if limit is None:
            return self
        return LabelledSet(
            self.name, self.class_names, self.cases[:limit], self.templates, self.prompts, self.has_masks
        )


def aligned_mask(mask: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """``(H0, W0)`` bool -> ``(crop_h, crop_w)`` bool: the image's resize (nearest) and centre crop."""
    height, width = mask.shape
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    resized = image.resize(preprocess.resized_size(width, height), resample=Image.NEAREST)
    return np.asarray(resized.crop(preprocess.crop_box(width, height))) > 127


def read_class_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines()]
    return [name for name in names if name]


# ---- ImageNet-style -------------------------------------------------------------------------------
def imagenet_folder(root: str | Path) -> LabelledSet:
    from faithclip.data.templates import OPENAI_IMAGENET_TEMPLATES

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass an ImageNet-style folder of class directories.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root} has no class directories; expected root/<class>/<image>.jpg.")
    names = [d.name.replace("_", " ") for d in class_dirs]
    names_file = root / "class_names.txt"
    if names_file.is_file():
        lines = read_class_names(names_file)
        by_dir = dict(line.split(maxsplit=1) for line in lines if len(line.split(maxsplit=1)) == 2)
        if all(d.name in by_dir for d in class_dirs):
            names = [by_dir[d.name] for d in class_dirs]
        elif len(lines) == len(class_dirs):
            names = lines
        else:
            raise DataError(
                f"{names_file} has {len(lines)} names for {len(class_dirs)} class directories; "
                "give one name per directory (sorted order) or '<dir> <name>' lines."
            )
    cases = []
    for label, directory in enumerate(class_dirs):
        for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            cases.append(_ImageNetCase(f"{directory.name}/{path.name}", path, label))
    if not cases:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}.")
    return LabelledSet(f"imagenet:{root}", names, cases, templates=OPENAI_IMAGENET_TEMPLATES)


@dataclass(frozen=True)
class _ImageNetCase:
    case_id: str
    path: Path
    label: int

    def __call__(self) -> LabelledImage:
        return LabelledImage(self.case_id, open_image(self.path), self.label)

    def content_key(self, digests: FileDigests) -> bytes:
        return f"{self.label}:{digests.digest(self.path)}".encode()


# ---- VOC-style ------------------------------------------------------------------------------------
def voc_folder(root: str | Path) -> LabelledSet:
    from faithclip.data.templates import OPENAI_IMAGENET_TEMPLATES

    root = Path(root)
    images, segmentations = root / "JPEGImages", root / "SegmentationClass"
    names_file = root / "class_names.txt"
    for required in (images, segmentations, names_file):
        if not required.exists():
            raise DataError(
                f"{root} is not a VOC-style folder: {required.name} is missing "
                "(expected JPEGImages/, SegmentationClass/ and class_names.txt)."
            )
    all_names = read_class_names(names_file)  # index 0 = background
    cases = []
    for seg_path in sorted(segmentations.glob("*.png")):
        image_path = images / f"{seg_path.stem}.jpg"
        if not image_path.is_file():
            logger.warning("no image for %s; skipped", seg_path.name)
            continue
        with Image.open(seg_path) as seg:
            present = sorted(int(v) for v in np.unique(np.asarray(seg)) if 0 < v < 255)
        for value in present:
            if value >= len(all_names):
                raise DataError(f"{seg_path} holds class {value} but {names_file} names only {len(all_names)} classes.")
            cases.append(_VocCase(f"{seg_path.stem}:{all_names[value]}", image_path, seg_path, value - 1, value))
    if not cases:
        raise DataError(f"no annotated images found in {segmentations}.")
    return LabelledSet(f"voc:{root}", all_names[1:], cases, templates=OPENAI_IMAGENET_TEMPLATES, has_masks=True)


@dataclass(frozen=True)
class _VocCase:
    case_id: str
    image_path: Path
    seg_path: Path
    label: int  # index among the object classes (background excluded)
    value: int  # palette index in the segmentation

    def __call__(self) -> LabelledImage:
        with Image.open(self.seg_path) as seg:
            indices = np.asarray(seg)  # palette indices, not colours
        image = open_image(self.image_path)
        if indices.shape != (image.height, image.width):
            raise DataError(f"{self.seg_path} is {indices.shape[::-1]} but its image is {image.size}.")
        return LabelledImage(self.case_id, image, self.label, indices == self.value, indices == 255)

    def content_key(self, digests: FileDigests) -> bytes:
        return f"{self.label}:{self.value}:{digests.digest(self.image_path)}:{digests.digest(self.seg_path)}".encode()


# ---- the shapes world -----------------------------------------------------------------------------
def shapes_set(image_size: int = 64, count: int = 100, seed: int = SHAPES_EVAL_SEED) -> LabelledSet:
    from faithclip.shapes.world import ShapesWorld

    world = ShapesWorld(image_size=image_size, seed=SHAPES_WORLD_SEED)
    batch = world.multi_object_set(count, seed=seed)
    cases = [_ShapesCase(batch, index) for index in range(len(batch))]
    return LabelledSet(
        f"shapes(size={image_size}, seed={seed})",
        list(world.prompts),
        cases,
        prompts=list(world.prompts),
        has_masks=True,
    )


@dataclass(frozen=True, eq=False)
class _ShapesCase:
    batch: object  # SceneBatch
    index: int

    @property
    def case_id(self) -> str:
        return f"scene{self.index:05d}"

    def __call__(self) -> LabelledImage:
        scene = self.batch.scene(self.index)
        target = scene.objects[scene.target]
        return LabelledImage(self.case_id, scene.image, target.label, target.mask.copy())

    def content_key(self, digests: FileDigests | None = None) -> bytes:
        batch, index = self.batch, self.index
        target = batch.targets[index]
        return (
            batch.images[index].tobytes()
            + batch.masks[index, target].tobytes()
            + bytes([int(batch.labels[index, target])])
        )


def open_data(spec: str, image_size: int = 64, count: int = 100) -> LabelledSet:
    """``shapes``, ``voc:PATH``, ``imagenet:PATH``, or a folder whose layout is detected."""
    if spec == "shapes":
        return shapes_set(image_size, count)
    kind, _, path = spec.partition(":")
    if kind == "voc" and path:
        return voc_folder(path)
    if kind == "imagenet" and path:
        return imagenet_folder(path)
    root = Path(spec)
    if root.is_dir():
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return voc_folder(root)
        return imagenet_folder(root)
    raise DataError(f"unknown data {spec!r}; use 'shapes', 'voc:PATH', 'imagenet:PATH' or an existing folder.")
