"""tools/p2_first_order.py's integrated-gradients map against oracles written from its formula.

Oracles: central finite differences of the model's own score (float64) for the gradient at the scene (m = 1);
completeness, sum_u map(u) -> S(x) - S(b), which the Riemann sum approaches as m grows; exact zeros where the
scene equals its baseline (the factor x - b).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from conftest import random_clip, token_ids
from faithclip.methods.context import Context
from faithclip.models.loading import from_hf
from faithclip.targets import Target

torch.set_num_threads(1)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "p2_first_order.py"


def tool():
    spec = importlib.util.spec_from_file_location("p2_first_order", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setting(seed: int = 0):
    handle = from_hf(random_clip(seed, dtype=torch.float64))
    size = handle.model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    baseline = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    ctx = Context(handle=handle, side="image", pixels=pixels, text=handle.tokens(token_ids([3, 5])), target=Target())
    return ctx, baseline


def score(ctx: Context, pixels: torch.Tensor) -> torch.Tensor:
    return ctx.score_images(pixels)  # (N, K), no gradients


def test_one_step_is_the_slope_at_the_scene_along_the_difference_by_finite_differences():
    """Summed over a block of pixels, the m = 1 map is the derivative of S as that block alone moves along x - b:
    d/dt S(x + t * block * (x - b)) at t = 0, by a 4-point central difference of the model's own score. (Whole
    blocks, because transformers' eager attention takes its softmax in float32: a one-pixel step is lost in it.)"""
    ctx, baseline = setting()
    result = tool().integrated_gradients_image(ctx, baseline=baseline, steps=1)
    size = ctx.pixels.shape[-1]
    assert result.maps.shape == (2, 2, size, size)
    h, quarter = 1e-2, size // 4
    for top in range(0, size, quarter):
        for left in range(0, size, quarter):
            block = torch.zeros_like(ctx.pixels)
            block[..., top : top + quarter, left : left + quarter] = 1.0
            direction = block * (ctx.pixels - baseline)
            at = [score(ctx, ctx.pixels + t * h * direction) for t in (2, 1, -1, -2)]  # each (B, K)
            expected = (-at[0] + 8 * at[1] - 8 * at[2] + at[3]) / (12 * h)
            got = result.maps[..., top : top + quarter, left : left + quarter].sum((-2, -1))
            torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-6)


def test_many_steps_are_complete_the_map_sums_to_the_score_change_from_baseline_to_scene():
    ctx, baseline = setting(seed=2)
    change = score(ctx, ctx.pixels) - score(ctx, baseline)  # (B, K)
    gaps = {}
    for steps in (2, 256):
        total = tool().integrated_gradients_image(ctx, baseline=baseline, steps=steps).maps.sum((-2, -1))
        gaps[steps] = (total - change).abs().max()
    assert gaps[256] <= 0.01 * change.abs().max() and gaps[256] < gaps[2]


def test_the_map_is_exactly_zero_where_scene_and_baseline_agree():
    ctx, _ = setting(seed=3)
    baseline = ctx.pixels.clone()
    baseline[..., :8, :8] = 0.0
    maps = tool().integrated_gradients_image(ctx, baseline=baseline, steps=3).maps
    assert maps[..., :8, :8].abs().max() > 0
    assert torch.count_nonzero(maps[..., 8:, :]) == 0 and torch.count_nonzero(maps[..., :8, 8:]) == 0


def test_bad_steps_are_one_line_and_exit_2_before_any_model_is_loaded(capsys):
    for bad in ("0", "two", ""):
        assert tool().main(["--steps", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--steps" in err
    assert tool().main(["--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-model" in err
