"""What a run costs, in image forwards, before it runs: the images a record sends through the image tower
(``record_forwards``: its method's map and its metrics' perturbed images), and a one-line estimate of a slow
run (``slow_run_notice``), printed before the first record.

Images forwarded per record, with the defaults and the options of the run (``P``: the scored crop's pixels):

- a map: ``rise`` ``masks`` (4,000); ``occlusion`` one image per window position (63 at 224 px) and the
  image; ``m2ib`` ``steps x samples`` noisy passes (100); any other method one forward (a gradient
  method's backward is not counted: the estimate is a floor);
- ``deletion_gradeclip``, ``insertion_gradeclip``: ``steps // every`` (10) each; ``deletion_rise``,
  ``insertion_rise``: ``ceil(P / step)`` (196 at 224 px, 16 x 16 patches); ``road_*``: one per fraction (9);
- ``sanity_cascade``: the method's map again on each randomised model, one per cascade step (15 for
  ViT-B), i.e. ``steps x`` the map's forwards: RISE under it costs ``15 x 4,000`` forwards per image;
- each image once more, unperturbed (its scores are shared by every record of the image).

The pointing games, the segmentation and zero-shot accuracy read maps and scores already computed.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from typing import Any, Sequence

import torch

from faithclip.metrics import METRICS
from faithclip.models.clip import ModelHandle
from faithclip.registry import METHODS

SLOW_SECONDS = 600.0  # a run estimated to take longer is announced before it starts
FEW_FORWARDS = 2000  # below this many image forwards no run is slow enough to time a forward for


def _option(function: Any, options: dict[str, Any], name: str) -> Any:
    """The option's value in the run (given) or the function's default."""
    if name in options:
        return options[name]
    return inspect.signature(function).parameters[name].default


def map_forwards(method: str, options: dict[str, Any], handle: ModelHandle) -> int:
    """Images the method's map of one image sends through the image tower."""
    image = METHODS.get(method).image
    height, width = handle.preprocess.crop_height, handle.preprocess.crop_width
    if method == "rise":
        return int(_option(image, options, "masks"))
    if method == "occlusion":
        from faithclip.methods.occlusion import window_starts

        window = _option(image, options, "window") or max(1, round(min(height, width) / 7))
        stride = _option(image, options, "stride") or max(1, window // 2)
        return len(window_starts(height, window, stride)) * len(window_starts(width, window, stride)) + 1
    if method == "m2ib":
        return int(_option(image, options, "steps")) * int(_option(image, options, "samples"))
    return 1


def metric_forwards(metric: str, options: dict[str, Any], handle: ModelHandle, map_cost: int) -> int:
    """Images one record's value of ``metric`` sends through the image tower (``map_cost``: the method's map);
    an option not given in the run takes the metric's own default (its plan's signature)."""
    plan = METRICS.get(metric).plan
    if metric in ("deletion_gradeclip", "insertion_gradeclip"):
        return int(_option(plan, options, "steps")) // int(_option(plan, options, "every"))
    if metric in ("deletion_rise", "insertion_rise"):
        pixels = handle.preprocess.crop_height * handle.preprocess.crop_width
        return math.ceil(pixels / int(_option(plan, options, "step") or handle.patch_size**2))
    if metric in ("road_morf", "road_lerf"):
        return len(_option(plan, options, "fractions"))
    if metric == "sanity_cascade":
        from faithclip.metrics.sanity import cascade_blocks

        return len(cascade_blocks(handle.model)) * map_cost
    return 0


def record_forwards(
    method: str | None,
    metrics: Sequence[str],
    handle: ModelHandle,
    method_options: dict[str, Any],
    metric_options: dict[str, dict[str, Any]],
    maps: bool = True,
) -> dict[str, int]:
    """Images one record sends through the image tower, by what sends them (``method=None``: the image's
    model-level record, which holds its unperturbed forward), e.g. ``{"rise's maps": 4000,
    "sanity_cascade of rise": 28000, ...}``; ``maps=False``: the maps are read, not computed (``--maps``)."""
    if method is None:
        return {"the unperturbed images": 1}
    map_cost = map_forwards(method, method_options, handle) if maps else 0
    counts = {f"{method}'s maps": map_cost}
    for metric in metrics:
        counts[f"{metric} of {method}"] = metric_forwards(metric, metric_options.get(metric, {}), handle, map_cost)
    return {name: count for name, count in counts.items() if count}


def measure_forward(
    score_images: Any, handle: ModelHandle, batch_size: int, repeats: int = 3, size: int | None = None
) -> float:
    """Seconds per image of a forward of ``size`` blank images (default ``min(batch_size, 8)``; ``score_images``:
    a context's), the median of ``repeats`` after one warm-up forward of one image: 25 image forwards at the
    default, about 1 % of the smallest run that is timed (``FEW_FORWARDS``)."""
    size = min(batch_size, 8) if size is None else size
    crop = (handle.preprocess.crop_height, handle.preprocess.crop_width)
    blank = torch.zeros(size, 3, *crop, device=handle.device, dtype=handle.dtype)
    score_images(blank[:1], batch_size=1)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        score_images(blank, batch_size=size)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / size


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def slow_run_notice(forwards: dict[str, int], seconds_per_forward: float, records: int) -> str | None:
    """One line for a run whose ``forwards`` (image forwards by what sends them, summed over the pending
    records) take ``SLOW_SECONDS`` or more at ``seconds_per_forward``; ``None`` for a faster run."""
    total = sum(forwards.values())
    seconds = total * seconds_per_forward
    if seconds < SLOW_SECONDS:
        return None
    worst, count = max(forwards.items(), key=lambda item: item[1])
    return (
        f"this run needs about {total:,} image forwards for {records:,} records, "
        f"{100 * count / total:.0f}% of them for {worst}, at {1000 * seconds_per_forward:.1f} ms each (measured): "
        f"about {duration(seconds)} of compute on this machine"
    )
