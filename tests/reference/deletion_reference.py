"""Oracles for the two deletion/insertion protocols, written from their descriptions.

Written in this project from the protocol statements in ``docs/evaluation.md`` and the docstring of
``faithclip.metrics.deletion`` (themselves descriptions of the Grad-ECLIP evaluation scripts and of the
causal metrics in Petsiuk et al., "RISE", BMVC 2018), not from either project's code. Slow on purpose:
one pixel, one step and one model call at a time, so nothing is shared with the vectorised metric.

Grad-ECLIP protocol, on an 8-bit ``(H, W, 3)`` image and a map of the same size: P = H W pixels ranked
by decreasing map value; step s = 1..``steps`` moves ranks [(s-1) n, s n) with n = max(1, int(P / 200));
after every ``every``-th step the image is recorded. Deletion gives each moved pixel a random colour,
``floor(255 U)`` per channel from ``torch.rand(n, 3)`` drawn once per step, in rank order; insertion
copies the moved pixels onto a black image. The unperturbed point of each curve is the caller's.

RISE protocol, on a normalised ``(1, 3, H, W)`` image: ``step`` pixels per step, ceil(P / step) steps,
every point scored (the first before any pixel moves). Deletion moves pixels from the image to
``substrate(image)`` (zeros); insertion from ``substrate(image)`` (the blur) to the image. The score is
the probability of one class. The blur kernel is scipy's Gaussian filter applied to a ``klen x klen``
delta, stored in float32 as a channel-diagonal ``(3, 3, klen, klen)`` convolution weight. The area under
equally spaced points on [0, 1] is the trapezoid rule.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


# ---- Grad-ECLIP protocol ---------------------------------------------------------------------------
def ranked_pixels(heatmap: np.ndarray) -> list[tuple[int, int]]:
    """(row, col) of every pixel, most salient first (the maps used here have distinct values)."""
    height, width = heatmap.shape
    pixels = [(row, col) for row in range(height) for col in range(width)]
    return sorted(pixels, key=lambda pixel: -float(heatmap[pixel]))


def pixels_per_step(height: int, width: int) -> int:
    """n = max(1, int(P * 0.5 / 100)): 100 steps move half of the pixels."""
    return max(1, int(height * width * 0.5 / 100))


def gradeclip_deletion_images(
    image: np.ndarray, heatmap: np.ndarray, steps: int, every: int, generator: torch.Generator
) -> list[np.ndarray]:
    """Deleted copies of ``image (H, W, 3)`` uint8 after steps every, 2 every, ..., steps."""
    if heatmap.shape != image.shape[:2]:
        raise ValueError("this oracle takes a map at the image's resolution")
    ranks = ranked_pixels(heatmap)
    n = pixels_per_step(*heatmap.shape)
    current = image.copy()
    recorded = []
    for step in range(1, steps + 1):
        colours = (torch.rand(n, 3, generator=generator) * 255.0).numpy().astype(np.uint8)  # (n, 3), floor
        for index, (row, col) in enumerate(ranks[(step - 1) * n : step * n]):
            current[row, col] = colours[index]
        if step % every == 0:
            recorded.append(current.copy())
    return recorded


def gradeclip_insertion_images(image: np.ndarray, heatmap: np.ndarray, steps: int, every: int) -> list[np.ndarray]:
    """Black images with the most salient pixels of ``image`` copied in, after steps every, ..., steps."""
    if heatmap.shape != image.shape[:2]:
        raise ValueError("this oracle takes a map at the image's resolution")
    ranks = ranked_pixels(heatmap)
    n = pixels_per_step(*heatmap.shape)
    current = np.zeros_like(image)
    recorded = []
    for step in range(1, steps + 1):
        for row, col in ranks[(step - 1) * n : step * n]:
            current[row, col] = image[row, col]
        if step % every == 0:
            recorded.append(current.copy())
    return recorded


# ---- RISE protocol ---------------------------------------------------------------------------------
def rise_kernel(klen: int, sigma: float) -> torch.Tensor:
    """``(3, 3, klen, klen)`` float32: the Gaussian-filtered centred delta on each channel's own input."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    smooth = torch.from_numpy(gaussian_filter(delta, sigma)).to(torch.float32)  # (klen, klen)
    weight = torch.zeros(3, 3, klen, klen, dtype=torch.float32)
    for channel in range(3):
        weight[channel, channel] = smooth
    return weight


def equal_spacing_auc(values: np.ndarray) -> float:
    """Trapezoid area under ``values`` placed at equal spacing on [0, 1]."""
    values = np.asarray(values, dtype=np.float64)
    width = 1.0 / (len(values) - 1)
    return float(sum((values[i] + values[i + 1]) * width / 2 for i in range(len(values) - 1)))


def rise_curve(
    model: Callable[[torch.Tensor], torch.Tensor],
    mode: str,
    step: int,
    substrate: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    explanation: np.ndarray,
    label: int,
) -> np.ndarray:
    """The class-``label`` probability after 0, step, 2 step, ... moved pixels: ``ceil(P / step) + 1`` values.

    ``model`` maps ``(1, 3, H, W)`` to class probabilities ``(1, classes)``; ``image`` is ``(1, 3, H, W)``.
    """
    if mode == "del":
        current, finish = image.clone(), substrate(image)
    elif mode == "ins":
        current, finish = substrate(image), image.clone()
    else:
        raise ValueError(f"mode is 'del' or 'ins', not {mode!r}")
    ranks = ranked_pixels(explanation)
    total_steps = -(-len(ranks) // step)  # ceil(P / step)
    scores = []
    for index in range(total_steps + 1):
        scores.append(float(model(current)[0, label]))
        for row, col in ranks[index * step : (index + 1) * step]:
            current[0, :, row, col] = finish[0, :, row, col]
    return np.array(scores)
