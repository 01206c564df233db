"""One case of a run, computed: the scored image and its masks (``prepare``), the seed of each random draw
(``case_seed``), its example crop for the report, and the scoring of the perturbed images of several
cases' curves in forwards of one fixed size (``score_together``). The metrics' values are stored into the
case's records by ``Evaluator.run_case`` (``records.store``)."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faithclip.data.folders import LabelledImage, aligned_mask
from faithclip.evaluation.records import store
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


def score_together(
    deferred: list[tuple[dict[str, Any], str, Any]], score_ctx: Context, handle: ModelHandle, batch_size: int
) -> None:
    """Score the images of all ``deferred`` plans in forwards of exactly ``batch_size`` images (the last
    one padded with zero images, whose scores are dropped), then finish each plan into its record.

    Every forward has the same shape whatever the number of images per step, and a row's numbers
    depend on the forward's shape, not on which other rows share it (matrix products compute each
    row from that row alone; bit-identical on one processor kind, which the identity pins): so they do not depend on
    ``images_per_step``. Any context of the data set can score any image: all hold the same
    classifier weights."""
    size = batch_size
    family, model = handle.family, handle.model
    started = time.perf_counter()
    pieces: list[list[torch.Tensor]] = [[] for _ in deferred]
    buffer: list[torch.Tensor] = []
    owners: list[tuple[int, int]] = []  # (plan, rows) of each piece in the buffer

    def forward() -> None:
        pixels = torch.cat(buffer)  # (n, 3, H, W)
        rows = pixels.shape[0]
        if rows < size:
            pixels = torch.cat([pixels, pixels.new_zeros(size - rows, *pixels.shape[1:])])  # (size, 3, H, W)
        logits = family.class_logits(model, score_ctx.score_images(pixels, batch_size=size)[:rows])  # (n, K)
        offset = 0
        for plan, count in owners:
            pieces[plan].append(logits[offset : offset + count])
            offset += count
        buffer.clear()
        owners.clear()

    buffered = 0
    for plan_index, (_, _, plan) in enumerate(deferred):
        for batch in plan.batches:
            while batch.shape[0]:
                take = min(size - buffered, batch.shape[0])
                buffer.append(batch[:take])
                owners.append((plan_index, take))
                buffered, batch = buffered + take, batch[take:]
                if buffered == size:
                    forward()
                    buffered = 0
    if buffered:
        forward()
    total = sum(plan.count for _, _, plan in deferred) or 1
    seconds = time.perf_counter() - started
    for plan_index, (record, name, plan) in enumerate(deferred):
        logits = torch.cat(pieces[plan_index]) if pieces[plan_index] else torch.empty(0, 0, device=handle.device)
        store(record, name, plan.finish(logits))
        record["seconds"] = round(record["seconds"] + seconds * plan.count / total, 4)  # its share


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
