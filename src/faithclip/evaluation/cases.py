"""One case of a run, computed: the scored image and its masks (``prepare``), the seed of each random draw
(``case_seed``) and its example crop for the report. The metrics' values are stored into the case's records
by ``Evaluator.run_case`` (``records.store``); the perturbed images of their curves are scored by
``streaming.ForwardStream``, in full forwards shared with the records around them."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faithclip.data.folders import LabelledImage, aligned_mask
from faithclip.explanation import write_atomic
from faithclip.methods.context import Context
from faithclip.models.clip import ModelHandle

logger = logging.getLogger(__name__)


def case_seed(seed: int, case_id: str, metric: str) -> int:
    return zlib.crc32(f"{seed}|{case_id}|{metric}".encode())


@dataclass
class PreparedCase:
    case_id: str
    label: int
    rgb: torch.Tensor  # (3, H, W) in [0, 255]
    pixels: torch.Tensor  # (1, 3, H, W) normalised
    mask: torch.Tensor | None
    ignore: torch.Tensor | None
    crop: Any  # PIL crop, for example overlays
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the original image (maps at image resolution)
    score_ctx: Context | None = None  # shared by the methods of the case: the unperturbed score is computed once


def prepare(handle: ModelHandle, item: LabelledImage) -> PreparedCase:
    """The scored crop and the masks in its coordinates."""
    crop = handle.preprocess.crop_image(item.image)
    array = np.asarray(crop, dtype=np.uint8)  # (H, W, 3)
    rgb = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32)  # (3, H, W)
    pixels = handle.preprocess.normalize(array)[None].to(device=handle.device, dtype=handle.dtype)  # (1, 3, H, W)
    mask = torch.from_numpy(aligned_mask(item.mask, handle.preprocess)) if item.mask is not None else None
    ignore = torch.from_numpy(aligned_mask(item.ignore, handle.preprocess)) if item.ignore is not None else None
    if mask is not None and not mask.any():
        logger.warning("case %s: the object lies outside the centre crop; localisation metrics skip it", item.case_id)
        mask = None
    return PreparedCase(item.case_id, item.label, rgb, pixels, mask, ignore, crop, image_size=item.image.size)


def patch_grid(handle: ModelHandle) -> tuple[int, int]:
    """``(gh, gw)``: the patch grid over the model's crop."""
    return (handle.preprocess.crop_height // handle.patch_size, handle.preprocess.crop_width // handle.patch_size)


def parameters(function: Any) -> set[str]:
    import inspect

    return set(inspect.signature(function).parameters)


def save_example(out: Path, prepared: PreparedCase) -> None:
    import io

    buffer = io.BytesIO()
    prepared.crop.save(buffer, format="PNG")
    write_atomic(out / "examples" / f"{example_name(prepared.case_id)}.png", buffer.getvalue())


def example_name(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)
