"""ROAD: RemOve And Debias, the third deletion protocol (beside ``deletion.py``'s Grad-ECLIP and RISE).

Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022. Removing pixels by painting them a constant leaks the removed region's shape to the
model (the mask itself is informative); ROAD instead fills them by **noisy linear imputation**, so the fill
carries as little information about which pixels were removed as possible.

Imputation: every removed pixel ``i`` takes the weighted mean of its in-image 8-neighbours ``N(i)``, known or
removed, with weight ``w = 1/6`` for the four direct and ``1/12`` for the four diagonal neighbours:

    W_i x_i - sum_{j in N(i), removed} w_ij x_j = sum_{j in N(i), known} w_ij x_j,    W_i = sum_{j in N(i)} w_ij

one sparse linear system per channel over the removed pixels (symmetric positive definite whenever some pixel
is known; solved here by Jacobi-preconditioned conjugate gradients to a relative residual of ``tol``), then
``x_i + noise * N(0, 1)`` (``noise = 0.01``, as the authors' imputer; on the model's normalised input, seeded
per case and metric).

Orders: the pixels of the scored image ranked by the map upsampled bilinearly (``deletion.salience_order``,
ties in raster order). **MoRF** removes the most relevant fraction ``f``, **LeRF** the least relevant, for
``f`` in 10 %, 20 %, ..., 90 % (``round(f * P)`` pixels), each from the unperturbed image. Scores per
fraction: the label's probability (``Family.label_probability``; CLIP: ``softmax(exp(s) cos)`` over all prompts) and top-1 correctness;
the metric reports their means over the fractions (the curves are kept). A faithful map makes MoRF low and
LeRF high.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from faithclip.metrics import MetricSpec, register_metric
from faithclip.metrics.case import MetricCase, MetricValue
from faithclip.metrics.deletion import ScoringPlan, salience_order, score_alone

ROAD_PAPER = "Rong et al., A Consistent and Efficient Evaluation Strategy for Attribution Methods, ICML 2022"
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 10))
DIRECT, DIAGONAL = 1.0 / 6.0, 1.0 / 12.0


def neighbour_kernel(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(1, 1, 3, 3)``: the weights of the 8 neighbours (centre 0)."""
    kernel = torch.tensor(
        [[DIAGONAL, DIRECT, DIAGONAL], [DIRECT, 0.0, DIRECT], [DIAGONAL, DIRECT, DIAGONAL]], dtype=dtype, device=device
    )
    return kernel[None, None]


def coarse_guess(x: torch.Tensor, removed: torch.Tensor, tol: float) -> torch.Tensor | None:
    """A starting point for the solver (speed only; the solution is the same): the problem solved on a
    2x coarser grid (known pixels averaged per 2x2 block; a block is removed when none of its pixels is
    known), upsampled bilinearly. ``None`` on small grids or when the coarse grid knows nothing."""
    height, width = removed.shape
    if min(height, width) < 32:
        return None
    known = (~removed).to(x.dtype)[None]  # (1, H, W)
    sums = F.avg_pool2d((x * known)[:, None], 2, ceil_mode=True, divisor_override=1)[:, 0]  # (C, h, w)
    counts = F.avg_pool2d(known[:, None], 2, ceil_mode=True, divisor_override=1)[:, 0]  # (1, h, w)
    coarse_removed = counts[0] == 0
    if bool(coarse_removed.all()):
        return None
    coarse = linear_imputation(sums / counts.clamp(min=1), coarse_removed, tol)  # (C, h, w)
    return F.interpolate(coarse[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def linear_imputation(
    image: torch.Tensor, removed: torch.Tensor, tol: float = 1e-8, max_iterations: int = 5000
) -> torch.Tensor:
    """The noise-free fill: ``(C, H, W)`` image with its ``(H, W)`` ``removed`` pixels replaced by the
    solution of the system in the module docstring (float64 throughout), to a relative residual ``tol``."""
    x = image.to(torch.float64)
    if not removed.any():
        return x.clone()
    if removed.all():
        raise ValueError("ROAD cannot impute an image with every pixel removed (the system has no data)")
    kernel = neighbour_kernel(device=x.device)
    gone = removed.to(x.device)[None]  # (1, H, W)
    keep = ~gone

    def neighbours(values: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> sum_j w_ij v_j, zero outside the image
        return F.conv2d(values[:, None], kernel, padding=1)[:, 0]

    weight_sum = neighbours(torch.ones_like(x[:1]))  # (1, H, W): W_i
    rhs = torch.where(gone, neighbours(torch.where(keep, x, 0.0)), 0.0)  # (C, H, W)

    def operator(v: torch.Tensor) -> torch.Tensor:  # v zero on known pixels
        return torch.where(gone, weight_sum * v - neighbours(v), 0.0)

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # per channel, (C, 1, 1)
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    guess = coarse_guess(x, removed, tol)
    solution = torch.zeros_like(x) if guess is None else torch.where(gone, guess, 0.0)
    residual = rhs - operator(solution)
    preconditioned = torch.where(gone, residual / weight_sum, 0.0)
    direction = preconditioned.clone()
    rz = dot(residual, preconditioned)
    target = tol * rhs.flatten(1).norm(dim=1).clamp(min=1e-300)  # (C,)
    for _ in range(max_iterations):
        if bool((residual.flatten(1).norm(dim=1) <= target).all()):
            break
        step_image = operator(direction)
        alpha = rz / dot(direction, step_image).clamp(min=1e-300)
        solution = solution + alpha * direction
        residual = residual - alpha * step_image
        preconditioned = torch.where(gone, residual / weight_sum, 0.0)
        rz_next = dot(residual, preconditioned)
        direction = preconditioned + (rz_next / rz.clamp(min=1e-300)) * direction
        rz = rz_next
    else:
        raise RuntimeError(f"ROAD's imputation did not converge in {max_iterations} iterations")
    return torch.where(gone, solution, x)


def noisy_linear_imputation(
    image: torch.Tensor, removed: torch.Tensor, noise: float, generator: torch.Generator, tol: float = 1e-5
) -> torch.Tensor:
    """``linear_imputation`` plus ``noise * N(0, 1)`` on the removed pixels, in the image's dtype. The
    default ``tol`` leaves a solver error far below the noise (measured at 224 px: under 1e-3 against
    the 0.01 noise)."""
    filled = linear_imputation(image, removed, tol)
    draws = torch.randn(filled.shape, generator=generator, dtype=torch.float64)  # (C, H, W), on the CPU
    return torch.where(removed.to(filled.device)[None], filled + noise * draws.to(filled.device), filled).to(
        image.dtype
    )


def removed_pixels(rank: torch.Tensor, fraction: float, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` bool: the ``round(fraction * P)`` most (``morf``) or least (``lerf``) relevant pixels.
    ``rank``: ``(P,)`` position of each pixel in the salience order."""
    count = int(round(fraction * rank.numel()))
    chosen = rank < count if mode == "morf" else rank >= rank.numel() - count
    return chosen.view(*size)


def road_plan(
    case: MetricCase, mode: str, fractions: Sequence[float] = FRACTIONS, noise: float = 0.01, batch_size: int = 32
) -> ScoringPlan:
    if mode not in ("morf", "lerf"):
        raise ValueError(f"mode must be 'morf' or 'lerf', got {mode!r}")
    fractions = [float(f) for f in fractions]
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must lie strictly between 0 and 1, got {fractions}")
    pixels = case.to_pixels(case.rgb[None])[0]  # (3, H, W) normalised, on the CPU
    order = salience_order(case.patch_map, case.size)  # (P,)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    generator = torch.Generator().manual_seed(case.seed)
    device = case.handle.device

    def batches():
        images = []
        for fraction in fractions:
            images.append(
                noisy_linear_imputation(pixels, removed_pixels(rank, fraction, mode, case.size), noise, generator)
            )
            if len(images) == batch_size:
                yield torch.stack(images).to(device)  # (b, 3, H, W)
                images = []
        if images:
            yield torch.stack(images).to(device)

    def value(logits: torch.Tensor) -> MetricValue:
        probability = case.label_probability(logits).cpu().tolist()  # (F,)
        top1 = (logits.argmax(-1) == case.label).double().cpu().tolist()
        return MetricValue(
            values={"prob": sum(probability) / len(probability), "top1": sum(top1) / len(top1)},
            curves={"prob": (fractions, probability), "top1": (fractions, top1)},
        )

    return ScoringPlan(batches(), len(fractions), value)


def _road(mode: str) -> Callable[..., ScoringPlan]:
    def plan(
        case: MetricCase, fractions: Sequence[float] = FRACTIONS, noise: float = 0.01, batch_size: int = 32
    ) -> ScoringPlan:
        return road_plan(case, mode, fractions, noise, batch_size)

    return plan


def _alone(plan: Callable[..., ScoringPlan]) -> Callable[..., MetricValue]:
    def run(case: MetricCase, batch_size: int = 32, **options) -> MetricValue:
        return score_alone(case, plan(case, batch_size=batch_size, **options), batch_size)

    run.__signature__ = inspect.signature(plan)
    return run


for _mode, _better, _words in (("morf", False, "most"), ("lerf", True, "least")):
    register_metric(
        MetricSpec(
            name=f"road_{_mode}",
            category="faithfulness",
            higher_is_better=_better,
            protocol="road, noise {noise:g}",
            summary=(
                f"{_words} relevant 10-90% of the pixels removed and filled by noisy linear imputation; mean label "
                "probability and top-1 over the fractions"
            ),
            paper=ROAD_PAPER,
            run=_alone(_road(_mode)),
            plan=_road(_mode),
            outputs={"prob": f"ROAD {_mode.upper()} probability", "top1": f"ROAD {_mode.upper()} top-1"},
            defaults={"fractions": "0.1..0.9", "noise": 0.01},
        )
    )
