"""How far an image is from the shapes world, the only world the shipped stand-ins (shapes-clip, shapes-vit,
shapes-siglip) have seen: a toy model's map of a real photo says nothing, and the user is told so.

The statistic is the **off-palette share**: the share of the model's input pixels (at 64 x 64) that are
neither near-grey (the largest minus the smallest channel at most ``GREY_SPREAD``, like the world's
desaturated backgrounds and distractors) nor near one of the world's six object colours (every channel
within ``PALETTE_DISTANCE``). A shapes scene is almost all one or the other; a photograph is not.

The threshold is the 99.5th percentile of the statistic on ``CALIBRATION_SCENES`` shapes scenes (half
single-, half multi-object, seeds ``CALIBRATION_SEED`` and +1), each saved at a random size (1 to 6 times
64 px, aspect 3:4 to 4:3, bicubic) and brought back by a centre crop and a bicubic resize, as a user's file
of a shapes scene would be. ``python -m faithclip.shapes.domain`` recomputes it and measures the false-alarm
rate on held-out scenes (other seeds); the tests check both. At ``THRESHOLD`` below: 8 of 1,200 resaved
held-out scenes flagged (0.67 %); scenes at their own 64 px score 0; the three VOC 2011 photos in
``/work/shared/reference`` score 0.16, 0.31 and 0.63.
"""

from __future__ import annotations

import numpy as np

from faithclip.shapes.world import COLOURS, ShapesWorld

GREY_SPREAD = 40
PALETTE_DISTANCE = 50
SIZE = 64
CALIBRATION_SCENES = 600
CALIBRATION_SEED = 7100
HELD_OUT_SEED = 7200
PERCENTILE = 99.5
THRESHOLD = 0.0266  # printed by ``python -m faithclip.shapes.domain``


def off_palette_share(rgb: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N,)``: the share of pixels neither near-grey nor near an object colour."""
    pixels = np.asarray(rgb, dtype=np.int16)
    grey = (pixels.max(-1) - pixels.min(-1)) <= GREY_SPREAD  # (N, H, W)
    palette = np.array(list(COLOURS.values()), dtype=np.int16)  # (6, 3)
    nearest = np.abs(pixels[..., None, :] - palette).max(-1).min(-1)  # (N, H, W): Chebyshev distance
    return 1.0 - (grey | (nearest <= PALETTE_DISTANCE)).mean(axis=(1, 2))


def _resaved(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 64 px scene saved at a random size and brought back to 64 px as the model's preprocessing would."""
    from PIL import Image

    factor, aspect = rng.uniform(1.0, 6.0), rng.uniform(0.75, 4 / 3)
    big = Image.fromarray(image).resize((int(SIZE * factor * aspect), int(SIZE * factor)), Image.Resampling.BICUBIC)
    width, height = big.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return np.asarray(big.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def shapes_statistics(count: int, seed: int) -> np.ndarray:
    """The statistic on ``count`` resaved shapes scenes (half single-object, half multi-object)."""
    world = ShapesWorld(image_size=SIZE)
    rng = np.random.default_rng(seed)
    halves = (world.single_object_set(count // 2, seed=seed), world.multi_object_set(count - count // 2, seed=seed + 1))
    images = [_resaved(np.asarray(batch.scene(i).image), rng) for batch in halves for i in range(len(batch.scenes()))]
    return off_palette_share(np.stack(images))


def calibrate(count: int = CALIBRATION_SCENES, seed: int = CALIBRATION_SEED) -> float:
    """The threshold: the ``PERCENTILE`` th percentile of the statistic on shapes scenes."""
    return float(np.percentile(shapes_statistics(count, seed), PERCENTILE))


def domain_warning(rgb: np.ndarray, model_name: str) -> str | None:
    """A warning when the image (``(H, W, 3)`` uint8, the model's input) is outside the shapes world."""
    from PIL import Image

    if rgb.shape[:2] != (SIZE, SIZE):
        rgb = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    share = float(off_palette_share(rgb[None])[0])
    if share <= THRESHOLD:
        return None
    return (
        f"out of domain: {100 * share:.0f} % of the input's pixels have colours the shapes world never shows "
        f"(shapes scenes: at most {100 * THRESHOLD:.1f} %, exceeded by 0.7 % of held-out ones); {model_name} was trained only on "
        "coloured shapes, so its score and map of this image say nothing about it"
    )


def main() -> int:
    threshold = calibrate()
    held_out = shapes_statistics(2 * CALIBRATION_SCENES, HELD_OUT_SEED)
    print(f"threshold ({PERCENTILE}th percentile of {CALIBRATION_SCENES} calibration scenes): {threshold:.4f}")
    print(
        f"false alarms at THRESHOLD={THRESHOLD}: {int((held_out > THRESHOLD).sum())} of {len(held_out)} held-out "
        f"scenes ({100 * float((held_out > THRESHOLD).mean()):.2f} %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
