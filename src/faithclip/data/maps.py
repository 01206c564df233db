"""Explanation maps as files: the format ``--save-maps`` writes and ``evaluate --maps DIR`` reads.

One file per (image, text, method), named ``<case>__<method>.npz`` (or ``.npy``), where ``<case>`` is the
evaluation case id with every character other than letters, digits, ``-``, ``_`` and ``.`` replaced by
``_`` (``scene00003``; VOC: ``2007_000032_aeroplane`` for the case ``2007_000032:aeroplane``) and
``<method>`` any name without ``__`` (a faithclip method, or your tool's name: ``captum_ig``).

``.npz`` keys (``numpy.savez``): ``map`` (2-D float array, required), ``space`` (``"patch"``, ``"crop"`` or
``"image"``; inferred from the shape when absent), and, written by faithclip and optional when read, ``case``,
``text``, ``method``, ``model``, ``region`` and ``image_size``. ``.npy``: the bare 2-D array, space inferred.

Spaces and the crop convention (the model's own preprocessing, ``faithclip.models.preprocess``): the image
is resized so its short edge is the model's size (long edge floored), then centre-cropped to the model's
``(H, W)`` input (offset per the pipeline's rounding rule; ``model.preprocess_rules``).

- ``patch``: ``(gh, gw)``, the model's patch grid over that crop (what every method returns);
- ``crop``: ``(H, W)``, one value per pixel of that crop;
- ``image``: ``(H0, W0)``, one value per pixel of the image as read (EXIF orientation per the pipeline), NaN
  allowed outside the crop's region. Read by bilinear sampling at each crop pixel's centre, mapped to the
  image through the resize's scale, inside the map's finite rectangle (edge values repeat at its border).

Metrics receive ``patch`` maps as they are (they upsample bilinearly, ``align_corners=False``) and
``crop`` / ``image`` maps at the crop's resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faithclip.errors import FaithclipError
from faithclip.models.preprocess import ImagePreprocess

MAP_SPACES = ("patch", "crop", "image")
SEPARATOR = "__"


class MapsError(FaithclipError):
    """A maps folder or file does not follow the documented format."""


def file_stem(case_id: str, method: str) -> str:
    """``<case>__<method>``: the name of a map file without its suffix."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)
    return f"{safe}{SEPARATOR}{method}"


def write_map(
    directory: str | Path,
    case_id: str,
    method: str,
    values: Any,
    space: str = "patch",
    stem: str | None = None,
    **meta: Any,
) -> Path:
    """Write one ``.npz`` map (atomically) as ``<stem>.npz`` (default ``file_stem(case_id, method)``);
    ``meta``: optional keys (text, model, region, image_size)."""
    import io

    from faithclip.files import write_atomic

    if space not in MAP_SPACES:
        raise ValueError(f"space must be one of {MAP_SPACES}, got {space!r}")
    array = (
        values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    )
    buffer = io.BytesIO()
    extra = {k: np.asarray(v) for k, v in meta.items() if v is not None}
    np.savez(buffer, map=array, space=np.asarray(space), case=np.asarray(case_id), method=np.asarray(method), **extra)
    return write_atomic(Path(directory) / f"{stem or file_stem(case_id, method)}.npz", buffer.getvalue())


@dataclass
class MapFile:
    path: Path
    case: str  # the file's case part (sanitised id)
    method: str

    def read(self) -> tuple[np.ndarray, str | None]:
        """The 2-D float64 array and its declared space (None: infer)."""
        try:
            if self.path.suffix == ".npy":
                values, space = np.load(self.path, allow_pickle=False), None
            else:
                with np.load(self.path, allow_pickle=False) as archive:
                    if "map" not in archive:
                        raise MapsError(f"{self.path} has no 'map' array; write it with numpy.savez(path, map=...).")
                    values = archive["map"]
                    space = str(archive["space"]) if "space" in archive else None
        except (OSError, ValueError) as error:
            raise MapsError(f"{self.path} is not a readable .npy/.npz file ({error}).") from error
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
            raise MapsError(
                f"{self.path}: the map must be a 2-D numeric array, got shape {values.shape} of {values.dtype}."
            )
        if space is not None and space not in MAP_SPACES:
            raise MapsError(f"{self.path}: space {space!r} is not one of {', '.join(MAP_SPACES)}.")
        return values.astype(np.float64), space


class MapFolder:
    """The maps of a folder, by (case, method)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MapsError(f"--maps {self.root} is not a directory of .npy/.npz map files.")
        self.files: dict[tuple[str, str], MapFile] = {}
        for path in sorted(self.root.iterdir()):
            if path.suffix not in (".npy", ".npz") or SEPARATOR not in path.stem:
                continue
            case, _, method = path.stem.rpartition(SEPARATOR)
            if (case, method) in self.files:
                raise MapsError(f"{self.root} holds two maps of {case} / {method} (.npy and .npz); keep one.")
            self.files[(case, method)] = MapFile(path, case, method)
        if not self.files:
            raise MapsError(f"{self.root} holds no map files named <case>{SEPARATOR}<method>.npy or .npz.")

    @property
    def methods(self) -> list[str]:
        return sorted({method for _, method in self.files})

    def fingerprint(self) -> str:
        """SHA-256 (16 hex) over every map file's name and bytes: the run identity covers the maps' content."""
        digest = hashlib.sha256()
        for (case, method), entry in sorted(self.files.items()):
            digest.update(f"{case}{SEPARATOR}{method}{entry.path.suffix}\0".encode())
            digest.update(hashlib.sha256(entry.path.read_bytes()).digest())
        return digest.hexdigest()[:16]

    def missing(self, case_ids: list[str], methods: list[str]) -> list[str]:
        return [
            file_stem(case, method)
            for case in case_ids
            for method in methods
            if (file_stem(case, method).rpartition(SEPARATOR)[0], method) not in self.files
        ]

    def patch_map(
        self, case_id: str, method: str, preprocess: ImagePreprocess, grid: tuple[int, int], image_size: tuple[int, int]
    ) -> torch.Tensor:
        """The map a metric receives: ``(gh, gw)`` as stored for patch maps, ``(H, W)`` of the crop otherwise.
        ``image_size`` is the original image's ``(width, height)``."""
        entry = self.files[(file_stem(case_id, method).rpartition(SEPARATOR)[0], method)]
        values, space = entry.read()
        crop = (preprocess.crop_height, preprocess.crop_width)
        width, height = image_size
        shapes = {"patch": tuple(grid), "crop": crop, "image": (height, width)}
        if space is None:
            matching = [name for name, shape in shapes.items() if shape == values.shape]
            if not matching:
                raise MapsError(
                    f"{entry.path}: a {values.shape} map fits none of the patch grid {grid}, the crop {crop} "
                    f"or the image {(height, width)}."
                )
            space = matching[0]
        if values.shape != shapes[space]:
            raise MapsError(f"{entry.path}: a {space} map must be {shapes[space]}, got {values.shape}.")
        if space == "image":
            return image_to_crop(values, preprocess, image_size, entry.path)
        if not np.isfinite(values).all():
            raise MapsError(f"{entry.path}: the map holds NaN or infinite values.")
        return torch.from_numpy(values)


def image_to_crop(
    values: np.ndarray, preprocess: ImagePreprocess, image_size: tuple[int, int], name: Any = "map"
) -> torch.Tensor:
    """An ``(H0, W0)`` map on the original image -> ``(H, W)`` on the model's crop: bilinear samples at each
    crop pixel's centre, mapped through the resize's scale, inside the map's finite rectangle."""
    width, height = image_size
    finite = np.isfinite(values)
    rows, cols = np.flatnonzero(finite.any(axis=1)), np.flatnonzero(finite.any(axis=0))
    if rows.size == 0:
        raise MapsError(f"{name}: the map has no finite value.")
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    block = values[top:bottom, left:right]
    if not np.isfinite(block).all():
        raise MapsError(f"{name}: NaN inside the map's region; NaN is allowed only outside the crop.")
    resized_w, resized_h = preprocess.resized_size(width, height)
    crop_left, crop_top, crop_right, crop_bottom = preprocess.crop_box(width, height)
    # crop pixel centres in original-image pixel units (edges at integers)
    xs = (torch.arange(crop_left, crop_right, dtype=torch.float64) + 0.5) * width / resized_w  # (W,)
    ys = (torch.arange(crop_top, crop_bottom, dtype=torch.float64) + 0.5) * height / resized_h  # (H,)
    if xs[0] < left or xs[-1] > right or ys[0] < top or ys[-1] > bottom:
        raise MapsError(f"{name}: the map's finite region does not cover the model's crop.")
    gx = 2 * (xs - left) / (right - left) - 1  # grid_sample coordinates, align_corners=False
    gy = 2 * (ys - top) / (bottom - top) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # (1, H, W, 2) as (x, y)
    source = torch.from_numpy(np.ascontiguousarray(block))[None, None]  # (1, 1, h, w)
    sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, 0]  # (H, W)
