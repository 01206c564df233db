"""Deletion and insertion curves under two protocols.

RISE (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018,
``evaluation.py`` of github.com/eclique/RISE) and Grad-ECLIP (Zhao et al., ICML 2024,
``imagenet_eval_deletion.py`` / ``imagenet_eval_insertion.py`` of github.com/Cyang-Zhao/Grad-Eclip).

Both rank the pixels of the scored image (the model's resized, centre-cropped input, ``P = H * W`` pixels)
by the map upsampled bilinearly to ``(H, W)``, most salient first, and move pixels from a ``start`` image to
a ``finish`` image in that order. With ``rank(p)`` the position of pixel ``p`` in the order, the image
after ``m`` pixels is

    x_m(p) = finish(p) if rank(p) < m else start(p)

``gradeclip``: ``n = max(1, int(P * 0.5 / 100))`` pixels per step, 100 steps (50 % of the pixels), scored
every 10 steps. Deletion: start = the image, finish = a uniform random colour per pixel
(``floor(255 * U[0, 1))`` per channel), points m = 0, 10n, ..., 100n. Insertion: start = black, finish = the
image, points m = 10n, ..., 100n and then the unperturbed image (x = 1). Scores: zero-shot top-1
correctness of the label among all prompts, and the label's probability (``Family.label_probability``: CLIP's
``softmax(exp(s) cos)`` over the prompts, SigLIP's sigmoid of its logit, a classifier's softmax over its classes); each
curve's 11 values, in the script's order, are summarised as ``AUC = (sum y - y_0/2 - y_10/2) / 10``.

``rise``: ``step`` pixels per step (default: one patch area), ``ceil(P / step)`` steps, all scored
(points m = 0, step, ..., P). Deletion: start = the normalised image, finish = zeros of the normalised
tensor (RISE's ``torch.zeros_like``, i.e. the dataset-mean colour; ``substrate='black'`` uses pixel value
0). Insertion: start = the image blurred by RISE's Gaussian (``klen=11``, ``sigma=5``, convolution with
zero padding on the normalised tensor), finish = the image. Score: the label's probability.
``AUC = sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2`` with ``x = m / P``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from faithclip.metrics import MetricSpec, register_metric
from faithclip.metrics.case import MetricCase, MetricValue, pixel_map

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ScoringPlan:
    """The perturbed images a curve needs scored (``count`` normalised images, yielded ``batch_size`` at
    a time on the model's device) and how their ``(count, K)`` zero-shot logits become the metric's
    value. Split so that the evaluator can score the images of consecutive cases and curves in shared
    forwards (``evaluation/streaming.py``); ``score_alone`` scores one plan by itself."""

    batches: Iterator[torch.Tensor]
    count: int
    finish: Callable[[torch.Tensor], MetricValue]


def score_alone(case: MetricCase, plan: ScoringPlan, batch_size: int) -> MetricValue:
    logits = [case.class_logits(batch, batch_size) for batch in plan.batches]  # (b, K) each
    return plan.finish(torch.cat(logits) if logits else torch.empty(0, 0, device=case.handle.device))


# ---- pure tensor core ---------------------------------------------------------------------------
def salience_order(patch_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(P,)`` pixel indices (raster order ``y * W + x``) by decreasing upsampled map value.

    Ties keep raster order (stable sort), so the order is deterministic.
    """
    flat = pixel_map(patch_map, size).reshape(-1)  # (P,)
    return torch.sort(flat, descending=True, stable=True).indices


def perturbation_batches(
    start: torch.Tensor, finish: torch.Tensor, order: torch.Tensor, counts: Sequence[int], batch_size: int
) -> Iterator[torch.Tensor]:
    """Yield ``(b, C, H, W)`` images ``x_m`` for each ``m`` in ``counts``, ``batch_size`` at a time."""
    channels, height, width = start.shape
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)  # (P,) position of each pixel in the order
    counts_t = torch.as_tensor(list(counts), dtype=torch.long, device=order.device)
    for begin in range(0, len(counts_t), batch_size):
        moved = rank[None, :] < counts_t[begin : begin + batch_size, None]  # (b, P)
        moved = moved.view(-1, 1, height, width)  # (b, 1, H, W)
        yield torch.where(moved, finish[None], start[None])  # (b, C, H, W)


def curve(
    start: torch.Tensor,
    finish: torch.Tensor,
    order: torch.Tensor,
    counts: Sequence[int],
    score_fn: ScoreFn,
    batch_size: int = 32,
    known: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``score_fn`` of every ``x_m``: ``(len(counts), ...)``. ``known`` maps a count to an already computed
    score (the unperturbed image's), which is then not recomputed."""
    known = known or {}
    todo = [m for m in counts if m not in known]
    computed = iter(
        torch.cat([score_fn(batch) for batch in perturbation_batches(start, finish, order, todo, batch_size)])
        if todo
        else []
    )
    return torch.stack([known[m] if m in known else next(computed) for m in counts])


def trapezoid_auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Area under the piecewise-linear curve through ``(x_i, y_i)``."""
    xs = torch.as_tensor(x, dtype=torch.float64)
    ys = torch.as_tensor(y, dtype=torch.float64)
    return float(((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2).sum())


def step_auc(y: Sequence[float]) -> float:
    """Area under ``y`` over equally spaced points on [0, 1]: ``(sum y - y_0 / 2 - y_last / 2) / (n - 1)``
    (RISE's ``auc``; applied to the Grad-ECLIP script's list of per-step accuracies, in its order)."""
    return (sum(y) - y[0] / 2 - y[-1] / 2) / (len(y) - 1)


def gradeclip_counts(num_pixels: int, steps: int = 100, every: int = 10, fraction: float = 0.5) -> list[int]:
    """Pixels moved at Grad-ECLIP's recorded steps (10n, 20n, ..., 100n; ``n = max(1, int(P*0.5/100))``)."""
    per_step = max(1, int(num_pixels * fraction / steps))
    return [min(step * per_step, num_pixels) for step in range(every, steps + 1, every)]


def rise_counts(num_pixels: int, step: int) -> list[int]:
    """RISE's points: 0, step, 2 step, ..., P (the last step may be partial)."""
    num_steps = (num_pixels + step - 1) // step
    return [min(i * step, num_pixels) for i in range(num_steps + 1)]


def random_colours(order: torch.Tensor, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Grad-ECLIP's deletion fill ``(3, H, W)``: the i-th deleted pixel gets the i-th uniform random colour,
    ``floor(255 * U[0, 1))`` per channel (the official ``torch.rand(n, 3) * 255.`` stored into uint8)."""
    channels, height, width = shape
    draws = torch.floor(torch.rand(order.numel(), channels, generator=generator) * 255.0)  # (P, 3) in deletion order
    fill = torch.empty(height * width, channels)
    fill[order] = draws
    return fill.T.reshape(channels, height, width)


def rise_gaussian_kernel(klen: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> torch.Tensor:
    """RISE's ``gkern``: ``scipy.ndimage.gaussian_filter`` of a ``klen x klen`` delta, ``(klen, klen)``.

    scipy's 1-D Gaussian has radius ``int(truncate * sigma + 0.5)`` (20 for sigma 5, wider than the
    11-pixel delta) and the ``reflect`` boundary (``d c b a | a b c d | d c b a``), so the tails fold back
    into the window; the 2-D filter is separable, hence the outer product of the 1-D results.
    """
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * offsets**2 / sigma**2)
    weights = weights / weights.sum()  # (2r+1,)
    centre = klen // 2
    period = 2 * klen
    kernel_1d = torch.zeros(klen, dtype=torch.float64)
    for i in range(klen):
        source = (i + offsets.long()) % period  # reflected index of each tap
        source = torch.where(source < klen, source, period - 1 - source)
        kernel_1d[i] = weights[source == centre].sum()
    return torch.outer(kernel_1d, kernel_1d)


def rise_blur(pixels: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion start: per-channel convolution with ``rise_gaussian_kernel``, zero padding ``klen // 2``.
    ``(3, H, W)`` -> ``(3, H, W)``."""
    kernel = rise_gaussian_kernel(klen, sigma).to(device=pixels.device, dtype=pixels.dtype)
    weight = kernel.expand(pixels.shape[0], 1, klen, klen)  # (3, 1, k, k): RISE's diagonal 3x3 kernel
    return F.conv2d(pixels[None], weight, padding=klen // 2, groups=pixels.shape[0])[0]


# ---- protocols on a model -----------------------------------------------------------------------
def gradeclip_curves(
    case: MetricCase, mode: str, steps: int = 100, every: int = 10, batch_size: int = 32
) -> MetricValue:
    """Grad-ECLIP's deletion (``mode='deletion'``) or insertion curve: top-1 and label probability."""
    return score_alone(case, gradeclip_plan(case, mode, steps, every, batch_size), batch_size)


def gradeclip_plan(case: MetricCase, mode: str, steps: int = 100, every: int = 10, batch_size: int = 32) -> ScoringPlan:
    """The images of Grad-ECLIP's deletion or insertion curve and how their logits become it. The
    perturbed images are made on the model's device (the random colours are drawn on the CPU, so they are
    the same numbers whatever the device, and moved once)."""
    device = case.handle.device
    rgb = case.rgb.to(device=device, dtype=torch.float32)  # (3, H, W)
    order = salience_order(case.patch_map, case.size)
    num_pixels = order.numel()
    counts = gradeclip_counts(num_pixels, steps, every)
    if mode == "deletion":
        generator = torch.Generator().manual_seed(case.seed)
        start, finish = rgb, random_colours(order, tuple(rgb.shape), generator).to(device)
        counts, unperturbed = [0] + counts, 0
    else:
        start, finish = torch.zeros_like(rgb), rgb
        counts, unperturbed = counts + [num_pixels], num_pixels

    def summarise(logits: torch.Tensor) -> torch.Tensor:
        top1 = (logits.argmax(-1) == case.label).to(torch.float64)  # (b,)
        probability = case.label_probability(logits)  # (b,)
        return torch.stack([top1, probability], dim=-1)  # (b, 2)

    known = summarise(case.unperturbed_logits())[0]  # (2,)
    todo = [m for m in counts if m != unperturbed]

    def value(logits: torch.Tensor) -> MetricValue:
        computed = iter(summarise(logits))
        scores = torch.stack([known if m == unperturbed else next(computed) for m in counts]).cpu()  # (points, 2)
        x = [m / num_pixels for m in counts]
        top1, probability = scores[:, 0].tolist(), scores[:, 1].tolist()
        return MetricValue(
            values={"auc": step_auc(top1), "prob_auc": step_auc(probability)},
            curves={"top1": (x, top1), "prob": (x, probability)},
        )

    batches = (
        case.to_pixels(batch) for batch in perturbation_batches(start, finish, order.to(device), todo, batch_size)
    )
    return ScoringPlan(batches, len(todo), value)


def rise_curve(
    case: MetricCase,
    mode: str,
    step: int | None = None,
    substrate: str = "zeros",
    klen: int = 11,
    sigma: float = 5.0,
    batch_size: int = 32,
) -> MetricValue:
    """RISE's deletion or insertion curve of the label probability, and its AUC."""
    return score_alone(case, rise_plan(case, mode, step, substrate, klen, sigma, batch_size), batch_size)


def rise_plan(
    case: MetricCase,
    mode: str,
    step: int | None = None,
    substrate: str = "zeros",
    klen: int = 11,
    sigma: float = 5.0,
    batch_size: int = 32,
) -> ScoringPlan:
    pixels = case.to_pixels(case.rgb[None].to(case.handle.device))[0]  # (3, H, W) normalised, on the model's device
    order = salience_order(case.patch_map, case.size).to(pixels.device)
    num_pixels = order.numel()
    step = step or case.handle.patch_size**2
    counts = rise_counts(num_pixels, step)
    if mode == "deletion":
        if substrate == "zeros":
            finish = torch.zeros_like(pixels)
        elif substrate == "black":
            finish = case.to_pixels(torch.zeros_like(pixels)[None])[0]
        else:
            raise ValueError(
                f"substrate must be 'zeros' (RISE: the normalised zero, the mean colour) or 'black', got {substrate!r}"
            )
        start = pixels
    else:
        start, finish = rise_blur(pixels, klen, sigma), pixels

    unperturbed = 0 if mode == "deletion" else num_pixels
    known = case.label_probability(case.unperturbed_logits())[0]
    todo = [m for m in counts if m != unperturbed]

    def value(logits: torch.Tensor) -> MetricValue:
        computed = iter(case.label_probability(logits))  # (count,)
        probability = torch.stack([known if m == unperturbed else next(computed) for m in counts]).cpu().tolist()
        x = [m / num_pixels for m in counts]
        return MetricValue(
            values={"auc": trapezoid_auc(x, probability)},
            curves={"prob": (x, probability)},
            details={"step": step, "num_steps": len(counts) - 1},
        )

    return ScoringPlan(perturbation_batches(start, finish, order, todo, batch_size), len(todo), value)


def _gradeclip(mode: str) -> Callable[..., ScoringPlan]:
    def plan(case: MetricCase, steps: int = 100, every: int = 10, batch_size: int = 32) -> ScoringPlan:
        return gradeclip_plan(case, mode, steps, every, batch_size)

    return plan


def _rise(mode: str) -> Callable[..., ScoringPlan]:
    def plan(
        case: MetricCase,
        step: int | None = None,
        substrate: str = "zeros",
        klen: int = 11,
        sigma: float = 5.0,
        batch_size: int = 32,
    ) -> ScoringPlan:
        return rise_plan(case, mode, step, substrate, klen, sigma, batch_size)

    return plan


def _alone(plan: Callable[..., ScoringPlan]) -> Callable[..., MetricValue]:
    """The metric's runner: its plan scored by itself (same options)."""

    def run(case: MetricCase, batch_size: int = 32, **options) -> MetricValue:
        return score_alone(case, plan(case, batch_size=batch_size, **options), batch_size)

    run.__signature__ = inspect.signature(plan)  # the options the evaluator checks
    return run


GRADECLIP_PAPER = "Zhao et al., Gradient-based Visual Explanation for Transformer-based CLIP, ICML 2024"
RISE_PAPER = "Petsiuk et al., RISE: Randomized Input Sampling for Explanation of Black-box Models, BMVC 2018"

for _mode, _better in (("deletion", False), ("insertion", True)):
    register_metric(
        MetricSpec(
            name=f"{_mode}_gradeclip",
            category="faithfulness",
            higher_is_better=_better,
            protocol="gradeclip",
            summary=f"{_mode} of 50% of the pixels in 100 steps, 11 points; AUC of zero-shot top-1 and of the label probability",
            paper=GRADECLIP_PAPER,
            run=_alone(_gradeclip(_mode)),
            plan=_gradeclip(_mode),
            outputs={"auc": f"{_mode} AUC (top-1)", "prob_auc": f"{_mode} AUC (probability)"},
            defaults={"steps": 100, "every": 10},
        )
    )
    register_metric(
        MetricSpec(
            name=f"{_mode}_rise",
            category="faithfulness",
            higher_is_better=_better,
            protocol="rise",
            summary=f"{_mode} of 0-100% of the pixels, patch-area steps; AUC of the label probability",
            paper=RISE_PAPER,
            run=_alone(_rise(_mode)),
            plan=_rise(_mode),
            outputs={"auc": f"{_mode} AUC"},
            defaults={"step": "patch area", "substrate": "zeros", "klen": 11, "sigma": 5.0},
        )
    )
